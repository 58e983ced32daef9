"""Quantization-aware training: the trainable twin quantizes exactly as `intq compile` does
(untrained, it converts to the same integer model bit for bit), its straight-through
estimators pass gradients where they should, BatchNorm statistics update and then freeze,
and a fine-tuned model converts into an artifact that verifies exact."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import intq
from conftest import MODELS
from intq.quant.scheme import QParams, QuantConfig
from intq.twin.qat import (QATModel, fake_quant_act, fake_quant_weight,
                           float_graph_with_batchnorms, train)
from intq.twin.verify import verify


@pytest.fixture(scope="module")
def calib():
    return np.load(MODELS / "digits_calib.npz")["x"]


@pytest.fixture(scope="module")
def test_set():
    d = np.load(MODELS / "digits_test.npz")
    return d["x"], d["y"]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", ["resnet", "inception", "mobilenet", "mobilenet.dynamo"])
def test_untrained_qat_model_converts_to_the_compiled_model(name, bits, calib, test_set):
    """Same quantization points, formats, weights and ranges as compile: equal integers."""
    path = MODELS / f"{name}.onnx"
    cfg = QuantConfig(default_bits=bits)
    fg, bns = float_graph_with_batchnorms(path)
    assert len(bns) >= 5  # the bundled nets keep Conv and BatchNormalization apart
    converted = QATModel(fg, bns, cfg, calib).convert(calib)
    # QAT's scheme: max clipping, no bias correction (it trains the rounding itself)
    compiled = intq.compile(path, calib, bits=bits, weight_clip="max", bias_correction=False)
    x = test_set[0][:64]
    assert np.array_equal(converted.run(x, integer=True), compiled.run(x, integer=True))
    a, b = converted.integer, compiled.integer
    assert [n.op for n in a.nodes] == [n.op for n in b.nodes]
    for na, nb in zip(a.nodes, b.nodes):
        for ta, tb in zip(na.inputs, nb.inputs):
            if ta in a.constants:
                assert np.array_equal(a.constants[ta], b.constants[tb]), (na.name, ta)


def test_qat_fake_quantizes_weights_at_w_bits_and_inputs_at_a_bits(calib, test_set, monkeypatch):
    """Every choice in one net: the overlay rounds each layer's weights at its w_bits (in
    graph order, as the compiled layers) and holds each layer's input at the compiled
    input's parameters (a_bits); untrained, it converts to the compiled integers."""
    import intq.twin.qat as qat

    path = MODELS / "resnet.onnx"
    fg, bns = float_graph_with_batchnorms(path)
    names = [n.name for n in fg.nodes if n.op in ("Conv", "Linear")]
    cycle = ["w4a8", "w4a4", "w8a8"]
    cfg = QuantConfig(bits={n: cycle[i % 3] for i, n in enumerate(names[1:-1])},
                      weight_clip="max", bias_correction=False)
    compiled = intq.compile(path, calib, config=cfg)
    layers = compiled.integer.metadata["layers"]
    assert {(l["w_bits"], l["a_bits"]) for l in layers} == {(8, 8), (4, 8), (4, 4)}
    seen, real = [], qat.fake_quant_weight
    monkeypatch.setattr(qat, "fake_quant_weight",
                        lambda w, bits, profile: seen.append(bits) or real(w, bits, profile))
    qm = QATModel(fg, bns, cfg, calib).eval()
    x = test_set[0][:64]
    with torch.no_grad():
        qm(torch.as_tensor(x))
    assert seen == [l["w_bits"] for l in layers]
    qp = compiled.integer.metadata["qparams"]
    a_bits = {l["name"]: l["a_bits"] for l in layers}
    for node in compiled.integer.nodes:
        if node.op in ("IntConv", "IntLinear"):
            got = qm.points[node.inputs[0]].to_dict()
            assert got == qp[node.inputs[0]] and got["bits"] == a_bits[node.name], node.name
            assert not got["signed"]
    monkeypatch.undo()
    converted = qm.convert(calib)
    assert np.array_equal(converted.run(x, integer=True), compiled.run(x, integer=True))


def test_qat_forward_tracks_the_integer_model(calib, test_set):
    """Before training, the fake-quant forward (eval mode, BN folded) and the compiled
    integer model give nearly the same logits."""
    fg, bns = float_graph_with_batchnorms(MODELS / "resnet.onnx")
    qm = QATModel(fg, bns, QuantConfig(default_bits=8), calib).eval()
    x = test_set[0][:64]
    with torch.no_grad():
        fake = qm(torch.as_tensor(x)).numpy()
    real = intq.compile(MODELS / "resnet.onnx", calib, bits=8).run(x)
    assert (fake.argmax(1) == real.argmax(1)).mean() >= 0.98
    assert np.abs(fake - real).max() < 0.05 * np.abs(real).max()


def test_straight_through_estimators():
    qp = QParams(4, False, 0.5, 0)  # [0, 7.5] in steps of 0.5
    v = torch.tensor([-1.0, 0.26, 3.1, 7.0, 9.0], requires_grad=True)
    out = fake_quant_act(v, qp)
    assert out.tolist() == [0.0, 0.5, 3.0, 7.0, 7.5]
    out.sum().backward()
    assert v.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # zero outside the clamp range
    # channel 0: scale 0.875 / 7 = 0.125 exactly, -0.4375 / 0.125 = -3.5 is a tie and goes up
    # to -3 (half to even would give -4); channel 1: scale 2 / 7, 1.1 -> 3.85 -> 4
    w = torch.tensor([[0.875, -0.4375, 0.125], [2.0, 1.1, -0.5]], requires_grad=True)
    wq = fake_quant_weight(w, 4, "hawq")
    assert torch.allclose(wq, torch.tensor([[0.875, -0.375, 0.125], [2.0, 2 / 7 * 4, -2 / 7 * 2]]))
    wq.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


@pytest.fixture(scope="module")
def trained(calib):
    """Two epochs of W4A4 QAT. The bundle's calibration images carry no labels, so this
    trains on the first 256 labelled test images and checks on the other 104 (a tests-only
    split; the README's run trains on the real training split)."""
    d = np.load(MODELS / "digits_test.npz")
    x, y = d["x"][:256], d["y"][:256]
    model, history = train(MODELS / "mobilenet.onnx", x, y, QuantConfig(default_bits=4), epochs=2,
                           lr=2e-4, calib=calib, freeze_bn_epoch=1, log=None)
    return model, history


def test_qat_history_and_freezing(trained):
    _, history = trained
    assert [h["bn_frozen"] for h in history] == [False, True]
    assert [h["ranges_frozen"] for h in history] == [False, True]
    assert all(np.isfinite(h["loss"]) for h in history)


def test_fine_tuned_model_verifies_exact_and_round_trips(trained, calib, test_set, tmp_path):
    model, _ = trained
    x = test_set[0][256:]
    for backend in ("reference", "numba"):
        res = verify(model, x, backend)
        assert res["all_exact"], res["first_differing"]
    assert model.info["calibration"]["method"] == "qat"
    p = tmp_path / "q.intq"
    model.save(p)
    back = intq.load(p)
    assert np.array_equal(back.run(x, integer=True), model.run(x, integer=True))
    assert back.info["qat"]["epochs"] == 2


def test_qat_changes_the_weights_it_trains(trained, calib):
    model, _ = trained
    ptq = intq.compile(MODELS / "mobilenet.onnx", calib, bits=4)
    diffs = [int((model.integer.constants[a.inputs[1]] != ptq.integer.constants[b.inputs[1]]).sum())
             for a, b in zip(model.integer.nodes, ptq.integer.nodes) if a.op == "IntConv"]
    assert sum(diffs) > 0


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "intq", *map(str, args)], capture_output=True,
                          text=True)


def test_cli_qat_user_errors(tmp_path):
    """A model that compile refuses (LRN) is refused in the same one line; MobileNetV3,
    which compile accepts, is no user error (tests/test_accept_all.py trains it)."""
    import onnx

    lrn = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_bvlc_alexnet.onnx"
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((4, 1, 16, 16), np.float32))
    np.savez(tmp_path / "t.npz", x=np.zeros((4, 1, 16, 16), np.float32), y=np.arange(4))
    cases = [(MODELS / "mobilenet.onnx", tmp_path / "nolabels.npz", "no labels"),
             (lrn, tmp_path / "t.npz", "unsupported ops: LRN ("),
             (MODELS / "mobilenet.onnx", tmp_path / "none.npz", "no such file")]
    for model, data, frag in cases:
        proc = run_cli("qat", model, "--data", data, "-o", tmp_path / "o.intq", "--epochs", "1")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and frag in proc.stderr, proc.stderr
    assert not (tmp_path / "o.intq").exists()


@pytest.mark.parametrize("name", ["resnet", "inception", "mobilenet", "mobilenetv3", "mobilenetv3.dynamo"])
def test_float_twin_equals_the_float_executor(name, calib):
    """With no overlay (what the sensitivities run, QAT's model without its fake
    quantization) the torch interpreter is the float graph: hard-swish, hard-sigmoid, SE
    products and softmax included."""
    from intq.float_executor import run_float
    from intq.twin.interpret import FloatInterpreter

    fg, _ = float_graph_with_batchnorms(MODELS / f"{name}.onnx")
    with torch.no_grad():
        got = FloatInterpreter(fg)(torch.as_tensor(calib[:64])).numpy()
    want = run_float(fg, calib[:64])[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
