"""The torch twin and `intq verify`: the twin equals the integer executors at every stored
tensor on every bundled model (both exporters, INT8, INT4, mixed), on both backends; verify
catches injected faults and names the first layer they touch; the twin's rescale is the
dyadic rounding rule, extremes and ties included."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import intq
from conftest import MODELS
from intq.cli import main as cli_main
from intq.dyadic import requantize_exact
from intq.model import Model
from intq.pipeline import float_graph
from intq.twin import arith, from_compiled
from intq.twin.verify import verify

SMALL = ["resnet", "inception", "mobilenet", "mobilenetv3"]
BUNDLED = SMALL + [f"{n}.dynamo" for n in SMALL]


@pytest.fixture(scope="module")
def calib():
    return np.load(MODELS / "digits_calib.npz")["x"][:64]


@pytest.fixture(scope="module")
def images():
    return np.load(MODELS / "digits_test.npz")["x"][:24]


def mixed_bits(path):
    names = [n.name for n in float_graph(path).nodes if n.op in ("Conv", "Linear")]
    return {k: 4 if i % 2 else 8 for i, k in enumerate(names)}


# -- the rounding primitive ------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(st.integers(-(2**32) + 1, 2**32 - 1), st.integers(0, 2**31 - 1), st.integers(0, 62))
def test_twin_rescale_is_the_dyadic_rule(x, b, c):
    got = int(arith.rescale(torch.tensor([x]), torch.tensor(b), torch.tensor(c))[0])
    assert got == requantize_exact(x, b, c)


@pytest.mark.parametrize("x,c,want", [(3, 1, 2), (-3, 1, -1), (-1, 1, 0), (1, 1, 1), (-2, 1, -1),
                                      (5, 2, 1), (6, 2, 2), (-6, 2, -1), (-10, 2, -2)])
def test_twin_rescale_ties_go_up(x, c, want):
    """x / 2^c with ties toward +infinity: 1.5 -> 2, -1.5 -> -1, -0.5 -> 0, 1.25 -> 1,
    1.5 -> 2, -1.5 -> -1, -2.5 -> -2."""
    assert int(arith.rescale(torch.tensor([x]), 1, c)[0]) == want


def test_twin_requantize_extremes_and_per_channel_clamp():
    x = torch.tensor([[2**32 - 1, -(2**32) + 1], [7, -7]])
    b = torch.tensor([[2**31 - 1], [3]])
    c = torch.tensor([[62], [1]])
    got = arith.requantize(x, b, c, -128, 127, zero_point=torch.tensor([[0], [100]]))
    want = [[min(max(requantize_exact(int(v), int(b[i, 0]), int(c[i, 0])) + (0, 100)[i], -128), 127)
             for v in x[i]] for i in range(2)]
    assert got.tolist() == want


# -- the twin equals the executors -----------------------------------------------------
@pytest.mark.parametrize("bits", ["8", "4", "mixed"])
@pytest.mark.parametrize("name", BUNDLED)
def test_verify_exact_on_bundled_models(name, bits, calib, images):
    path = MODELS / f"{name}.onnx"
    model = intq.compile(path, calib, bits=mixed_bits(path) if bits == "mixed" else int(bits))
    twin = from_compiled(model)
    for backend in ("reference", "numba"):
        res = verify(model, images, backend, twin=twin)
        bad = [(p["name"], p["differing"]) for p in res["layers"] if not p["exact"]]
        assert res["all_exact"] and not bad, bad
        # every rounding point of the graph is compared: each Requantize/add/concat/pool
        # output and the logits, fused into a conv or not
        ops = {p["op"] for p in res["layers"]}
        for op in ("Requantize", "QuantizeInput"):
            assert op in ops
        stored = {p["name"] for p in res["layers"]}
        for node in model.integer.nodes:
            if node.op not in ("IntConv", "IntLinear"):
                assert node.outputs[0] in stored, node.name
    # the twin's forward is the integer model's output, as real values S * (q - z)
    assert np.array_equal(twin(images).numpy(), model.run(images, backend="reference"))


# -- faults are caught and located -----------------------------------------------------
def _half_to_even(x, b, c):
    """x * b / 2^c rounded half to even (the wrong rule: numpy's and torch's round)."""
    b = torch.as_tensor(b, dtype=torch.int64)
    c = torch.as_tensor(c, dtype=torch.int64)
    xb = x * b
    q = xb >> c
    r = xb - (q << c)
    half = torch.where(c > 0, torch.ones_like(c) << torch.clamp(c - 1, min=0), torch.zeros_like(c))
    up = (r > half) | ((r == half) & (c > 0) & (q % 2 == 1))
    return q + up.to(torch.int64)


@pytest.fixture(scope="module")
def pot_model(calib):
    """Power-of-two multipliers (b = 1): rounding ties are frequent, so the tie rule shows."""
    return intq.compile(MODELS / "resnet.onnx", calib, bits=8, profile="pot")


def test_verify_names_the_layer_with_half_to_even_rounding(pot_model, images):
    g = pot_model.integer
    trace = pot_model.executor("reference").run(images, trace=True)
    twin = from_compiled(pot_model)
    target = None
    for i, node in enumerate(g.nodes):  # the first Requantize where the rules disagree
        if node.op != "Requantize":
            continue
        layer = twin.layers[f"n{i}"]
        x = torch.as_tensor(trace[node.inputs[0]]) - node.attrs["in_zero_point"]
        if not torch.equal(arith.rescale(x, layer.b, layer.c), _half_to_even(x, layer.b, layer.c)):
            target = (i, node)
            break
    assert target is not None, "no tie in any Requantize: the fault would be invisible"
    i, node = target
    twin.layers[f"n{i}"].rescale = _half_to_even
    for backend in ("reference", "numba"):
        res = verify(pot_model, images, backend, twin=twin)
        assert not res["all_exact"]
        assert res["first_differing"] == node.outputs[0]
        first = next(p for p in res["layers"] if p["name"] == node.outputs[0])
        assert first["differing"] > 0 and first["max_diff"] == 1


def test_verify_names_the_layer_with_a_wrong_multiplier(calib, images):
    model = intq.compile(MODELS / "inception.onnx", calib, bits=8)
    twin = from_compiled(model)  # from the right graph
    bad = copy.deepcopy(model.integer)
    reqs = [n for n in bad.nodes if n.op == "Requantize"]
    node = reqs[len(reqs) // 2]
    b = bad.constants[node.inputs[1]]
    bad.constants[node.inputs[1]] = (b * 3) // 4  # 25% off: one wrong multiplier
    for backend in ("reference", "numba"):
        res = verify(Model(bad, model.float, model.info), images, backend, twin=twin)
        assert res["first_differing"] == node.outputs[0], res["first_differing"]
        assert res["first_differing_node"] == node.name


def test_verify_names_the_layer_of_a_kernel_off_by_one(calib, images):
    model = intq.compile(MODELS / "mobilenet.onnx", calib, bits=8)
    ex = model.executor("numba")
    plan = ex.plan
    n = len(images)
    env, calls = plan.bind(n)
    # a step in the middle of the network whose output is a stored rounding point
    i = len(plan.steps) // 2
    step = plan.steps[i]
    t = step.writes[-1]
    lay = plan.layouts[t]
    orig = calls[i]

    def off_by_one():
        orig()
        cell = lay.interior(env[t], n)[n - 1, 0, 0]
        cell[0] = cell[0] - 1 if cell[0] > 0 else cell[0] + 1

    calls[i] = off_by_one
    res = verify(model, images, "numba", executor=ex)
    assert not res["all_exact"]
    assert res["first_differing"] == t
    first = res["layers"][[p["name"] for p in res["layers"]].index(t)]
    assert first["differing"] == 1 and first["max_diff"] == 1
    calls[i] = orig
    assert verify(model, images, "numba", executor=ex)["all_exact"]


# -- the command -----------------------------------------------------------------------
def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "intq", *map(str, args)], capture_output=True,
                          text=True)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    p = tmp_path_factory.mktemp("v") / "resnet4.intq"
    assert cli_main(["compile", str(MODELS / "resnet.onnx"), "-o", str(p), "--calib",
                     str(MODELS / "digits_calib.npz"), "--bits", "4"]) == 0
    return p


def test_cli_verify_json_and_naive_plot(artifact, tmp_path):
    png = tmp_path / "drift.png"
    proc = run_cli("verify", artifact, "--inputs", MODELS / "digits_test.npz", "--images", "32",
                   "--naive", "--plot", png, "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["all_exact"] is True and res["images"] == 32 and res["first_differing"] is None
    assert all(p["exact"] and p["differing"] == 0 for p in res["layers"])
    drift = [p["naive_rel_diff"] for p in res["layers"] if "naive_rel_diff" in p]
    # W4A4 fake quantization with float rescales drifts measurably from the integer model
    assert len(drift) >= 8 and max(drift) > 1e-3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_verify_exits_1_and_names_the_first_differing_layer(artifact, monkeypatch, capsys):
    monkeypatch.setattr(arith, "rescale", lambda x, b, c: _half_to_even(x, b, c) + 1)
    code = cli_main(["verify", str(artifact), "--inputs", str(MODELS / "digits_test.npz"),
                     "--images", "8"])
    out = capsys.readouterr().out
    assert code == 1
    assert "NOT EXACT" in out and "first differing: input.q" not in out
    assert "first differing: /conv1/Conv_output_0 " in out


def test_cli_verify_user_errors(artifact, tmp_path):
    for args, frag in [(["--inputs", tmp_path / "none.npz"], "no such file"),
                       (["--inputs", MODELS / "digits_test.npz", "--plot", tmp_path / "a.png"],
                        "--naive"),
                       (["--inputs", MODELS / "digits_test.npz", "--images", "0"], "at least 1")]:
        proc = run_cli("verify", artifact, *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and frag in proc.stderr
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 3, 16, 16), np.float32))
    proc = run_cli("verify", artifact, "--inputs", tmp_path / "wrong.npz")
    assert proc.returncode == 2 and "shape" in proc.stderr
    assert not (tmp_path / "a.png").exists()
