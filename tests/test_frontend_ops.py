"""Every ONNX op the frontend lists, in its opset variants, hand-built and checked
against onnxruntime before and after the whole pass pipeline."""
import numpy as np
import pytest
from onnx import helper

from conftest import make_model, ort_run, rel_err
from intq.float_executor import run_float
from intq.frontend import import_onnx
from intq.passes import run_passes

rng = np.random.default_rng(0)
X = ("x", [2, 4, 9, 9])


def w(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def conv_node(inp, out, wname, **attrs):
    return helper.make_node("Conv", [inp, wname], [out], **attrs)


def case_conv(opset, **attrs):
    cout = 6 if attrs.get("group", 1) in (1, 2) else 4
    cin = 4 // attrs.get("group", 1)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], **attrs)]
    return nodes, {"W": w(cout, cin, 3, 3), "B": w(cout)}


def conv_then(opset, node, extra=None):
    """x -> Conv(3x3, pad 1) -> node -> y, for ops that follow a conv."""
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), node]
    inits = {"W": w(4, 4, 3, 3)}
    inits.update(extra or {})
    return nodes, inits


CASES = {
    "abs": (lambda o: conv_then(o, helper.make_node("Abs", ["c"], ["y"])), [9, 13]),
    "conv_bias_pads": (lambda o: case_conv(o, pads=[1, 0, 2, 1]), [9, 13]),
    "conv_groups_stride_dilation": (lambda o: case_conv(o, group=2, strides=[2, 2], dilations=[2, 2]), [11]),
    "conv_depthwise": (lambda o: case_conv(o, group=4, pads=[1, 1, 1, 1]), [13]),
    "conv_same_upper": (lambda o: case_conv(o, auto_pad="SAME_UPPER", strides=[2, 2]), [11]),
    "conv_same_lower": (lambda o: case_conv(o, auto_pad="SAME_LOWER", strides=[2, 2]), [13]),
    "conv_valid": (lambda o: case_conv(o, auto_pad="VALID"), [13]),
    "batchnorm": (lambda o: conv_then(o, helper.make_node(
        "BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], epsilon=1e-3),
        {"g": w(4), "b": w(4), "m": w(4), "v": np.abs(w(4)) + 0.5}), [9, 15]),
    "relu": (lambda o: conv_then(o, helper.make_node("Relu", ["c"], ["y"])), [9, 13]),
    "clip_attrs": (lambda o: conv_then(o, helper.make_node("Clip", ["c"], ["y"], min=0.0, max=6.0)), [9]),
    "clip_inputs": (lambda o: conv_then(o, helper.make_node("Clip", ["c", "lo", "hi"], ["y"]),
                                        {"lo": np.float32(0), "hi": np.float32(6)}), [11, 13]),
    "clip_min_only": (lambda o: conv_then(o, helper.make_node("Clip", ["c", "lo"], ["y"]),
                                          {"lo": np.float32(-0.5)}), [13]),
    "add_residual": (lambda o: conv_then(o, helper.make_node("Add", ["c", "x"], ["y"])), [9, 14]),
    "sum3": (lambda o: conv_then(o, helper.make_node("Sum", ["c", "x", "c"], ["y"])), [13]),
    "mul_add_per_channel": (lambda o: ([helper.make_node("Conv", ["x", "W"], ["c"]),
                                        helper.make_node("Mul", ["c", "s"], ["m"]),
                                        helper.make_node("Add", ["m", "t"], ["y"])],
                                       {"W": w(4, 4, 1, 1), "s": w(4, 1, 1), "t": w(4, 1, 1)}), [9, 13]),
    "sub_div_input_norm": (lambda o: ([helper.make_node("Sub", ["x", "m"], ["a"]),
                                       helper.make_node("Div", ["a", "s"], ["n"]),
                                       conv_node("n", "y", "W")],
                                      {"m": w(1, 4, 1, 1), "s": np.abs(w(4, 1, 1)) + 0.5,
                                       "W": w(4, 4, 3, 3)}), [9, 13]),
    "mul_tensors": (lambda o: conv_then(o, helper.make_node("Mul", ["c", "x"], ["y"])), [13]),
    "sigmoid": (lambda o: conv_then(o, helper.make_node("Sigmoid", ["c"], ["y"])), [9, 13]),
    "tanh": (lambda o: conv_then(o, helper.make_node("Tanh", ["c"], ["y"])), [13]),
    "hardsigmoid": (lambda o: conv_then(o, helper.make_node("HardSigmoid", ["c"], ["y"], alpha=0.3)), [9]),
    "hardswish": (lambda o: conv_then(o, helper.make_node("HardSwish", ["c"], ["y"])), [14]),
    "leaky_relu": (lambda o: conv_then(o, helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.2)), [9]),
    "prelu": (lambda o: conv_then(o, helper.make_node("PRelu", ["c", "p"], ["y"]),
                                  {"p": w(4, 1, 1)}), [9, 16]),
    "softmax_2d": (lambda o: ([helper.make_node("Flatten", ["x"], ["f"]),
                               helper.make_node("Softmax", ["f"], ["y"], axis=1)], {}), [9, 13]),
    "softmax_4d": (lambda o: conv_then(o, helper.make_node("Softmax", ["c"], ["y"], axis=1)), [9, 13]),
    "transpose": (lambda o: conv_then(o, helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])), [9]),
    "squeeze_unsqueeze_attr": (lambda o: ([helper.make_node("Conv", ["x", "W"], ["c"]),
                                     helper.make_node("Unsqueeze", ["c"], ["u"], axes=[2]),
                                     helper.make_node("Squeeze", ["u"], ["y"], axes=[2])], {"W": w(4, 4, 1, 1)}),
                               [9, 11]),
    "squeeze_unsqueeze_input": (lambda o: ([helper.make_node("Conv", ["x", "W"], ["c"]),
                                            helper.make_node("Unsqueeze", ["c", "ax"], ["u"]),
                                            helper.make_node("Squeeze", ["u", "ax"], ["y"])],
                                           {"W": w(4, 4, 1, 1), "ax": np.array([-1])}), [13]),
    "slice_attrs": (lambda o: conv_then(o, helper.make_node("Slice", ["c"], ["y"], starts=[1], ends=[3],
                                                            axes=[1])), [9]),
    "slice_inputs": (lambda o: conv_then(o, helper.make_node("Slice", ["c", "st", "en", "ax", "sp"], ["y"]),
                                         {"st": np.array([1, 0]), "en": np.array([2**62, 7]),
                                          "ax": np.array([1, 3]), "sp": np.array([1, 2])}), [13]),
    "split_concat": (lambda o: ([helper.make_node("Conv", ["x", "W"], ["c"]),
                          helper.make_node("Split", ["c"], ["a", "b"], axis=1),
                          helper.make_node("Concat", ["b", "a"], ["y"], axis=1)], {"W": w(4, 4, 1, 1)}), [9, 13]),
    "concat": (lambda o: conv_then(o, helper.make_node("Concat", ["c", "x"], ["y"], axis=1)), [9, 13]),
    "maxpool": (lambda o: conv_then(o, helper.make_node(
        "MaxPool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])), [9, 12]),
    "maxpool_ceil_dilated": (lambda o: conv_then(o, helper.make_node(
        "MaxPool", ["c"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1,
        dilations=[2, 2])), [12]),
    "avgpool_exclude_pad": (lambda o: conv_then(o, helper.make_node(
        "AveragePool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])), [9, 13]),
    "avgpool_include_pad": (lambda o: conv_then(o, helper.make_node(
        "AveragePool", ["c"], ["y"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
        count_include_pad=1)), [13]),
    "avgpool_ceil": (lambda o: conv_then(o, helper.make_node(
        "AveragePool", ["c"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)), [13]),
    "global_avgpool": (lambda o: conv_then(o, helper.make_node("GlobalAveragePool", ["c"], ["y"])), [9]),
    "reducemean_keep": (lambda o: conv_then(o, helper.make_node(
        "ReduceMean", ["c"], ["y"], axes=[2, 3], keepdims=1)), [13]),
    "reducemean_nokeep": (lambda o: conv_then(o, helper.make_node(
        "ReduceMean", ["c"], ["y"], axes=[-2, -1], keepdims=0)), [11]),
    "reducemean_axes_input": (lambda o: conv_then(o, helper.make_node(
        "ReduceMean", ["c", "ax"], ["y"], keepdims=0), {"ax": np.array([2, 3])}), [18, 20]),
    "flatten": (lambda o: conv_then(o, helper.make_node("Flatten", ["c"], ["y"], axis=1)), [9, 13]),
    "reshape_const": (lambda o: conv_then(o, helper.make_node("Reshape", ["c", "s"], ["y"]),
                                          {"s": np.array([2, -1])}), [13]),
    "gemm": (lambda o: ([helper.make_node("Flatten", ["x"], ["f"]),
                         helper.make_node("Gemm", ["f", "W", "B"], ["y"], transB=1, alpha=0.5, beta=2.0)],
                        {"W": w(10, 324), "B": w(10)}), [9, 13]),
    "gemm_no_trans": (lambda o: ([helper.make_node("Flatten", ["x"], ["f"]),
                                  helper.make_node("Gemm", ["f", "W", "B"], ["y"])],
                                 {"W": w(324, 10), "B": w(1, 10)}), [13]),
    "matmul_add": (lambda o: ([helper.make_node("Flatten", ["x"], ["f"]),
                               helper.make_node("MatMul", ["f", "W"], ["m"]),
                               helper.make_node("Add", ["m", "B"], ["y"])],
                              {"W": w(324, 10), "B": w(10)}), [9, 13]),
    "pad_attr": (lambda o: ([helper.make_node("Pad", ["x"], ["p"], pads=[0, 0, 1, 2, 0, 0, 2, 1]),
                             conv_node("p", "y", "W")], {"W": w(4, 4, 3, 3)}), [9]),
    "pad_input": (lambda o: ([helper.make_node("Pad", ["x", "pads"], ["p"]),
                              conv_node("p", "y", "W")],
                             {"W": w(4, 4, 3, 3), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}), [11, 13]),
    "pad_computed": (lambda o: ([helper.make_node("Concat", ["pa", "pb"], ["pads"], axis=0),
                                 helper.make_node("Pad", ["x", "pads", "zero"], ["p"]),
                                 conv_node("p", "y", "W")],
                                {"W": w(4, 4, 3, 3), "pa": np.array([0, 0, 2, 1]),
                                 "pb": np.array([0, 0, 1, 2]), "zero": np.float32(0)}), [13]),
    "pad_then_avgpool": (lambda o: ([helper.make_node("Pad", ["x", "pads"], ["p"]),
                                     helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3])],
                                    {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}), [13]),
    "identity_dropout": (lambda o: ([helper.make_node("Identity", ["x"], ["i"]),
                                     helper.make_node("Dropout", ["i"], ["d"]),
                                     conv_node("d", "y", "W")], {"W": w(4, 4, 3, 3)}), [9, 13]),
    "constant_node": (lambda o: ([helper.make_node("Constant", [], ["W"], value=helper.make_tensor(
        "W", 1, [4, 4, 1, 1], w(4, 4, 1, 1).ravel())), conv_node("x", "y", "W")], {}), [9, 13]),
    # The modes tests/test_resize.py covers one by one; here the opset forms: Upsample
    # (9), Resize with scales (10, 13) and with sizes (13).
    "upsample_nearest": (lambda o: conv_then(o, helper.make_node("Upsample", ["c", "s"], ["y"]),
                                             {"s": np.array([1, 1, 2, 1.5], np.float32)}), [9]),
    "resize_nearest_scales": (lambda o: conv_then(o, helper.make_node(
        "Resize", ["c", "s"] if o < 11 else ["c", "", "s"], ["y"], mode="nearest"),
        {"s": np.array([1, 1, 2, 0.5], np.float32)}), [10, 13]),
    "resize_nearest_sizes": (lambda o: conv_then(o, helper.make_node(
        "Resize", ["c", "", "", "z"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric",
        nearest_mode="floor"), {"z": np.array([2, 4, 20, 7], np.int64)}), [13]),
    "conv_transpose": (lambda o: ([helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], strides=[2, 2],
                                                    pads=[1, 1, 1, 1], output_padding=[1, 0])],
                                  {"W": w(4, 3, 3, 3), "B": w(3)}), [11, 13]),
}

PARAMS = [(name, opset) for name, (_, opsets) in CASES.items() for opset in opsets]


def build(name, opset):
    nodes, inits = CASES[name][0](opset)
    return make_model(nodes, [X], [("y", None)], inits, opset)


@pytest.mark.parametrize("name,opset", PARAMS, ids=[f"{n}-opset{o}" for n, o in PARAMS])
def test_op_matches_onnxruntime_before_and_after_passes(name, opset):
    model = build(name, opset)
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    (ref,) = ort_run(model, x)
    graph = import_onnx(model)
    assert rel_err(run_float(graph, x)[0], ref) < 1e-5
    graph = run_passes(graph)
    y = run_float(graph, x)[0]
    assert y.shape == ref.shape
    assert rel_err(y, ref) < 1e-5
    remaining = {n.op for n in graph.nodes}
    assert not remaining & {"BatchNormalization", "Identity", "Dropout", "Gemm", "MatMul", "Relu"}


def test_every_importer_is_exercised():
    from intq.frontend import IMPORTERS

    used = set()
    for name, opset in PARAMS:
        used |= {n.op_type for n in build(name, opset).graph.node}
    assert set(IMPORTERS) <= used
