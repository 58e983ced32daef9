"""Weights and calibration data as real networks have them: dead BatchNorm channels
(gamma ~ 0), pruned all-zero channels, and degenerate calibration (a constant or all-zero
tensor, a single image). Each must compile to integers that track the float model."""
import numpy as np
import pytest
from onnx import helper

from conftest import make_model
from intq.float_executor import run_float
from intq.pipeline import compile_model
from intq.quant.scheme import QuantConfig
from intq.reference import dequantize, run_integer

rng = np.random.default_rng(3)


def dead_channel_model():
    """Conv 3 -> 4 channels + BN whose channel 1 is dead (gamma 1e-8: weights ~1e-9 after
    folding, bias -1.19, as in a pretrained EfficientNet-Lite stem) and channel 2 pruned
    (gamma 0: weights exactly 0, bias 0.7)."""
    gamma = np.array([1.0, 1e-8, 0.0, 0.5], np.float32)
    beta = np.array([0.1, -1.19, 0.7, -0.2], np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"])]
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "g": gamma,
             "b": beta, "m": np.zeros(4, np.float32), "v": np.ones(4, np.float32)}
    return make_model(nodes, [("x", [None, 3, 8, 8])], [("y", None)], inits)


@pytest.mark.parametrize("bits", [8, 4])
def test_dead_and_zero_channels_output_their_bias_within_one_step(bits):
    x = rng.uniform(0, 1, (6, 3, 8, 8)).astype(np.float32)
    ig, fg, _ = compile_model(dead_channel_model(), x, QuantConfig(default_bits=bits,
                                                                  keep_first_last_8=False))
    oq = ig.metadata["outputs"][ig.outputs[0]]
    got = dequantize(run_integer(ig, x)[0], oq)
    want = run_float(fg, x)[0]
    step = oq["scale"]
    for ch in (1, 2):   # the dead and the all-zero channel: exact to one output step
        assert np.abs(got[:, ch] - want[:, ch]).max() <= step, ch
    cos = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
    assert cos > (0.999 if bits == 8 else 0.97)


def conv_relu_fc_model():
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "F", "B"], ["y"], transB=1)]
    inits = {"W": rng.standard_normal((5, 3, 3, 3)).astype(np.float32),
             "F": rng.standard_normal((4, 5)).astype(np.float32),
             "B": rng.standard_normal(4).astype(np.float32)}
    return make_model(nodes, [("x", [None, 3, 8, 8])], [("y", None)], inits)


@pytest.mark.parametrize("calib", ["zeros", "constant", "one_image"])
def test_degenerate_calibration_compiles_and_runs(calib):
    """All-zero images make every activation a constant (zero range); a constant image a
    constant per tensor; one image is the smallest calibration set. Each must compile, stay
    integer-only and reproduce the float model on the calibration images themselves."""
    x = {"zeros": np.zeros((2, 3, 8, 8)), "constant": np.full((2, 3, 8, 8), 0.5),
         "one_image": rng.uniform(0, 1, (1, 3, 8, 8))}[calib].astype(np.float32)
    ig, fg, _ = compile_model(conv_relu_fc_model(), x, QuantConfig(default_bits=8))
    oq = ig.metadata["outputs"][ig.outputs[0]]
    got = dequantize(run_integer(ig, x)[0], oq)
    want = run_float(fg, x)[0]
    assert np.abs(got - want).max() <= 0.02 * max(np.abs(want).max(), 1e-3) + oq["scale"]
