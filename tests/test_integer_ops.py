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
    conv; the affine chain becomes one IntAffine with the ReLU as its clamp."""
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
    ops = [n.op for n in ig.nodes]
    assert ops.count("IntConv") == 2 and ops.count("IntAffine") == 1
    assert cosine(got, ref) > 0.995


def test_int_affine_reference_arithmetic_and_dead_channels():
    """y = DN_c(sign_c (x - z)) + zp_c per channel; a dead channel (b = 0) is its offset."""
    from intq.dyadic import requantize_exact
    from intq.ops.integer import IntAffine

    x = rng.integers(-32768, 32768, (2, 3, 4, 4))
    b, c = np.array([1 << 30, 0, 12345]), np.array([31, 0, 20])
    sign, zps = np.array([1, 1, -1]), np.array([5, -77, 0])
    attrs = {"in_zero_point": 9, "lo": -32768, "hi": 32767}
    (got,) = IntAffine.run(attrs, x, b, c, sign, zps)
    for ch in range(3):
        want = [requantize_exact(v, b[ch], c[ch]) + zps[ch] for v in ((x[:, ch] - 9) * sign[ch]).ravel()]
        assert np.array_equal(got[:, ch].ravel(), np.clip(want, -32768, 32767))
    assert (got[:, 1] == -77).all()


def conv_act_conv(act_nodes, extra=None, opset=13):
    """x -> Conv(3x3) -> act -> Conv(1x1) -> y."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), *act_nodes,
             helper.make_node("Conv", ["a", "W2"], ["y"])]
    return make_model(nodes, [("x", [None, 3, 8, 8])], [("y", None)],
                      {"W": w(6, 3, 3, 3), "W2": w(4, 6, 1, 1), **(extra or {})}, opset)


ACTIVATIONS = {
    "sigmoid": ([helper.make_node("Sigmoid", ["c"], ["a"])], {}),
    "tanh": ([helper.make_node("Tanh", ["c"], ["a"])], {}),
    "hardsigmoid": ([helper.make_node("HardSigmoid", ["c"], ["a"], alpha=1 / 6, beta=0.5)], {}),
    "hardswish": ([helper.make_node("HardSwish", ["c"], ["a"])], {}),
    "hardswish_as_mul": ([helper.make_node("HardSigmoid", ["c"], ["h"], alpha=1 / 6, beta=0.5),
                          helper.make_node("Mul", ["c", "h"], ["a"])], {}),
    "silu": ([helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["s", "c"], ["a"])], {}),
    "leaky_relu": ([helper.make_node("LeakyRelu", ["c"], ["a"], alpha=0.1)], {}),
    "prelu": ([helper.make_node("PRelu", ["c", "p"], ["a"])],
              {"p": np.array([0.1, -0.2, 0.3, 0.0, 0.25, 1.5], np.float32).reshape(6, 1, 1)}),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("residual_bits", [16, 32])
def test_nonlinearities_run_on_integers(name, residual_bits):
    nodes, extra = ACTIVATIONS[name]
    model = conv_act_conv(nodes, extra, opset=14 if name == "hardswish" else 13)
    x = rng.uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32)
    ig, fg, _ = compile_model(model, x, QuantConfig(residual_bits=residual_bits))
    validate_integer_graph(ig)
    got = dequantize(run_integer(ig, x)[0], ig.metadata["outputs"][ig.outputs[0]])
    (ref,) = ort_run(model, x)
    ops = [n.op for n in ig.nodes]
    if name in ("leaky_relu", "prelu"):
        assert "IntLeakyRelu" in ops
    else:
        assert ops.count("IntLookup") == 1 and "IntMul" not in ops
    assert cosine(got, ref) > 0.999


def test_lookup_table_is_exact_on_every_input_integer():
    """The table holds round(f(S_in (q - z_in)) / S_out) + z_out for each of the 2^16 inputs."""
    from intq.ops.nonlinear import Swish

    model = conv_act_conv(ACTIVATIONS["silu"][0])
    x = rng.uniform(-1, 1, (8, 3, 8, 8)).astype(np.float32)
    ig, _, _ = compile_model(model, x, QuantConfig())
    node = next(n for n in ig.nodes if n.op == "IntLookup")
    qin, qout = (ig.metadata["qparams"][t] for t in (node.inputs[0], node.outputs[0]))
    table = ig.constants[node.inputs[1]].astype(np.int64)
    assert len(table) == 65536
    q = np.arange(-32768, 32768)
    real = Swish.fn({}, qin["scale"] * (q - qin["zero_point"]))
    want = np.clip(np.floor(real / qout["scale"] + 0.5) + qout["zero_point"], -32768, 32767)
    assert np.array_equal(table, want)


def se_block_model(opset=13):
    """MobileNetV3's squeeze-and-excitation: the feature map times a hard-sigmoid gate."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Conv", ["p", "F1", "B1"], ["f1"]),
             helper.make_node("Relu", ["f1"], ["r"]),
             helper.make_node("Conv", ["r", "F2", "B2"], ["f2"]),
             helper.make_node("HardSigmoid", ["f2"], ["g"], alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["c", "g"], ["a"]),
             helper.make_node("Conv", ["a", "W2"], ["y"])]
    return make_model(nodes, [("x", [None, 3, 8, 8])], [("y", None)],
                      {"W": w(8, 3, 3, 3), "F1": w(4, 8, 1, 1), "B1": w(4), "F2": w(8, 4, 1, 1),
                       "B2": w(8), "W2": w(4, 8, 1, 1)}, opset)


def test_squeeze_excitation_gate_is_an_integer_product():
    x = rng.uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32)
    model = se_block_model()
    ig, got, ref = compiled_vs_ort(model, x)
    mul = next(n for n in ig.nodes if n.op == "IntMul")
    shapes = [ig.values[t].shape for t in mul.inputs[:2]]
    assert shapes == [(None, 8, 8, 8), (None, 8, 1, 1)]
    assert cosine(got, ref) > 0.999


def test_int_mul_reference_arithmetic():
    from intq.dyadic import requantize_exact
    from intq.ops.integer import IntMul

    a = rng.integers(-32768, 32768, (3, 4, 5, 5))
    b = rng.integers(0, 256, (3, 4, 1, 1))
    attrs = {"a_zero_point": 17, "b_zero_point": 3, "out_zero_point": -5, "lo": -32768, "hi": 32767}
    (got,) = IntMul.run(attrs, a, b, np.int64(1234567), np.int64(30))
    want = np.vectorize(lambda p: requantize_exact(p, 1234567, 30))((a - 17) * (b - 3)) - 5
    assert np.array_equal(got, np.clip(want, -32768, 32767))


def test_softmax_reference_equals_exact_fractions():
    """p = min(round(256 e_i / sum e), 255) with e from the table, against Python fractions."""
    from fractions import Fraction

    from intq.ops.integer import IntSoftmax

    e_bits, s = 26, 0.003
    table = np.floor(2.0**e_bits * np.exp(-s * np.arange(8000)) + 0.5).astype(np.int64)
    table[-1] = 0
    x = rng.integers(-32768, 32768, (300, 10))
    x[:100] = rng.integers(-40, 40, (100, 10))    # near ties
    x[100:110] = 7                                # all equal
    (p,) = IntSoftmax.run({"axes": [1], "lo": 0, "hi": 255}, x, table)
    e = table[np.minimum(x.max(1, keepdims=True) - x, len(table) - 1)]
    for row_e, row_p in zip(e.tolist(), p.tolist()):
        total = sum(row_e)
        want = [min(int(Fraction(256 * v, total) + Fraction(1, 2)), 255) for v in row_e]
        assert row_p == want


def softmax_head_model(opset):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "F", "FB"], ["l"], transB=1),
             helper.make_node("Softmax", ["l"], ["y"], axis=1)]
    return make_model(nodes, [("x", [None, 3, 8, 8])], [("y", None)],
                      {"W": w(8, 3, 3, 3), "F": w(10, 8) * 3, "FB": w(10)}, opset)


@pytest.mark.parametrize("opset", [9, 13])
def test_softmax_head_outputs_uint8_probabilities(opset):
    x = rng.uniform(-1, 1, (64, 3, 8, 8)).astype(np.float32)
    model = softmax_head_model(opset)
    ig, got, ref = compiled_vs_ort(model, x)
    assert ig.nodes[-1].op == "IntSoftmax" and ig.values[ig.outputs[0]].dtype == "uint8"
    assert ig.metadata["outputs"][ig.outputs[0]]["scale"] == 1 / 256
    # Against the float softmax of the integer logits it reads: within one output step.
    env = run_integer(ig, x, trace=True)
    logits_name = ig.nodes[-1].inputs[0]
    lq = ig.metadata["qparams"][logits_name]
    logits = lq["scale"] * (env[logits_name] - lq["zero_point"])
    e = np.exp(logits - logits.max(1, keepdims=True))
    assert np.abs(got - e / e.sum(1, keepdims=True)).max() <= 1 / 256 + 1e-9
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.9


def test_channel_shuffle_split_slice_keep_quantization():
    """ShuffleNet's channel shuffle (Reshape, Transpose, Reshape), a channel Split and a
    channel Slice, then a concat: data movement on integers, no rescale."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "s5"], ["r5"]),
             helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t5", "s4"], ["sh"]),
             helper.make_node("Split", ["sh", "sp"], ["a", "b"], axis=1),
             helper.make_node("Slice", ["b", "st", "en", "ax"], ["bs"]),
             helper.make_node("Unsqueeze", ["bs", "u"], ["bu"]),
             helper.make_node("Squeeze", ["bu", "u"], ["bq"]),
             helper.make_node("Conv", ["a", "Wa"], ["ca"]),
             helper.make_node("Concat", ["ca", "bq"], ["y"], axis=1)]
    model = make_model(nodes, [("x", [2, 3, 8, 8])], [("y", None)],
                       {"W": w(8, 3, 3, 3), "s5": np.array([2, 2, 4, 8, 8]), "s4": np.array([2, 8, 8, 8]),
                        "sp": np.array([4, 4]), "st": np.array([1]), "en": np.array([3]),
                        "ax": np.array([1]), "u": np.array([2]), "Wa": w(4, 4, 1, 1)})
    x = rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    ig, got, ref = compiled_vs_ort(model, x)
    assert {"Transpose", "Split", "Slice", "Squeeze", "Unsqueeze"} <= {n.op for n in ig.nodes}
    assert cosine(got, ref) > 0.999
