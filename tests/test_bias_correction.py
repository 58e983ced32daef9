"""Bias correction (`QuantConfig.bias_correction`, `intq compile --bias-correction`): the
bias absorbs Delta_W E[x], the mean shift that rounding the weights adds to a layer's
output (Qualcomm white paper eq. 25-27). Checked against brute force: the input means per
tap, the exact cancellation of the shift on the calibration data, and the integer model's
mean error per channel."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from conftest import make_model
from intq.errors import IntqError
from intq.float_executor import run_float
from intq.ops.window import conv2d
from intq.pipeline import compile_model, float_graph
from intq.quant.calibrate import Calibration
from intq.quant.scheme import QuantConfig, bias_correction, quantize_weights
from intq.reference import dequantize, run_integer


def conv_model(cin, cout, k, stride, dilation, pad, groups, seed=0, linear=False):
    """x -> Conv (+ bias) [-> GlobalAveragePool -> Flatten -> Gemm]: weights drawn so that
    their rounding errors do not average out (few, large weights per channel)."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], strides=[stride, stride],
                              dilations=[dilation, dilation], pads=[pad, pad, pad + 1, pad],
                              group=groups)]
    inits = {"W": rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32),
             "B": rng.standard_normal(cout).astype(np.float32)}
    out = "c"
    if linear:
        nodes += [helper.make_node("GlobalAveragePool", ["c"], ["p"]),
                  helper.make_node("Flatten", ["p"], ["f"]),
                  helper.make_node("Gemm", ["f", "F", "G"], ["y"], transB=1)]
        inits.update(F=rng.standard_normal((3, cout)).astype(np.float32),
                     G=rng.standard_normal(3).astype(np.float32))
        out = "y"
    return make_model(nodes, [("x", [None, cin, 9, 9])], [(out, None)], inits)


def brute_force_means(x, w_shape, strides, pads, dilations):
    """Per input channel and tap, the mean over images and output positions of the input
    that tap reads (0 in the padding), by explicit loops."""
    n, c, h, wd = x.shape
    kh, kw = w_shape[2:]
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (wd + pl + pr - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    total = np.zeros((c, kh * kw))
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                for b in range(kw):
                    r, q = i * strides[0] - pt + a * dilations[0], j * strides[1] - pl + b * dilations[1]
                    if 0 <= r < h and 0 <= q < wd:
                        total[:, a * kw + b] += x[:, :, r, q].sum(axis=0)
    return total / (n * oh * ow)


geometry = st.tuples(st.sampled_from([1, 3]), st.integers(1, 2), st.integers(1, 2), st.integers(0, 2),
                     st.sampled_from(["dense", "grouped", "depthwise"]))


@settings(max_examples=20, deadline=None, derandomize=True)
@given(geometry)
def test_input_means_equal_brute_force(geo):
    k, stride, dilation, pad, kind = geo
    groups = {"dense": 1, "grouped": 2, "depthwise": 4}[kind]
    model = conv_model(4, 4, k, stride, dilation, pad, groups)
    fg = float_graph(model)
    x = np.random.default_rng(1).uniform(-1, 2, (3, 4, 9, 9)).astype(np.float32)
    conv = next(n for n in fg.nodes if n.op == "Conv")
    got = Calibration(fg, x, batch=2).input_means(conv.name)  # two batches, one ragged
    a = conv.attrs
    want = brute_force_means(x.astype(np.float64), fg.constants[conv.inputs[1]].shape, a["strides"],
                             a["pads"], a["dilations"])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["dense", "depthwise"])
@pytest.mark.parametrize("bits", [8, 4])
def test_corrected_bias_cancels_the_mean_shift_exactly(kind, bits):
    """On the calibration data, the float convolution with quantized weights and the
    corrected bias has the float layer's mean output per channel, borders included; with
    the plain bias it does not (so the test can fail)."""
    groups = 6 if kind == "depthwise" else 1
    fg = float_graph(conv_model(6, 6, 3, 1, 1, 1, groups, seed=2))
    x = np.random.default_rng(4).uniform(0, 1, (5, 6, 9, 9)).astype(np.float32)
    conv = next(n for n in fg.nodes if n.op == "Conv")
    w = fg.constants[conv.inputs[1]].astype(np.float64)
    b = fg.constants[conv.inputs[2]].astype(np.float64)
    wq, sw = quantize_weights(w, bits, "hawq")
    wdq = wq * sw[:, None, None, None]
    a = conv.attrs
    corrected = b - bias_correction(w, wq, sw, groups, Calibration(fg, x).input_means(conv.name))

    def mean_out(weights, bias):
        y = conv2d(x.astype(np.float64), weights, a["strides"], a["pads"], a["dilations"], groups)
        return (y + bias[None, :, None, None]).mean(axis=(0, 2, 3))

    want = mean_out(w, b)
    np.testing.assert_allclose(mean_out(wdq, corrected), want, rtol=0, atol=1e-9)
    assert np.abs(mean_out(wdq, b) - want).max() > 1e-4


def test_integer_model_mean_error_drops():
    """End to end through the lowering: the integer model's mean error per output channel
    on held-out images shrinks with bias correction (depthwise 3x3 at 4 bits, the case
    the white paper names); the corrected model is still integer-only and runs."""
    model = conv_model(8, 8, 3, 1, 1, 1, 8, seed=5)
    rng = np.random.default_rng(6)
    calib = rng.uniform(0, 1, (64, 8, 9, 9)).astype(np.float32)
    test = rng.uniform(0, 1, (64, 8, 9, 9)).astype(np.float32)
    errs = {}
    for bc in (False, True):
        cfg = QuantConfig(default_bits=4, keep_first_last_8=False, bias_correction=bc)
        ig, fg, _ = compile_model(model, calib, cfg)
        assert ig.metadata["config"]["bias_correction"] is bc
        got = dequantize(run_integer(ig, test)[0], ig.metadata["outputs"][ig.outputs[0]])
        errs[bc] = np.abs((got - run_float(fg, test)[0]).mean(axis=(0, 2, 3))).mean()
    assert errs[True] < 0.5 * errs[False], errs


def test_linear_correction_cancels_the_mean_shift_exactly():
    """The classifier's correction: features' means times the weights' rounding error."""
    fg = float_graph(conv_model(4, 6, 3, 1, 1, 1, 1, seed=3, linear=True))
    x = np.random.default_rng(5).uniform(0, 1, (7, 4, 9, 9)).astype(np.float32)
    lin = next(n for n in fg.nodes if n.op == "Linear")
    w = fg.constants[lin.inputs[1]].astype(np.float64)
    b = fg.constants[lin.inputs[2]].astype(np.float64)
    feats = run_float(fg, x, trace=True)[lin.inputs[0]].astype(np.float64)
    wq, sw = quantize_weights(w, 4, "hawq")
    wdq = wq * sw[:, None]
    corrected = b - bias_correction(w, wq, sw, 1, Calibration(fg, x).input_means(lin.name))
    want = (feats @ w.T + b).mean(axis=0)
    np.testing.assert_allclose((feats @ wdq.T + corrected).mean(axis=0), want, rtol=0, atol=1e-9)
    assert np.abs((feats @ wdq.T + b).mean(axis=0) - want).max() > 1e-4


def test_default_is_on_and_off_gives_the_plain_biases():
    """On by default (the README's evidence); turned off, the lowering's biases are the
    plain rounded ones."""
    model = conv_model(4, 4, 3, 1, 1, 1, 4, seed=7)
    x = np.random.default_rng(8).uniform(0, 1, (4, 4, 9, 9)).astype(np.float32)
    ig_default, fg, _ = compile_model(model, x, QuantConfig(bias_correction=False))
    ig_on, _, _ = compile_model(model, x, QuantConfig())
    assert ig_on.metadata["config"]["bias_correction"]
    assert not ig_default.metadata["config"]["bias_correction"]
    name = next(k for k in ig_default.constants if k.endswith(".bias_q"))
    conv = next(n for n in fg.nodes if n.op == "Conv")
    qx = ig_default.metadata["qparams"][next(n for n in ig_default.nodes if n.op == "IntConv").inputs[0]]
    w = fg.constants[conv.inputs[1]]
    wq, sw = quantize_weights(w, 8, "hawq")
    plain = np.floor(fg.constants[conv.inputs[2]] / (qx["scale"] * sw) + 0.5) \
        - qx["zero_point"] * wq.reshape(4, -1).astype(np.int64).sum(axis=1)
    np.testing.assert_array_equal(ig_default.constants[name], plain)
    assert not np.array_equal(ig_on.constants[name], ig_default.constants[name])


def test_ranges_without_means_refuse_bias_correction():
    """Activation ranges from elsewhere (QAT's frozen ranges) carry no input means: asking
    for bias correction with them is one clear error, not a silent no-op."""
    from intq.twin.qat import FrozenRanges

    model = conv_model(4, 4, 3, 1, 1, 1, 4)
    x = np.random.default_rng(9).uniform(0, 1, (4, 4, 9, 9)).astype(np.float32)
    fg = float_graph(model)
    cal = Calibration(fg, x)
    ranges = FrozenRanges({t: (cal.lo[t], cal.hi[t]) for t in cal.lo})
    with pytest.raises(IntqError, match="bias correction needs calibration statistics"):
        compile_model(fg, x, QuantConfig(bias_correction=True), calibration=ranges)


def test_cli_compile_bias_correction(tmp_path):
    import subprocess
    import sys

    from conftest import MODELS
    from intq.artifact import load_artifact

    out = tmp_path / "m.intq"
    r = subprocess.run([sys.executable, "-m", "intq", "compile", str(MODELS / "mobilenet.onnx"), "-o",
                        str(out), "--calib", str(MODELS / "digits_calib.npz"), "--bias-correction"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ig = load_artifact(str(out)).integer
    assert ig.metadata["config"]["bias_correction"] is True
    r = subprocess.run([sys.executable, "-m", "intq", "report", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "biases corrected" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "intq", "compile", str(MODELS / "mobilenet.onnx"), "-o",
                        str(out), "--calib", str(MODELS / "digits_calib.npz"), "--no-bias-correction"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert load_artifact(str(out)).integer.metadata["config"]["bias_correction"] is False
