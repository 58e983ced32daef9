"""Mixed-precision allocation: the ILP against brute force on random instances (every subset
of limits, ties, fixed layers, infeasible cases), ties found from the graph, Hutchinson's
trace against the exact Hessian trace, a supplied faster-INT4 latency table trading
sensitivity for speed, and allocate -> compile -> eval -> verify end to end."""
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


def random_instance(rng, n):
    layers = [f"l{i}" for i in range(n)]
    costs = {}
    for l in layers:
        s8, b8, t8 = rng.uniform(0.1, 2, 3)
        o4 = rng.uniform(0, 1)
        costs[l] = {8: {"omega": o4 * rng.uniform(0, 0.1), "size_mb": s8, "bops_g": b8, "latency_ms": t8},
                    4: {"omega": o4, "size_mb": s8 / 2, "bops_g": b8 / 4, "latency_ms": t8 * rng.uniform(0.5, 1.2)}}
    return layers, costs


def brute_force(layers, costs, limits, ties, fixed):
    best = None
    for combo in itertools.product((4, 8), repeat=len(layers)):
        a = dict(zip(layers, combo))
        if any(a[l] != b for l, b in fixed.items()) or any(len({a[l] for l in t}) > 1 for t in ties):
            continue
        if any(sum(costs[l][a[l]][k] for l in layers) > v + 1e-12 for k, v in limits.items()):
            continue
        obj = sum(costs[l][a[l]]["omega"] for l in layers)
        if best is None or obj < best[0]:
            best = (obj, a)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_ilp_matches_brute_force_on_every_subset_of_limits(seed):
    rng = np.random.default_rng(seed)
    n = 7
    layers, costs = random_instance(rng, n)
    ties = [["l1", "l2"], ["l4", "l5", "l6"]] if seed % 2 else []
    fixed = {"l0": 8} if seed % 3 == 0 else {}
    for r in range(1, 4):
        for keys in itertools.combinations(KEYS, r):
            lo = {k: sum(min(costs[l][4][k], costs[l][8][k]) for l in layers) for k in keys}
            hi = {k: sum(costs[l][8][k] for l in layers) for k in keys}
            limits = {k: lo[k] + rng.uniform(-0.05, 1.0) * (hi[k] - lo[k]) for k in keys}
            want = brute_force(layers, costs, limits, ties, fixed)
            if want is None:
                with pytest.raises(IntqError, match="smallest achievable"):
                    solve(layers, costs, limits, ties=ties, fixed=fixed)
                continue
            got = solve(layers, costs, limits, ties=ties, fixed=fixed)
            a = got["bits"]
            assert got["objective"] == pytest.approx(want[0], abs=1e-9)
            for k, v in limits.items():
                assert sum(costs[l][a[l]][k] for l in layers) <= v + 1e-9
            for t in ties:
                assert len({a[l] for l in t}) == 1
            for l, b in fixed.items():
                assert a[l] == b


def test_infeasible_limits_name_the_smallest_achievable_values():
    layers, costs = random_instance(np.random.default_rng(0), 4)
    least = sum(costs[l][4]["size_mb"] for l in layers)
    with pytest.raises(IntqError) as e:
        solve(layers, costs, {"size_mb": least * 0.9})
    assert f"smallest achievable {least:.6g}" in str(e.value) and "\n" not in str(e.value)
    # feasible alone, not together: a size limit that needs 4 bits and a latency limit that
    # needs 8 (4-bit layers made slower here)
    for l in layers:
        costs[l][4]["latency_ms"] = costs[l][8]["latency_ms"] * 2
    all8 = sum(costs[l][8]["latency_ms"] for l in layers)
    with pytest.raises(IntqError, match="together"):
        solve(layers, costs, {"size_mb": least * 1.01, "latency_ms": all8})
    with pytest.raises(IntqError, match="fixed to different"):
        solve(layers, costs, {}, ties=[["l0", "l1"]], fixed={"l0": 8, "l1": 4})


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
    rows = [{"name": n, "macs": c[8]["macs"], "ms": {"8": c[8]["macs"] * 1e-7, "4": c[8]["macs"] * 1e-7 / 1.5}}
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
        n4 = sum(b == 4 for b in res["bits"].values())
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
    assert set(table.values()) == {4, 8}
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
