"""Mixed-precision allocation: the ILP over the three choices W8A8/W4A8/W4A4 against brute
force on random instances (every subset of limits, ties, fixed layers, restricted choices,
infeasible cases), W4A8 chosen where the costs make it best, ties found from the graph,
Hutchinson's trace against the exact Hessian trace, a supplied faster-INT4 latency table
trading sensitivity for speed, and allocate -> compile -> eval -> verify end to end."""
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import MODELS
from intq.alloc import costs as graph_costs
from intq.alloc.allocate import allocate
from intq.alloc.ilp import groups_of, solve
from intq.alloc.sensitivity import hutchinson
from intq.errors import IntqError
from intq.pipeline import float_graph

KEYS = ("size_mb", "bops_g", "latency_ms")
CHOICES = ("w4a4", "w4a8", "w8a8")


def random_instance(rng, n):
    """Costs of n layers at the three choices, shaped like real ones: W4A8 and W4A4 have the
    same size (half of W8A8's), BOPS halve and quarter, latencies and sensitivities vary
    (W4A8's sensitivity sometimes above W4A4's, as measured ones can be)."""
    layers = [f"l{i}" for i in range(n)]
    costs = {}
    for l in layers:
        s8, b8, t8 = rng.uniform(0.1, 2, 3)
        o4 = rng.uniform(0, 1)
        costs[l] = {"w8a8": {"omega": o4 * rng.uniform(0, 0.1), "size_mb": s8, "bops_g": b8, "latency_ms": t8},
                    "w4a8": {"omega": o4 * rng.uniform(0.1, 1.1), "size_mb": s8 / 2, "bops_g": b8 / 2,
                             "latency_ms": t8 * rng.uniform(0.8, 1.1)},
                    "w4a4": {"omega": o4, "size_mb": s8 / 2, "bops_g": b8 / 4,
                             "latency_ms": t8 * rng.uniform(0.5, 1.2)}}
    return layers, costs


def brute_force(layers, costs, limits, ties, fixed, choices=CHOICES):
    """The optimum over all 3^n assignments (numpy), or None when none is feasible."""
    idx = np.array(list(itertools.product(range(len(CHOICES)), repeat=len(layers))))
    arr = lambda k: np.array([[costs[l][c][k] for c in CHOICES] for l in layers])
    rows = np.arange(len(layers))
    ok = np.ones(len(idx), bool)
    for i, l in enumerate(layers):
        allowed = [fixed[l]] if l in fixed else choices
        ok &= np.isin(idx[:, i], [CHOICES.index(c) for c in allowed])
    for t in ties:
        cols = [layers.index(l) for l in t]
        ok &= (idx[:, cols] == idx[:, cols[:1]]).all(axis=1)
    for k, v in limits.items():
        ok &= arr(k)[rows, idx].sum(axis=1) <= v + 1e-12
    if not ok.any():
        return None
    obj = arr("omega")[rows, idx].sum(axis=1)
    best = int(np.flatnonzero(ok)[np.argmin(obj[ok])])
    return float(obj[best]), {l: CHOICES[j] for l, j in zip(layers, idx[best])}


@pytest.mark.parametrize("seed", range(40))
def test_ilp_matches_brute_force_on_every_subset_of_limits(seed):
    """Three choices per layer; ties on odd seeds, the first layer fixed to W8A8 on every
    third, and on every fourth the free layers restricted to W4A8/W4A4 (a fixed layer keeps
    W8A8 even so)."""
    rng = np.random.default_rng(seed)
    n = 7
    layers, costs = random_instance(rng, n)
    ties = [["l1", "l2"], ["l4", "l5", "l6"]] if seed % 2 else []
    fixed = {"l0": "w8a8"} if seed % 3 == 0 else {}
    choices = ("w4a4", "w4a8") if seed % 4 == 3 else CHOICES
    for r in range(1, 4):
        for keys in itertools.combinations(KEYS, r):
            lo = {k: sum(min(costs[l][c][k] for c in CHOICES) for l in layers) for k in keys}
            hi = {k: sum(costs[l]["w8a8"][k] for l in layers) for k in keys}
            limits = {k: lo[k] + rng.uniform(-0.05, 1.0) * (hi[k] - lo[k]) for k in keys}
            want = brute_force(layers, costs, limits, ties, fixed, choices)
            if want is None:
                with pytest.raises(IntqError, match="smallest achievable"):
                    solve(layers, costs, limits, choices, ties=ties, fixed=fixed)
                continue
            got = solve(layers, costs, limits, choices, ties=ties, fixed=fixed)
            a = got["bits"]
            assert got["objective"] == pytest.approx(want[0], abs=1e-9)
            for k, v in limits.items():
                assert sum(costs[l][a[l]][k] for l in layers) <= v + 1e-9
            for t in ties:
                assert len({a[l] for l in t}) == 1
            for l, c in fixed.items():
                assert a[l] == c
            assert all(a[l] in choices for l in layers if l not in fixed)


def test_w4a8_is_chosen_where_the_costs_make_it_the_best():
    """Four layers: a size limit that needs 4-bit weights everywhere leaves W4A8 (its
    sensitivity 1) against W4A4 (2 to 20); a BOPS limit of 6 then needs exactly two layers
    at W4A4 (BOPS 2 at W4A8, 1 at W4A4), and the ILP takes the two whose W4A4 costs least
    over W4A8."""
    layers = ["a", "b", "c", "d"]
    extra = {"a": 10.0, "b": 1.5, "c": 20.0, "d": 2.0}
    costs = {l: {"w8a8": {"omega": 0.0, "size_mb": 2.0, "bops_g": 4.0},
                 "w4a8": {"omega": 1.0, "size_mb": 1.0, "bops_g": 2.0},
                 "w4a4": {"omega": 1.0 + extra[l], "size_mb": 1.0, "bops_g": 1.0}} for l in layers}
    got = solve(layers, costs, {"size_mb": 4.0})
    assert got["bits"] == {l: "w4a8" for l in layers} and got["objective"] == 4.0
    got = solve(layers, costs, {"size_mb": 4.0, "bops_g": 6.0})
    assert got["bits"] == {"a": "w4a8", "b": "w4a4", "c": "w4a8", "d": "w4a4"}
    assert got["totals"]["bops_g"] == 6.0 and got["objective"] == 4.0 + 1.5 + 2.0
    # without W4A8 among the choices the same limits cost W4A4 everywhere
    got = solve(layers, costs, {"size_mb": 4.0}, ("w8a8", "w4a4"))
    assert set(got["bits"].values()) == {"w4a4"}
    # the fixed layer keeps W8A8 although the free ones may only take W4A8 or W4A4
    got = solve(layers, costs, {}, ("w4a8", "w4a4"), fixed={"a": "w8a8"})
    assert got["bits"] == {"a": "w8a8", "b": "w4a8", "c": "w4a8", "d": "w4a8"}


def test_infeasible_limits_name_the_smallest_achievable_values():
    layers, costs = random_instance(np.random.default_rng(0), 4)
    least = sum(costs[l]["w4a4"]["size_mb"] for l in layers)
    with pytest.raises(IntqError) as e:
        solve(layers, costs, {"size_mb": least * 0.9})
    assert f"smallest achievable {least:.6g}" in str(e.value) and "\n" not in str(e.value)
    # feasible alone, not together: a size limit that needs 4-bit weights and a latency
    # limit that needs W8A8 (the 4-bit choices made slower here)
    for l in layers:
        for c in ("w4a8", "w4a4"):
            costs[l][c]["latency_ms"] = costs[l]["w8a8"]["latency_ms"] * 2
    all8 = sum(costs[l]["w8a8"]["latency_ms"] for l in layers)
    with pytest.raises(IntqError, match="together"):
        solve(layers, costs, {"size_mb": least * 1.01, "latency_ms": all8})
    with pytest.raises(IntqError, match="fixed to different"):
        solve(layers, costs, {}, ties=[["l0", "l1"]], fixed={"l0": "w8a8", "l1": "w4a4"})


def test_tie_groups_merge_overlapping_ties():
    assert groups_of(["a", "b", "c", "d"], [["a", "c"], ["c", "d"]]) == [["a", "c", "d"], ["b"]]


def test_ties_come_from_the_graph():
    """ResNet: each downsampling shortcut shares its input with the next block's first conv;
    Inception: the 1x1 branches of a block read the block input."""
    t = graph_costs.ties(float_graph(MODELS / "resnet.onnx"))
    assert ["/layer2/downsample/downsample.0/Conv", "/layer2/conv1/Conv"] in t
    assert ["/layer3/downsample/downsample.0/Conv", "/layer3/conv1/Conv"] in t
    t = graph_costs.ties(float_graph(MODELS / "inception.onnx"))
    assert ["/mixed_1/branch1x1/conv/Conv", "/mixed_1/branch3x3_1/conv/Conv",
            "/mixed_1/branch3x3dbl_1/conv/Conv"] in t
    assert graph_costs.ties(float_graph(MODELS / "mobilenet.onnx")) == []


def test_hutchinson_matches_the_exact_hessian_trace():
    torch.manual_seed(0)
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    w1 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)

    def loss():
        return torch.nn.functional.cross_entropy(torch.tanh(x @ w1.T) @ w2.T, y)

    # exact: the diagonal of each block of the Hessian, one Hessian-vector product per entry
    exact = []
    for p in (w1, w2):
        g, = torch.autograd.grad(loss(), p, create_graph=True)
        tr = 0.0
        for j in range(p.numel()):
            e = torch.zeros(p.numel(), dtype=p.dtype)
            e[j] = 1
            hv, = torch.autograd.grad(g, p, e.reshape(p.shape), retain_graph=True)
            tr += float(hv.reshape(-1)[j])
        exact.append(tr)
    means, errs = hutchinson(loss(), [w1, w2], samples=3000, seed=1)
    for m, e, t in zip(means, errs, exact):
        assert abs(m - t) <= 4 * e + 1e-9, (m, e, t)
        assert e < 0.1 * abs(t) + 1e-6  # the estimate is informative, not just wide


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTQ_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_supplied_faster_int4_table_trades_sensitivity_for_speed(cache, tmp_path):
    """A device where INT4 is 1.5x faster (like HAWQ-V3's T4): tightening the latency limit
    moves more layers to 4 bits at a growing sensitivity cost (Appendix I)."""
    fg = float_graph(MODELS / "resnet.onnx")
    rows = [{"name": n, "macs": c["w8a8"]["macs"],
             "ms": {"8": c["w8a8"]["macs"] * 1e-7, "4": c["w8a8"]["macs"] * 1e-7 / 1.5}}
            for n, c in graph_costs.size_bops(fg).items()]
    table = tmp_path / "t4.json"
    table.write_text(json.dumps({"cpu": "a faster-INT4 device", "unit": "ms", "layers": rows}))
    calib = np.load(MODELS / "digits_calib.npz")["x"][:64]
    prev_n4, prev_omega = -1, -1.0
    for frac in (1.0, 0.6, 0.3, 0.0):
        res = allocate(MODELS / "resnet.onnx", calib, limits={"latency_ms": (frac, True)},
                       latency_table=str(table), images=64)
        assert res["latency"]["cpu"] == "a faster-INT4 device"
        assert res["totals"]["latency_ms"] <= res["limits"]["latency_ms"] + 1e-12
        n4 = res["counts"]["w4a4"]  # W4A8 runs the 8-bit kernel: only W4A4 is faster
        assert n4 >= prev_n4 and res["totals"]["omega"] >= prev_omega - 1e-12
        prev_n4, prev_omega = n4, res["totals"]["omega"]
    assert prev_n4 == len(rows) - 2  # at the tightest limit all but the fixed ends
    assert res["sensitivity_cached"]  # same model and data: computed once


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "intq", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def test_allocate_compile_eval_verify_end_to_end(tmp_path):
    env = {"INTQ_CACHE_DIR": str(tmp_path / "cache")}
    bits = tmp_path / "bits.json"
    proc = run_cli("allocate", MODELS / "mobilenet.onnx", "--calib", MODELS / "digits_calib.npz",
                   "--max-size-mb", "40%", "--max-bops-g", "90%", "-o", bits, "--plot",
                   tmp_path / "alloc.png", "--images", "128", env=env)
    assert proc.returncode == 0, proc.stderr
    table = json.loads(bits.read_text())
    assert set(table.values()) <= {"w8a8", "w4a8", "w4a4"} and set(table.values()) - {"w8a8"}
    art = tmp_path / "mixed.intq"
    assert run_cli("compile", MODELS / "mobilenet.onnx", "--calib", MODELS / "digits_calib.npz",
                   "--bits", bits, "-o", art).returncode == 0
    proc = run_cli("eval", art, "--data", MODELS / "digits_test.npz", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["int_top1"] > 0.95
    proc = run_cli("verify", art, "--inputs", MODELS / "digits_test.npz", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["all_exact"] is True
    assert (tmp_path / "alloc.png").read_bytes()[:4] == b"\x89PNG"
    # a second allocation with other limits re-solves from the cached sensitivities
    proc = run_cli("allocate", MODELS / "mobilenet.onnx", "--calib", MODELS / "digits_calib.npz",
                   "--max-size-mb", "80%", "-o", tmp_path / "b2.json", "--images", "128", env=env)
    assert proc.returncode == 0 and "(cached)" in proc.stdout


def test_allocate_user_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{\"layers\": 3}")
    x = np.load(MODELS / "digits_test.npz")["x"][:8]
    np.savez(tmp_path / "badlabels.npz", x=x, y=np.full(8, 50))
    np.savez(tmp_path / "floatlabels.npz", x=x, y=np.zeros(8))
    for args, frag in [(["--images", "0"], "at least 1 image"),
                       (["--data", tmp_path / "badlabels.npz"], "labels must lie in [0, 10)"),
                       (["--data", tmp_path / "floatlabels.npz"], "one integer label per image"),
                       (["--max-size-mb", "abc"], "not a number"),
                       (["--max-size-mb", "150%"], "fraction must lie in [0, 1]"),
                       (["--max-size-mb", "0.00001"], "smallest achievable"),
                       (["--max-latency-ms", "50%", "--latency-table", bad], "latency table")]:
        proc = run_cli("allocate", MODELS / "resnet.onnx", "--calib", MODELS / "digits_calib.npz",
                       "-o", tmp_path / "b.json", "--images", "32", *args,
                       env={"INTQ_CACHE_DIR": str(tmp_path / "c")})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert frag in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not (tmp_path / "b.json").exists()


def test_an_unusable_cache_folder_only_costs_time(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("INTQ_CACHE_DIR", str(tmp_path / "file" / "sub"))  # cannot be created
    calib = np.load(MODELS / "digits_calib.npz")["x"][:32]
    res = allocate(MODELS / "resnet.onnx", calib, limits={"size_mb": (0.5, True)}, images=32)
    again = allocate(MODELS / "resnet.onnx", calib, limits={"size_mb": (0.5, True)}, images=32)
    assert res["bits"] == again["bits"] and not again["sensitivity_cached"]


def test_cached_latencies_hold_for_one_kernel_path_and_source(cache, monkeypatch):
    """A table measured with one set of kernels is not reused by another path
    (INTQ_KERNELS) or after the kernels change: those time afresh."""
    import intq.bench
    from intq.alloc import allocate
    from intq.kernels import cpu

    fg = float_graph(MODELS / "resnet.onnx")
    measured = []

    def fake_table(graph, batch, repeat, progress=None):
        measured.append(cpu_info()["kernel_path"])
        return {"cpu": "test", "layers": [{"name": n, "ms": {"8": 1.0, "4": 0.5}}
                                          for n in graph_costs.size_bops(graph)]}

    cpu_info = intq.bench.cpu_info
    monkeypatch.setattr(intq.bench, "latency_table", fake_table)
    path = MODELS / "resnet.onnx"
    assert allocate.latencies(path, fg)[1]["source"] == "measured"
    assert allocate.latencies(path, fg)[1]["source"] == "cache"
    monkeypatch.setattr(cpu, "PATH", "portable" if cpu.PATH != "portable" else "vnni")
    assert allocate.latencies(path, fg)[1]["source"] == "measured"
    import intq.kernels
    monkeypatch.setattr(intq.kernels, "SOURCE_DIGEST", "edited")
    assert allocate.latencies(path, fg)[1]["source"] == "measured"
    assert len(measured) == 3


def test_supplied_weights_replace_nearest_rounding(cache):
    """`weights(layer, w_bits)` stands in for the rounded weights: handing back the float
    weights themselves leaves only the input's quantization, so W4A8 scores exactly as
    W8A8 (perturbation and hessian alike). A wrong shape is one error; with a
    `weights_key` the result is cached under it, without one it is not cached."""
    from intq.alloc.allocate import Problem
    from intq.alloc.sensitivity import hessian_sensitivity, perturbation_sensitivity
    from intq.quant.scheme import QuantConfig

    fg = float_graph(MODELS / "resnet.onnx")
    weight = {n.name: fg.constants[n.inputs[1]] for n in graph_costs.layer_nodes(fg)}
    calls = []

    def unrounded(name, w_bits):
        calls.append((name, w_bits))
        return weight[name]

    x = np.load(MODELS / "digits_calib.npz")["x"][:16]
    cfg = QuantConfig()
    for omega in (perturbation_sensitivity(fg, cfg, x, x, weights=unrounded),
                  hessian_sensitivity(fg, cfg, x, samples=4, weights=unrounded)):
        for n in weight:
            assert omega[n]["w4a8"] == omega[n]["w8a8"], n
            assert omega[n]["w4a4"] != omega[n]["w4a8"], n
    assert {b for _, b in calls} == {4, 8} and {n for n, _ in calls} == set(weight)
    nearest = perturbation_sensitivity(fg, cfg, x, x)
    assert all(nearest[n]["w4a8"] != nearest[n]["w8a8"] for n in weight)
    with pytest.raises(IntqError, match="supplied 4-bit weights have shape"):
        perturbation_sensitivity(fg, cfg, x, x, weights=lambda n, b: np.zeros(3))
    # None from the callable means nearest rounding for that layer and width
    again = perturbation_sensitivity(fg, cfg, x, x, weights=lambda n, b: None)
    assert again == nearest
    runs = [Problem(MODELS / "resnet.onnx", x, images=16, weights=unrounded, weights_key=key)
            for key in ("unrounded", "unrounded", None, None)]
    assert [p.sensitivity_cached for p in runs] == [False, True, False, False]
    assert runs[1].cost == runs[0].cost
