"""The Numba backend on whole models: every bundled model (both exporters, INT8, INT4 and a
mixed bit file) and the full-size architectures at reduced resolution give exactly the
reference executor's integers; `intq run` writes the same bytes with either backend;
the kernel path can be forced; `intq bench`, the latency table and the Python API work."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import intq
from conftest import MODELS, export_full_size
from intq.cli import main as cli_main
from intq.kernels import cpu
from intq.kernels.plan import Plan
from intq.model import Model
from intq.pipeline import compile_model, float_graph
from intq.quant.scheme import QuantConfig
from intq.reference import run_integer

SMALL = ["resnet", "inception", "mobilenet", "mobilenetv3"]
BUNDLED = SMALL + [f"{n}.dynamo" for n in SMALL]
PATHS = ["portable"] + (["avx2"] if cpu.has_avx2() else []) + (["vnni"] if cpu.has_vnni() else []) + (["amx"] if cpu.has_amx() else [])


@pytest.fixture(scope="module")
def calib():
    return np.load(MODELS / "digits_calib.npz")["x"]


@pytest.fixture(scope="module")
def images():
    return np.load(MODELS / "digits_test.npz")["x"][:45]


def mixed_bits(model):
    """Every other Conv/Linear at 4 bits, the rest (first and last included) at 8."""
    fg = float_graph(model)
    names = [n.name for n in fg.nodes if n.op in ("Conv", "Linear")]
    return {k: 4 if i % 2 else 8 for i, k in enumerate(names)}


def assert_same(got, want):
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.array_equal(g, w), int((g != w).sum())


def test_batch_run_in_sub_batches_equals_reference(calib, images):
    """A batch cut into sub-batches (`Plan.chunk`: image by image where one image's
    tensors outgrow the L2 caches), the last one shorter, gives the whole batch's integers."""
    ig, _, _ = compile_model(MODELS / "resnet.onnx", calib[:64], QuantConfig(default_bits=8))
    want = run_integer(ig, images[:7])
    for chunk in (1, 3):
        plan = Plan(ig, PATHS[-1])
        plan._chunk, plan._split = chunk, 0
        assert_same(plan.run(images[:7]), want)
        assert sorted(plan._bound) == sorted({chunk, 7 % chunk} - {0})


@pytest.mark.parametrize("name", ["resnet", "inception", "mobilenetv3"])
def test_batch_split_between_image_and_batch_equals_reference(name, calib, images):
    """`Plan.split`: the first k steps image by image, the rest on the whole batch, for
    every k, on residual adds, concats and squeeze-excite products (a tensor crossing
    the split is copied image by image; a concat may be written on both sides of it)."""
    ig, _, _ = compile_model(MODELS / f"{name}.onnx", calib[:64], QuantConfig(default_bits=8))
    want = run_integer(ig, images[:5])
    plan = Plan(ig, PATHS[-1])
    plan._chunk = 1
    assert 0 < plan.split() <= len(plan.steps)  # the cost model's own choice
    for k in range(1, len(plan.steps)):
        plan._split = k
        assert_same(plan.run(images[:5]), want)
    assert sorted(plan._bound) == [1, 5]


@pytest.mark.parametrize("bits", ["8", "4", "mixed"])
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_models_numba_equals_reference(name, bits, calib, images):
    path = MODELS / f"{name}.onnx"
    cfg = (QuantConfig(bits=mixed_bits(path)) if bits == "mixed" else QuantConfig(default_bits=int(bits)))
    ig, _, _ = compile_model(path, calib[:64], cfg)
    want = run_integer(ig, images)
    for kernels in PATHS:
        assert_same(Plan(ig, kernels).run(images), want)
        assert_same(Plan(ig, kernels).run(images[:1]), [w[:1] for w in want])


@pytest.mark.parametrize("name,res", [("resnet18", 64), ("resnet50", 64), ("mobilenet_v2", 64),
                                      ("inception_v3", 91), ("mobilenet_v3_large", 64),
                                      ("efficientnet_b0", 64), ("shufflenet_v2_x1_0", 64),
                                      ("squeezenet1_0", 64), ("densenet121", 64)])
def test_full_size_architectures_numba_equals_reference_and_twin(name, res):
    model = export_full_size(name, res)
    x = np.random.default_rng(0).standard_normal((3, 3, res, res)).astype(np.float32)
    names = [n.name for n in float_graph(model).nodes
             if n.op in ("Conv", "Linear")]
    cfg = QuantConfig(bits={k: 4 if i % 3 == 1 else 8 for i, k in enumerate(names)})
    ig, _, _ = compile_model(model, x, cfg)
    want = run_integer(ig, x[:2])
    for kernels in PATHS:
        assert_same(Plan(ig, kernels).run(x[:2]), want)
    # ... and the torch twin equals both executors at every stored tensor (intq verify)
    from intq.twin import from_compiled
    from intq.twin.verify import verify

    m = Model(ig)
    twin = from_compiled(m)
    for backend in ("reference", "numba"):
        res = verify(m, x[:2], backend, twin=twin)
        assert res["all_exact"], res["first_differing"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, calib):
    out = {}
    folder = tmp_path_factory.mktemp("art")
    for name in BUNDLED:
        for bits in ("8", "4"):
            p = folder / f"{name}.{bits}.intq"
            assert cli_main(["compile", str(MODELS / f"{name}.onnx"), "-o", str(p), "--calib",
                             str(MODELS / "digits_calib.npz"), "--bits", bits]) == 0
            out[name, bits] = p
    return out


@pytest.mark.parametrize("flag", [[], ["--int"]])
def test_cli_run_same_bytes_on_both_backends(artifacts, images, tmp_path, flag):
    np.save(tmp_path / "x.npy", images)
    for (name, bits), art in artifacts.items():
        outs = {}
        for backend in ("numba", "reference"):
            out = tmp_path / f"{name}.{bits}.{backend}.npy"
            assert cli_main(["run", str(art), str(tmp_path / "x.npy"), "-o", str(out),
                             "--backend", backend] + flag) == 0
            outs[backend] = out.read_bytes()
        assert outs["numba"] == outs["reference"], (name, bits)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "intq", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def test_portable_path_forced_by_environment(artifacts, images, tmp_path):
    art = artifacts["mobilenet", "4"]
    np.save(tmp_path / "x.npy", images)
    proc = run_cli("run", art, tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--int",
                   env={"INTQ_KERNELS": "portable"})
    assert proc.returncode == 0, proc.stderr
    ig = intq.load(art).integer
    assert np.array_equal(np.load(tmp_path / "y.npy"), run_integer(ig, images)[0])
    proc = run_cli("bench", art, "--repeat", "2", "--json", env={"INTQ_KERNELS": "portable"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["kernel_path"] == "portable"


def test_bad_kernel_path_in_environment_is_one_line(artifacts, images, tmp_path):
    """A path the CPU lacks, or a name that is none, is the user's error: one line, no
    traceback, no output file."""
    np.save(tmp_path / "x.npy", images)
    requests = ["bogus"] + ([] if cpu.has_amx() else ["amx"])
    for request in requests:
        out = tmp_path / f"y.{request}.npy"
        proc = run_cli("run", artifacts["resnet", "8"], tmp_path / "x.npy", "-o", out,
                       env={"INTQ_KERNELS": request})
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and "INTQ_KERNELS" in proc.stderr
        assert not out.exists()


def test_eval_defaults_to_numba_and_matches_reference(artifacts, capsys):
    art = str(artifacts["resnet", "8"])
    res = {}
    for extra in ([], ["--backend", "reference"]):
        assert cli_main(["eval", art, "--data", str(MODELS / "digits_test.npz"), "--json"] + extra) == 0
        res[tuple(extra)] = json.loads(capsys.readouterr().out)
    numba, ref = res[()], res[("--backend", "reference")]
    assert numba.pop("backend") == "numba" and ref.pop("backend") == "reference"
    assert numba == ref and numba["images"] == 360


def test_bench_json_and_per_layer(artifacts, capsys):
    art = str(artifacts["inception", "8"])
    assert cli_main(["bench", art, "--batch", "3", "--repeat", "3", "--per-layer", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("median_ms", "min_ms", "max_ms", "compile_s", "batch", "cpu", "peak_memory_mb"):
        assert key in res, key
    assert res["batch"] == 3 and res["min_ms"] <= res["median_ms"] <= res["max_ms"]
    convs = [r for r in res["layers"] if r["kind"] == "Conv"]
    assert len(convs) == 16 and all(r["gops"] > 0 for r in convs)
    assert cli_main(["bench", art, "--repeat", "2"]) == 0
    assert "latency  median" in capsys.readouterr().out


@pytest.mark.parametrize("source", ["onnx", "intq"])
def test_latency_table(artifacts, tmp_path, source):
    model = MODELS / "resnet.onnx" if source == "onnx" else artifacts["resnet", "8"]
    out = tmp_path / "lat.json"
    assert cli_main(["bench", "--latency-table", str(out), str(model), "--repeat", "3"]) == 0
    table = json.loads(out.read_text())
    assert table["cpu"] and table["batch"] == 1
    names = [n.name for n in float_graph(MODELS / "resnet.onnx").nodes if n.op in ("Conv", "Linear")]
    assert [r["name"] for r in table["layers"]] == names
    assert all(set(r["ms"]) == {"4", "8"} and min(r["ms"].values()) > 0 for r in table["layers"])


def test_bench_user_errors(artifacts, tmp_path):
    proc = run_cli("bench", artifacts["resnet", "8"], "--batch", "0")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "at least 1" in proc.stderr
    proc = run_cli("bench", tmp_path / "missing.intq")
    assert proc.returncode == 2 and "no such file" in proc.stderr
    # the latency table used to write NaN milliseconds for --repeat 0
    out = tmp_path / "table.json"
    proc = run_cli("bench", "--latency-table", out, MODELS / "resnet.onnx", "--repeat", "0")
    assert proc.returncode == 2 and "at least 1" in proc.stderr and not out.exists()


def test_python_api(tmp_path, calib, images):
    model = intq.compile(MODELS / "resnet.onnx", MODELS / "digits_calib.npz", bits=4)
    logits = model.run(images)
    q = model.run(images, integer=True)
    assert logits.dtype == np.float32 and q.dtype == np.int64
    assert np.array_equal(q, model.run(images, backend="reference", integer=True))
    qp = model.output_qparams
    assert np.allclose(logits, qp["scale"] * (q - qp["zero_point"]), rtol=1e-6)
    model.save(tmp_path / "m.intq")
    again = intq.load(tmp_path / "m.intq")
    assert np.array_equal(again.run(images, integer=True), q)
    rep = again.report()
    assert rep["card"]["mixed_precision"] and rep["totals"]["size_mb"] > 0
    d = np.load(MODELS / "digits_test.npz")
    res = again.evaluate(d["x"], d["y"])
    assert res["images"] == 360 and res["int_top1"] > 0.95 and res["backend"] == "numba"
    bits = mixed_bits(MODELS / "resnet.onnx")
    mixed = intq.compile(MODELS / "resnet.onnx", calib[:32], bits=bits)
    assert [l["w_bits"] for l in mixed.integer.metadata["layers"]] == list(bits.values())
    with pytest.raises(intq.errors.IntqError, match="backend"):
        model.run(images, backend="gpu")
