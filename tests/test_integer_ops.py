"""Ops of real networks compiled to integers and checked against onnxruntime: constant
affine maps (input normalisation, BatchNorm with no conv, Mul/Add by constants),
integer-only nonlinearities, the product of two tensors, Softmax and data movement.
Each hand-built model is compiled on its own inputs; the bar is agreement with the float
reference to a few output steps."""
import numpy as np
import pytest
from onnx import helper

from conftest import make_model, ort_run
from intq.pipeline import compile_model
from intq.quant.lower import validate_integer_graph
from intq.quant.scheme import QuantConfig
from intq.reference import dequantize, run_integer

rng = np.random.default_rng(7)


def w(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def compiled_vs_ort(model, x, bits=8):
    ig, fg, _ = compile_model(model, x, QuantConfig(default_bits=bits))
    validate_integer_graph(ig)
    oq = ig.metadata["outputs"][ig.outputs[0]]
    got = dequantize(run_integer(ig, x)[0], oq)
    (ref,) = ort_run(model, x)
    return ig, got, ref


def cosine(a, b):
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def test_input_normalisation_folds_into_quantize_input():
    """(x - mean) / std per channel, then a padded conv: not foldable into the conv (the
    padding would change), so QuantizeInput absorbs it."""
    nodes = [helper.make_node("Sub", ["x", "m"], ["a"]), helper.make_node("Div", ["a", "s"], ["n"]),
             helper.make_node("Conv", ["n", "W"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("x", [None, 3, 8, 8])], [("y", None)],
                       {"m": np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1),
                        "s": np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1),
                        "W": w(4, 3, 3, 3)})
    x = rng.uniform(0, 1, (8, 3, 8, 8)).astype(np.float32)
    ig, got, ref = compiled_vs_ort(model, x)
    assert [n.op for n in ig.nodes] == ["QuantizeInput", "IntConv", "Requantize"]
    assert len(ig.nodes[0].attrs["in_scale"]) == 3
    assert cosine(got, ref) > 0.999


def test_batchnorm_after_concat_and_constant_mul_add_run_on_integers():
    """DenseNet's pre-activation unit (Caffe2 export): concat -> BN -> Mul -> Add -> ReLU ->
    conv; the affine chain becomes one depthwise 1x1 IntConv."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["c", "x"], ["k"], axis=1),
             helper.make_node("BatchNormalization", ["k", "g", "b", "mu", "v"], ["bn"]),
             helper.make_node("Mul", ["bn", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "W2"], ["y"])]
    model = make_model(nodes, [("x", [None, 3, 8, 8])], [("y", None)],
                       {"W": w(5, 3, 3, 3), "g": w(8), "b": w(8), "mu": w(8), "v": np.abs(w(8)) + 0.5,
                        "s": w(8, 1, 1), "t": w(8, 1, 1), "W2": w(4, 8, 1, 1)})
    x = rng.uniform(-1, 1, (8, 3, 8, 8)).astype(np.float32)
    ig, got, ref = compiled_vs_ort(model, x)
    convs = [n for n in ig.nodes if n.op == "IntConv"]
    assert len(convs) == 3 and convs[1].attrs["groups"] == 8
    assert cosine(got, ref) > 0.995
