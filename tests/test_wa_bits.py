"""Weight and activation widths chosen per layer (W8A8 / W4A8 / W4A4): bits files and
`--bits w4a8` compile on the bundled models, verify exact on both backends, and `report`
gives the size and BOPS counted here independently from the ONNX file's weight shapes and
output shapes; the Python API takes the same choices; `--frac` sets no latency limit where
the latency table cannot tell INT4 from INT8 (and is feasible whenever size and BOPS are)."""
import contextlib
import copy
import io
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import intq
from conftest import MODELS
from intq.cli import main as cli_main
from intq.twin.verify import verify

CALIB = MODELS / "digits_calib.npz"
CHOICES = {"w8a8": (8, 8), "w4a8": (4, 8), "w4a4": (4, 4)}


def onnx_layers(path):
    """[(name, weight count, output channels, MACs per image)] of the Conv/Gemm nodes, read
    from the ONNX file itself: weight shapes from its initializers, output shapes from
    onnx's shape inference (not intq's graph or cost code)."""
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    inits = {i.name: numpy_helper.to_array(i).shape for i in m.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(m.graph.value_info) + list(m.graph.output)}
    out = []
    for n in m.graph.node:
        if n.op_type == "Conv":
            w, o = inits[n.input[1]], shapes[n.output[0]]
            macs = o[1] * o[2] * o[3] * w[1] * w[2] * w[3]   # (C/groups) * kh * kw per output
        elif n.op_type == "Gemm":
            w = inits[n.input[1]]
            macs = w[0] * w[1]
        else:
            continue
        out.append((n.name, int(np.prod(w)), w[0], int(macs)))
    return out


def expected_choices(path, spec):
    """{layer: (w_bits, a_bits)}: `spec` a choice for the middle layers (ends W8A8) or a
    dict naming layers (the rest W8A8, as a bits file leaves them)."""
    names = [n for n, *_ in onnx_layers(path)]
    if isinstance(spec, dict):
        named = lambda v: {8: "w8a8", 4: "w4a4"}.get(v) or v.lower()
        return {n: CHOICES[named(spec.get(n, 8))] for n in names}
    return {n: (8, 8) if i in (0, len(names) - 1) else CHOICES[spec] for i, n in enumerate(names)}


# resnet: every choice, and the shortcut and the block's first conv (they read one tensor)
# at different input widths, so that tensor is stored wide with a uint4 and a uint8 copy
MIXED = {"/conv1/Conv": "w4a8", "/layer1/conv1/Conv": "w4a4", "/layer1/conv2/Conv": 4,
         "/layer2/downsample/downsample.0/Conv": "w4a4", "/layer2/conv1/Conv": "w4a8",
         "/layer2/conv2/Conv": "w8a8", "/layer3/conv1/Conv": "W4A8", "/fc/Gemm": 8}
CASES = {"resnet-w8a8": ("resnet", "w8a8"), "resnet-w4a8": ("resnet", "w4a8"),
         "resnet-w4a4": ("resnet", "w4a4"), "resnet-mixed": ("resnet", MIXED),
         "mobilenet-w4a8": ("mobilenet", "w4a8")}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Each case compiled by the command line (`--bits CHOICE` or `--bits FILE.json`):
    {case: (artifact path, the summary line it printed)}."""
    d = tmp_path_factory.mktemp("wa")
    out = {}
    for case, (model, spec) in CASES.items():
        bits = spec
        if isinstance(spec, dict):
            bits = d / f"{case}.json"
            bits.write_text(json.dumps(spec))
        path = d / f"{case}.intq"
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = cli_main(["compile", str(MODELS / f"{model}.onnx"), "-o", str(path), "--calib",
                             str(CALIB), "--bits", str(bits)])
        assert code == 0
        out[case] = (path, buf.getvalue())
    return out


@pytest.fixture(scope="module")
def images():
    return np.load(MODELS / "digits_test.npz")["x"][:24]


@pytest.mark.parametrize("case", CASES)
def test_report_counts_size_from_weight_bits_and_bops_from_both(compiled, case):
    model, spec = CASES[case]
    want = expected_choices(MODELS / f"{model}.onnx", spec)
    rep = intq.load(compiled[case][0]).report()
    rows = {r["name"]: r for r in rep["layers"]}
    total_bytes, total_bops = 0, 0
    for name, n_w, m, macs in onnx_layers(MODELS / f"{model}.onnx"):
        wb, ab = want[name]
        r = rows[name]
        assert (r["w_bits"], r["a_bits"], r["macs"], r["bops"]) == (wb, ab, macs, wb * ab * macs)
        assert r["bytes"] == n_w * wb / 8 + m * 4          # weights at w_bits, INT32 biases
        total_bytes += n_w * wb // 8 + m * 4
        total_bops += wb * ab * macs
    assert len(rows) == len(want)
    assert rep["totals"]["size_mb"] == total_bytes / 2**20
    assert rep["totals"]["bops_g"] == total_bops / 1e9
    card = rep["card"]
    counts = {}
    for wb, ab in want.values():
        counts[f"W{wb}A{ab}"] = counts.get(f"W{wb}A{ab}", 0) + 1
    assert card["layers_per_bit_width"] == counts
    assert card["mixed_precision"] is (len(counts) > 1)
    assert card["first_last_layer_bits"] == [f"W{wb}A{ab}" for wb, ab in
                                             (want[next(iter(want))], want[list(want)[-1]])]


@pytest.mark.parametrize("case", CASES)
def test_compiled_choices_verify_exact_on_both_backends(compiled, case, images):
    model = intq.load(compiled[case][0])
    for backend in ("reference", "numba"):
        res = verify(model, images, backend)
        assert res["all_exact"], (backend, res["first_differing"])
    # the integer graph holds what was asked: int4/int8 weights, uint4/uint8 layer inputs
    want = expected_choices(MODELS / f"{CASES[case][0]}.onnx", CASES[case][1])
    ig = model.integer
    for node in ig.nodes:
        if node.op in ("IntConv", "IntLinear"):
            wb, ab = want[node.name]
            assert ig.values[node.inputs[1]].dtype == f"int{wb}"
            assert ig.values[node.inputs[0]].dtype == f"uint{ab}"


def test_w4a8_differs_from_w8a8_in_the_weights_only(compiled, images):
    """Same activation parameters at every point (same input widths, same calibration), so
    W4A8 and W8A8 differ only where the weights enter."""
    a = intq.load(compiled["resnet-w4a8"][0]).integer
    b = intq.load(compiled["resnet-w8a8"][0]).integer
    assert a.metadata["qparams"].keys() == b.metadata["qparams"].keys()
    for k, q in a.metadata["qparams"].items():
        if not q.get("accumulator"):
            assert q == b.metadata["qparams"][k], k
    wa = [a.constants[n.inputs[1]] for n in a.nodes if n.op in ("IntConv", "IntLinear")]
    wb = [b.constants[n.inputs[1]] for n in b.nodes if n.op in ("IntConv", "IntLinear")]
    assert [int(np.abs(w).max()) for w in wa[1:-1]] == [7] * (len(wa) - 2)
    assert [int(np.abs(w).max()) for w in wb[1:-1]] == [127] * (len(wb) - 2)


def test_mixed_input_widths_of_one_tensor_are_two_copies(compiled):
    """The shortcut (W4A4) and its block's first conv (W4A8) read one tensor: it stays
    wide and each reads its own requantized copy."""
    ig = intq.load(compiled["resnet-mixed"][0]).integer
    by_name = {n.name: n for n in ig.nodes}
    a = by_name["/layer2/downsample/downsample.0/Conv"].inputs[0]
    b = by_name["/layer2/conv1/Conv"].inputs[0]
    assert a != b and (ig.values[a].dtype, ig.values[b].dtype) == ("uint4", "uint8")
    src = {n.inputs[0] for n in ig.nodes if n.op == "Requantize" and n.outputs[0] in (a, b)}
    assert len(src) == 1 and ig.values[src.pop()].dtype == "uint16"  # the 16-bit stream, after a ReLU


def test_compile_summary_names_the_choices(compiled):
    assert "10 layers at W8A8/W4A8 (2 + 8)," in compiled["resnet-w4a8"][1]
    assert "10 layers at W8A8," in compiled["resnet-w8a8"][1]
    assert "10 layers at W8A8/W4A8/W4A4 (4 + 3 + 3)," in compiled["resnet-mixed"][1]


def test_python_api_takes_the_same_choices(compiled, images):
    calib = np.load(CALIB)["x"]
    for case, bits in (("resnet-w4a8", "w4a8"), ("resnet-mixed", MIXED)):
        model = intq.compile(MODELS / "resnet.onnx", calib, bits=bits)
        assert np.array_equal(model.run(images, integer=True),
                              intq.load(compiled[case][0]).run(images, integer=True))
    json.dumps(model.integer.metadata["config"])  # the config stays JSON


# -- --frac where the latency table is flat -----------------------------------------------
def latency_table(path, ratio):
    """A latency table for resnet: 8-bit time proportional to MACs, 4-bit time
    ratio(i) times it for layer i."""
    rows = [{"name": n, "macs": macs, "ms": {"8": macs * 1e-7, "4": macs * 1e-7 * ratio(i)}}
            for i, (n, _, _, macs) in enumerate(onnx_layers(MODELS / "resnet.onnx"))]
    path.write_text(json.dumps({"cpu": "constructed", "unit": "ms", "layers": rows}))
    return path


@pytest.fixture(scope="module")
def frac_setup(tmp_path_factory):
    """(folder, cache folder, flat table, Problem on resnet with it). The flat table's
    4-bit times are 2.5% above or below the 8-bit ones, alternately (totals within 3%)."""
    from intq.alloc.allocate import Problem

    d = tmp_path_factory.mktemp("frac")
    flat = latency_table(d / "flat.json", lambda i: 1.025 if i % 2 else 0.975)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INTQ_CACHE_DIR", str(d / "cache"))
        prob = Problem(MODELS / "resnet.onnx", np.load(CALIB)["x"], latency_table=str(flat),
                       images=32)
    return d, d / "cache", flat, prob


@pytest.mark.parametrize("frac", [0.0, 0.25, 0.5, 1.0])
def test_frac_on_a_flat_latency_table_sets_no_latency_limit_and_is_feasible(frac_setup, frac):
    _, _, _, prob = frac_setup
    assert prob.latency_flat()
    limits, note = prob.fraction_limits(frac)
    assert set(limits) == {"size_mb", "bops_g"}
    assert note.startswith("latency: INT4 and INT8 times equal within 3% (")
    assert note.endswith("; --frac sets no latency limit") and "\n" not in note
    res = prob.solve(limits)
    t, lim = res["totals"], res["limits"]
    assert t["size_mb"] <= lim["size_mb"] + 1e-12 and t["bops_g"] <= lim["bops_g"] + 1e-12
    assert "latency_ms" not in lim
    free = [n for n in prob.names if n not in prob.fixed]
    if frac == 0.0:  # the smallest reachable size and BOPS: every free layer W4A4
        assert {res["bits"][n] for n in free} == {"w4a4"}
    assert all(res["bits"][n] == "w8a8" for n in prob.fixed)


def test_frac_sets_a_latency_limit_where_the_table_can_bind(frac_setup, tmp_path):
    """4-bit times 4% below the 8-bit ones (outside 3%): --frac limits latency too; an
    explicit latency limit applies on a flat table as well."""
    from intq.alloc.allocate import Problem

    d, cache, flat, prob = frac_setup
    faster = latency_table(tmp_path / "faster.json", lambda i: 0.96)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INTQ_CACHE_DIR", str(cache))
        p2 = Problem(MODELS / "resnet.onnx", np.load(CALIB)["x"], latency_table=str(faster),
                     images=32)
    assert p2.sensitivity_cached and not p2.latency_flat()
    limits, note = p2.fraction_limits(0.25)
    assert note is None and limits["latency_ms"] == (0.25, True)
    res = p2.solve(limits)
    assert res["totals"]["latency_ms"] <= res["limits"]["latency_ms"] + 1e-12
    # W4A8 has no time of its own in these tables: it takes the 8-bit kernel's
    assert all(p2.cost[n]["w4a8"]["latency_ms"] == p2.cost[n]["w8a8"]["latency_ms"] for n in p2.names)


def test_w4a8_chosen_by_the_ilp_compiles_from_the_bits_file(frac_setup, tmp_path, images):
    """Sensitivities set so that W4A4 costs far more than W4A8: at the smallest size every
    free layer takes W4A8; the bits file written from it compiles to W4A8 layers."""
    _, _, _, prob = frac_setup
    prob = copy.deepcopy(prob)
    for n in prob.names:
        prob.cost[n]["w4a4"]["omega"] = 1e3
    res = prob.solve({"size_mb": (0.0, True)})
    free = [n for n in prob.names if n not in prob.fixed]
    assert {res["bits"][n] for n in free} == {"w4a8"} and res["counts"]["w4a8"] == len(free)
    path = tmp_path / "bits.json"
    path.write_text(json.dumps(res["bits"]))
    art = tmp_path / "m.intq"
    assert cli_main(["compile", str(MODELS / "resnet.onnx"), "-o", str(art), "--calib", str(CALIB),
                     "--bits", str(path)]) == 0
    rows = intq.load(art).report()["layers"]
    assert [(r["w_bits"], r["a_bits"]) for r in rows] == [(8, 8)] + [(4, 8)] * len(free) + [(8, 8)]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "intq", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def test_cli_frac_on_a_flat_table_says_so_and_writes_choices(frac_setup):
    d, cache, flat, _ = frac_setup
    env = {"INTQ_CACHE_DIR": str(cache)}
    out = d / "bits.json"
    proc = run_cli("allocate", MODELS / "resnet.onnx", "--calib", CALIB, "--images", "32",
                   "--frac", "0.25", "--latency-table", flat, "-o", out, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if "--frac sets no latency limit" in l]
    assert len(lines) == 1 and lines[0].startswith("latency: INT4 and INT8 times equal within 3%")
    assert "(cached)" in proc.stdout
    assert set(json.loads(out.read_text()).values()) <= set(CHOICES)
    # an explicit latency limit still applies, and then no such line is printed
    proc = run_cli("allocate", MODELS / "resnet.onnx", "--calib", CALIB, "--images", "32",
                   "--frac", "0.25", "--max-latency-ms", "100%", "--latency-table", flat,
                   "-o", out, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert "note" not in res and "latency_ms" in res["limits"] and "size_mb" in res["limits"]
