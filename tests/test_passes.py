"""Each graph pass on its own: what it rewrites, what it must leave alone, and that the
graph computes the same function afterwards (float executor, before vs after)."""
import numpy as np
import pytest
from onnx import helper

from conftest import make_model
from intq.errors import IntqError
from intq.float_executor import run_float
from intq.frontend import import_onnx
from intq.passes import (canonicalize_affine, canonicalize_flatten, canonicalize_linear, constant_fold,
                         fold_affine, fold_batchnorm,
                         fold_pad, fuse_activation, remove_dead_nodes, remove_identity, run_passes)

rng = np.random.default_rng(1)


def w(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def imported(nodes, inits, out="y", shape=(2, 4, 8, 8), outputs=None):
    model = make_model(nodes, [("x", list(shape))], [(o, None) for o in (outputs or [out])], inits)
    return import_onnx(model)


def apply(graph, *passes):
    x = rng.standard_normal([2 if d is None else d for d in graph.values["x"].shape]).astype(np.float32)
    before = run_float(graph, x)
    graph = run_passes(graph, list(passes))
    after = run_float(graph, x)
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    return graph


def ops(graph):
    return [n.op for n in graph.nodes]


def bn_node(inp, out, prefix="bn"):
    return helper.make_node("BatchNormalization", [inp] + [f"{prefix}.{k}" for k in "gbmv"], [out])


def bn_params(c, prefix="bn"):
    return {f"{prefix}.g": w(c), f"{prefix}.b": w(c), f"{prefix}.m": w(c),
            f"{prefix}.v": np.abs(w(c)) + 0.1}


def test_constant_fold_evaluates_constant_subgraphs():
    # Built directly in the IR: the frontend would already have folded this in ONNX.
    from intq.ir import Graph
    from intq.ops import infer_shapes

    g = Graph()
    g.add_input("x", (None, 4, 8, 8))
    wname = g.add_constant("W", w(4, 4, 1, 1))
    g.add_node("Relu", [wname], ["Wr"])
    g.add_node("Conv", ["x", "Wr"], ["y"], {"strides": (1, 1), "pads": (0, 0, 0, 0),
                                            "dilations": (1, 1), "groups": 1})
    g.outputs = ["y"]
    infer_shapes(g)
    g = apply(g, constant_fold)
    assert ops(g) == ["Conv"] and (g.constants[g.nodes[0].inputs[1]] >= 0).all()


def test_dead_nodes_removed_and_prunes_constants():
    g = imported([helper.make_node("Conv", ["x", "W"], ["y"]), helper.make_node("Conv", ["x", "W2"], ["dead"])],
                 {"W": w(4, 4, 1, 1), "W2": w(3, 4, 1, 1)})
    g = apply(g, remove_dead_nodes)
    assert ops(g) == ["Conv"] and "W2" not in g.constants


def test_identity_and_dropout_removed_even_on_the_output():
    g = imported([helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Dropout", ["c"], ["d"]),
                  helper.make_node("Identity", ["d"], ["y"])], {"W": w(4, 4, 1, 1)})
    g = apply(g, remove_identity)
    assert ops(g) == ["Conv"] and g.outputs == ["y"] and g.nodes[0].outputs == ["y"]


@pytest.mark.parametrize("groups", [1, 4])
def test_fold_batchnorm_into_conv(groups):
    g = imported([helper.make_node("Conv", ["x", "W", "B"], ["c"], group=groups, pads=[1, 1, 1, 1]),
                  bn_node("c", "y")], {"W": w(4, 4 // groups, 3, 3), "B": w(4), **bn_params(4)})
    g = apply(g, fold_batchnorm)
    assert ops(g) == ["Conv"]


def test_fold_batchnorm_into_linear_after_canonicalisation():
    # BatchNorm1d over features exports as a BatchNormalization on the (N, C) tensor.
    g = imported([helper.make_node("Flatten", ["x"], ["f"]),
                  helper.make_node("Gemm", ["f", "W"], ["l"], transB=1), bn_node("l", "y")],
                 {"W": w(5, 256), **bn_params(5)})
    g = apply(g, canonicalize_linear, fold_batchnorm)
    assert ops(g) == ["Flatten", "Linear"]


def test_fold_batchnorm_shared_weights_not_corrupted():
    # Two convs share one weight; folding one BN must not change the other conv.
    g = imported([helper.make_node("Conv", ["x", "W"], ["c1"]), bn_node("c1", "b1"),
                  helper.make_node("Conv", ["x", "W"], ["c2"]),
                  helper.make_node("Add", ["b1", "c2"], ["y"])], {"W": w(4, 4, 1, 1), **bn_params(4)})
    g = apply(g, fold_batchnorm)
    assert ops(g) == ["Conv", "Conv", "Add"]


def test_orphan_batchnorm_becomes_a_channel_affine_that_takes_the_relu():
    # DenseNet's pre-activation BN reads a concat: no layer to fold into, so it stays a
    # ChannelAffine (lowered to IntAffine; intq has no integer BatchNorm) and the ReLU after
    # it fuses into it.
    g = imported([helper.make_node("Concat", ["x", "x"], ["c"], axis=1), bn_node("c", "b"),
                  helper.make_node("Relu", ["b"], ["y"])], bn_params(8))
    g = apply(g, fold_batchnorm)
    assert ops(g) == ["Concat", "ChannelAffine", "Relu"]
    g = apply(g, fold_affine, fuse_activation)
    assert ops(g) == ["Concat", "ChannelAffine"] and g.nodes[1].attrs["act_min"] == 0.0


def test_batchnorm_after_conv_with_two_readers_is_not_folded():
    g = imported([helper.make_node("Conv", ["x", "W"], ["c"]), bn_node("c", "b"),
                  helper.make_node("Add", ["b", "c"], ["y"])], {"W": w(4, 4, 1, 1), **bn_params(4)})
    g = apply(g, fold_batchnorm, fold_affine)
    assert ops(g) == ["Conv", "ChannelAffine", "Add"]


def test_constant_mul_add_sub_div_fold_into_the_conv():
    # Caffe2-style BN: BatchNormalization, then Mul and Add by per-channel constants.
    g = imported([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                  helper.make_node("Mul", ["c", "s"], ["m"]),
                  helper.make_node("Add", ["t", "m"], ["a"]),
                  helper.make_node("Div", ["a", "d"], ["v"]),
                  helper.make_node("Sub", ["k", "v"], ["y"])],
                 {"W": w(4, 4, 3, 3), "s": w(4, 1, 1), "t": w(1, 4, 1, 1), "d": np.float32(3.0),
                  "k": w(4, 1, 1)})
    g = apply(g, canonicalize_affine)
    assert ops(g) == ["Conv"] + ["ChannelAffine"] * 4
    g = apply(g, fold_affine)
    assert ops(g) == ["Conv"]


def test_non_channel_constants_and_tensor_products_stay():
    g = imported([helper.make_node("Mul", ["x", "p"], ["m"]),
                  helper.make_node("Mul", ["m", "x"], ["q"]),
                  helper.make_node("Div", ["one", "q"], ["y"])],
                 {"p": w(1, 1, 8, 8), "one": np.float32(1.0)})
    g = apply(g, canonicalize_affine)
    assert ops(g) == ["Mul", "Mul", "Div"]


def test_input_normalisation_stays_and_chains_merge():
    # (x - mean) / std at the input: kept as one ChannelAffine for QuantizeInput.
    g = imported([helper.make_node("Sub", ["x", "m"], ["a"]),
                  helper.make_node("Div", ["a", "s"], ["n"]),
                  helper.make_node("Conv", ["n", "W"], ["y"], pads=[1, 1, 1, 1])],
                 {"m": w(4, 1, 1), "s": np.abs(w(4, 1, 1)) + 0.5, "W": w(4, 4, 3, 3)})
    g = apply(g, canonicalize_affine, fold_affine)
    assert ops(g) == ["ChannelAffine", "Conv"]


def pad(inp, out, pads=(1, 1, 1, 1)):
    t, l, b, r = pads
    return helper.make_node("Pad", [inp, "pads"], [out]), {"pads": np.array([0, 0, t, l, 0, 0, b, r])}


def test_fold_pad_into_conv_adds_pads():
    p, init = pad("x", "p", (1, 2, 0, 1))
    g = imported([p, helper.make_node("Conv", ["p", "W"], ["y"], pads=[1, 0, 1, 0])],
                 {"W": w(4, 4, 3, 3), **init})
    g = apply(g, fold_pad)
    assert ops(g) == ["Conv"] and g.nodes[0].attrs["pads"] == (2, 2, 1, 1)


def test_fold_pad_into_avgpool_counts_the_padding():
    p, init = pad("x", "p")
    g = imported([p, helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3])], init)
    g = apply(g, fold_pad)
    assert ops(g) == ["AveragePool"] and g.nodes[0].attrs["count_include_pad"] == 1


def test_pad_not_folded_into_excluding_avgpool_with_own_pads():
    p, init = pad("x", "p")
    g = imported([p, helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1])], init)
    assert ops(apply(g, fold_pad)) == ["Pad", "AveragePool"]


def test_pad_folded_into_maxpool_only_after_relu():
    p, init = pad("r", "p")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), p,
             helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[3, 3])]
    assert ops(apply(imported(nodes, init), fold_pad)) == ["Relu", "MaxPool"]
    # Without the ReLU a zero pad can beat negative inputs: it must stay.
    p, init = pad("x", "p")
    nodes = [p, helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[3, 3])]
    assert ops(apply(imported(nodes, init), fold_pad)) == ["Pad", "MaxPool"]


@pytest.mark.parametrize("act,bounds", [("relu", (0.0, None)), ("relu6", (0.0, 6.0))])
def test_fuse_activation_into_conv(act, bounds):
    node = (helper.make_node("Relu", ["c"], ["y"]) if act == "relu"
            else helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    g = imported([helper.make_node("Conv", ["x", "W"], ["c"]), node],
                 {"W": w(4, 4, 1, 1), "lo": np.float32(0), "hi": np.float32(6)})
    g = apply(g, fuse_activation)
    assert ops(g) == ["Conv"]
    assert g.nodes[0].attrs["activation"] == act
    assert (g.nodes[0].attrs["act_min"], g.nodes[0].attrs["act_max"]) == bounds


def test_fuse_activation_into_residual_add_but_not_into_shared_output():
    g = imported([helper.make_node("Add", ["x", "x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])], {})
    assert ops(apply(g, fuse_activation)) == ["Add"]
    g = imported([helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
                  helper.make_node("Add", ["r", "c"], ["y"])], {"W": w(4, 4, 1, 1)})
    assert ops(apply(g, fuse_activation)) == ["Conv", "Relu", "Add"]


def test_relu_after_maxpool_stays():
    g = imported([helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[2, 2]),
                  helper.make_node("Relu", ["m"], ["y"])], {})
    assert ops(apply(g, fuse_activation)) == ["MaxPool", "Relu"]


def test_canonicalize_linear_gemm_and_matmul_add():
    g = imported([helper.make_node("Flatten", ["x"], ["f"]),
                  helper.make_node("Gemm", ["f", "W", "B"], ["g"], alpha=0.5, beta=3.0),
                  helper.make_node("MatMul", ["g", "W2"], ["m"]),
                  helper.make_node("Add", ["B2", "m"], ["y"])],
                 {"W": w(256, 7), "B": w(7), "W2": w(7, 3), "B2": w(3)})
    g = apply(g, canonicalize_linear)
    assert ops(g) == ["Flatten", "Linear", "Linear"]
    assert g.values[g.nodes[1].inputs[1]].shape == (7, 256)


def test_canonicalize_flatten_reshape_and_pool():
    g = imported([helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                  helper.make_node("Reshape", ["p", "s"], ["y"])], {"s": np.array([0, -1])})
    g = apply(g, canonicalize_flatten)
    assert ops(g) == ["GlobalAveragePool"] and g.nodes[0].attrs["keepdims"] == 0
    g = imported([helper.make_node("Reshape", ["x", "s"], ["y"])], {"s": np.array([2, -1])})
    g = apply(g, canonicalize_flatten)
    assert ops(g) == ["Flatten"]
    # A reshape that regroups the batch is not a flatten.
    g = imported([helper.make_node("Reshape", ["x", "s"], ["y"])], {"s": np.array([1, -1])})
    assert ops(apply(g, canonicalize_flatten)) == ["Reshape"]
