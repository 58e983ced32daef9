"""Resize (and Upsample). Nearest: the index tables the frontend resolves pick the same
pixels as onnxruntime for every coordinate transform and rounding, at integer and
fractional scales, given as scales or as sizes; the gather kernel equals the reference on
every dtype. Linear: the float op computes onnxruntime's bilinear for every transform; the
fixed-point integer op rounds half-way points up, and its kernel and twin equal its
reference. FPN- and U-Net-style models with upsampling compile, verify exact and convert
by QAT."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from conftest import make_model, ort_run, rel_err
from intq.errors import IntqError
from intq.float_executor import run_float
from intq.frontend import resize as rules
from intq.ir import Graph
from intq.kernels import cpu
from intq.kernels.plan import MoveStep, Plan
from intq.kernels.fuse import run_reference
from intq.ops import infer_shapes
from intq.ops.integer import dtype_range
from intq.pipeline import float_graph

PATHS = ["portable"] + (["avx2"] if cpu.has_avx2() else []) + (["vnni"] if cpu.has_vnni() else [])
# (input H, W) -> output (H, W): enlarging and shrinking, integer and fractional ratios,
# and the length-1 cases that align_corners and pytorch_half_pixel treat apart.
SIZE_CASES = [((3, 5), (6, 10)), ((5, 7), (7, 5)), ((4, 4), (13, 3)), ((8, 6), (3, 4)),
              ((1, 3), (3, 1)), ((6, 1), (1, 6)), ((7, 9), (7, 9)), ((5, 5), (16, 11))]
SCALE_CASES = [((4, 6), (2.0, 2.0)), ((5, 7), (1.5, 0.6)), ((9, 8), (0.5, 0.34)),
               ((3, 4), (3.0, 1.7)), ((6, 6), (1.25, 2.5))]


def resize_model(in_hw, opset, *, sizes=None, scales=None, **attrs):
    consts, inputs = {}, ["x"]
    if opset >= 11:   # roi, and before opset 13 an empty tensor where scales are not given
        inputs.append("" if opset >= 13 else "roi")
        if opset < 13:
            consts["roi"] = np.zeros(0, np.float32)
    if scales is not None or opset < 13:
        consts["scales"] = np.array([] if scales is None else [1, 1, *scales], np.float32)
        inputs.append("scales")
    if sizes is not None:
        if opset >= 13 and scales is None:
            inputs.append("")
        consts["sizes"] = np.array([1, 2, *sizes], np.int64)
        inputs.append("sizes")
    op = "Upsample" if opset < 10 else "Resize"
    nodes = [helper.make_node(op, inputs, ["y"], **{"mode": "nearest", **attrs})]
    return make_model(nodes, [("x", [1, 2, *in_hw])], [("y", None)], consts, opset=opset)


def assert_same_pixels(model, in_hw):
    x = np.random.default_rng(0).standard_normal((1, 2, *in_hw)).astype(np.float32)
    want = ort_run(model, x)[0]
    got = run_float(float_graph(model), x)[0]
    assert got.shape == want.shape and np.array_equal(got, want)


@pytest.mark.parametrize("transform", rules.TRANSFORMS)
def test_nearest_picks_onnxruntimes_pixels_for_every_mode(transform):
    opset = 11 if transform == "tf_half_pixel_for_nn" else 19   # deprecated from opset 13
    for rounding in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        attrs = {"coordinate_transformation_mode": transform, "nearest_mode": rounding}
        for in_hw, out_hw in SIZE_CASES:
            assert_same_pixels(resize_model(in_hw, opset, sizes=out_hw, **attrs), in_hw)
        for in_hw, scales in SCALE_CASES:
            assert_same_pixels(resize_model(in_hw, opset, scales=scales, **attrs), in_hw)


@pytest.mark.parametrize("opset", [9, 10])
def test_nearest_before_opset_11_truncates_as_onnxruntime_does(opset):
    for in_hw, scales in SCALE_CASES:
        if opset >= 10 or min(scales) >= 1:   # Upsample only enlarges
            assert_same_pixels(resize_model(in_hw, opset, scales=scales), in_hw)


def test_float32_ties_round_as_onnxruntime_does():
    """0.49999997 + 0.5 rounds up to 1 in float32; C's roundf sends it to 0."""
    v = np.float32(0.49999997)
    assert rules.nearest_pixel(v, "round_prefer_ceil", False) == 0
    assert rules.nearest_pixel(np.float32(0.5), "round_prefer_ceil", False) == 1
    assert rules.nearest_pixel(np.float32(0.5), "round_prefer_floor", False) == 0
    assert rules.nearest_pixel(np.float32(-0.5), "round_prefer_floor", False) == -1
    assert rules.nearest_pixel(np.float32(2.5), "round_prefer_floor", False) == 2
    assert rules.nearest_pixel(np.float32(2.7), "simple", False) == 2
    assert rules.nearest_pixel(np.float32(2.2), "simple", True) == 3


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.sampled_from(["uint4", "uint8", "int8", "int16", "int32"]), st.integers(1, 3),
       st.integers(1, 20), st.integers(1, 6), st.integers(1, 6), st.integers(1, 13),
       st.integers(1, 13), st.integers(0, 2**16))
def test_resize_nearest_kernel_equals_reference(dtype, n, c, h, w, oh, ow, seed):
    rng = np.random.default_rng(seed)
    lo, hi = dtype_range(dtype)
    g = Graph("resize")
    g.add_input("x", (n, c, h, w), dtype)
    rows, cols = rng.integers(0, h, oh).tolist(), rng.integers(0, w, ow).tolist()
    g.add_node("ResizeNearest", ["x"], ["y"], {"rows": rows, "cols": cols}, name="resize")
    g.outputs = ["y"]
    infer_shapes(g)
    x = rng.integers(lo, hi + 1, (n, c, h, w))
    x.reshape(-1)[::3] = lo
    x.reshape(-1)[1::3] = hi
    (want,) = run_reference(g, {"x": x})
    # The rule, written out: out[n, c, i, j] = x[n, c, rows[i], cols[j]].
    spelled = np.array([[[[x[a, b, r, s] for s in cols] for r in rows] for b in range(c)]
                        for a in range(n)])
    assert np.array_equal(want, spelled)
    for path in PATHS:
        plan = Plan(g, path)
        assert any(isinstance(s, MoveStep) for s in plan.steps)
        (got,) = plan.run({"x": x})
        assert np.array_equal(got, want), path


def fpn_model(opset=13, **attrs):
    """Two scales joined as an FPN neck joins them: the coarse map upsampled and added."""
    rng = np.random.default_rng(5)
    w = {n: (rng.standard_normal(s) * 0.3).astype(np.float32) for n, s in
         (("W1", (8, 3, 3, 3)), ("W2", (8, 8, 3, 3)), ("W3", (8, 8, 1, 1)), ("W4", (4, 8, 3, 3)))}
    w["scales"] = np.array([1, 1, 2, 2], np.float32)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Resize", ["r2", "", "scales"], ["up"], **{"mode": "nearest", **attrs}),
             helper.make_node("Conv", ["r1", "W3"], ["lat"]),
             helper.make_node("Add", ["up", "lat"], ["sum"]),
             helper.make_node("Conv", ["sum", "W4"], ["y"], pads=[1, 1, 1, 1])]
    return make_model(nodes, [("x", [None, 3, 8, 12])], [("y", None)], w, opset=opset)


def test_model_with_upsampling_compiles_verifies_and_trains():
    import intq
    from intq.reference import run_integer
    from intq.twin.qat import QATModel, float_graph_with_batchnorms
    from intq.twin.verify import verify
    from intq.quant.scheme import QuantConfig
    from intq.validate import validate_integer_graph

    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, 3, 8, 12)).astype(np.float32)
    test = rng.standard_normal((6, 3, 8, 12)).astype(np.float32)
    model_proto = fpn_model(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    assert rel_err(run_float(float_graph(model_proto), test)[0], ort_run(model_proto, test)[0]) < 1e-5
    for bits in (8, 4):
        model = intq.compile(model_proto, calib=calib, bits=bits)
        assert "ResizeNearest" in {n.op for n in model.integer.nodes}
        validate_integer_graph(model.integer)
        want = run_integer(model.integer, test)[0]
        assert np.array_equal(model.run(test, integer=True), want)
        assert verify(model, test)["all_exact"]
    model8 = intq.compile(model_proto, calib=calib, bits=8)
    y, ref = model8.run(test), run_float(model8.float, test)[0]
    cos = (y * ref).sum() / np.sqrt((y * y).sum() * (ref * ref).sum())
    assert cos > 0.99
    fg, bns = float_graph_with_batchnorms(model_proto)
    qm = QATModel(fg, bns, QuantConfig(default_bits=8), calib)
    plain8 = intq.compile(model_proto, calib=calib, bits=8, weight_clip="max", bias_correction=False)
    assert np.array_equal(qm.convert(calib).run(test, integer=True), plain8.run(test, integer=True))


@pytest.mark.parametrize("attrs, message", [
    ({"mode": "cubic"}, r"mode 'cubic' is not supported \(nearest and linear are\)"),
    ({"mode": "linear", "antialias": 1}, "antialias is not supported"),
    ({"coordinate_transformation_mode": "tf_crop_and_resize"}, "'tf_crop_and_resize' is not supported"),
    ({"nearest_mode": "sideways"}, "nearest_mode 'sideways' is not supported"),
    ({"coordinate_transformation_mode": "half_pixel_symmetric"}, "'half_pixel_symmetric' is not supported"),
])
def test_unsupported_resize_modes_fail_in_one_line(attrs, message):
    proto = fpn_model(opset=18 if "antialias" in attrs else 13, **attrs)
    with pytest.raises(IntqError, match=message):
        float_graph(proto)


def test_resizing_the_channels_fails_in_one_line():
    model = resize_model((4, 4), 13, scales=(2.0, 2.0))
    model.graph.initializer[0].CopyFrom(helper.make_tensor("scales", 1, [4], [1, 2, 2, 2]))
    with pytest.raises(IntqError, match="only height and width may be resized"):
        float_graph(model)


@pytest.mark.parametrize("transform", [t for t in rules.TRANSFORMS if t != "tf_half_pixel_for_nn"])
def test_linear_matches_onnxruntime_for_every_transform(transform):
    for in_hw, out_hw in SIZE_CASES:
        model = resize_model(in_hw, 19, sizes=out_hw, mode="linear", coordinate_transformation_mode=transform)
        x = np.random.default_rng(1).standard_normal((1, 2, *in_hw)).astype(np.float32)
        assert rel_err(run_float(float_graph(model), x)[0], ort_run(model, x)[0]) < 1e-6
    for in_hw, scales in SCALE_CASES:
        model = resize_model(in_hw, 19, scales=scales, mode="linear", coordinate_transformation_mode=transform)
        x = np.random.default_rng(1).standard_normal((1, 2, *in_hw)).astype(np.float32)
        assert rel_err(run_float(float_graph(model), x)[0], ort_run(model, x)[0]) < 1e-6


def linear_graph(shape, dtype, attrs):
    g = Graph("resize_linear")
    g.add_input("x", shape, dtype)
    g.add_node("IntResizeLinear", ["x"], ["y"], attrs, name="resize")
    g.outputs = ["y"]
    infer_shapes(g)
    return g


def spelled_linear(x, a):
    """The rule in Python integers: floor((sum of weight products times taps + 2^(2f-1)) / 2^2f)."""
    f = a["frac_bits"]
    one = 1 << f
    out = np.zeros((*x.shape[:2], len(a["rows0"]), len(a["cols0"])), dtype=object)
    for i, (r0, r1, wy) in enumerate(zip(a["rows0"], a["rows1"], a["row_weights"])):
        for j, (c0, c1, wx) in enumerate(zip(a["cols0"], a["cols1"], a["col_weights"])):
            s = ((one - wy) * (one - wx) * x[:, :, r0, c0].astype(object) + (one - wy) * wx * x[:, :, r0, c1]
                 + wy * (one - wx) * x[:, :, r1, c0] + wy * wx * x[:, :, r1, c1])
            out[:, :, i, j] = (s + (1 << (2 * f - 1))) // (1 << (2 * f))
    return out.astype(np.int64)


def run_linear_everywhere(g, x):
    """The reference, checked against the spelled-out rule, the twin and every kernel path."""
    import torch
    from intq.twin.ops import IntResizeLinear

    (want,) = run_reference(g, {"x": x})
    assert np.array_equal(want, spelled_linear(x, g.nodes[0].attrs))
    (twin,) = IntResizeLinear(g.nodes[0], g).exact(torch.as_tensor(x))
    assert np.array_equal(twin.numpy(), want)
    for path in PATHS:
        (got,) = Plan(g, path).run({"x": x})
        assert np.array_equal(got, want), path
    return want


def test_linear_rounds_half_way_points_up():
    """Weights 1/2 and 1/2 on neighbours one step apart: every output is a half; each goes
    up (0.5 -> 1, -0.5 -> 0, -1.5 -> -1), as every rescale in intq rounds."""
    a = {"rows0": [0], "rows1": [0], "row_weights": [512], "cols0": [0, 0, 1],
         "cols1": [0, 1, 1], "col_weights": [0, 512, 1024], "frac_bits": 10}
    x = np.array([[[[0, 1]], [[-1, 0]], [[-2, -1]], [[-128, -127]], [[126, 127]]]])
    y = run_linear_everywhere(linear_graph(x.shape, "int8", a), x)
    assert y[0, :, 0, 1].tolist() == [1, 0, -1, -127, 127]
    assert np.array_equal(y[..., 0], x[..., 0]) and np.array_equal(y[..., 2], x[..., 1])


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.sampled_from(["uint4", "uint8", "int8", "int16", "int32"]), st.integers(1, 3),
       st.integers(1, 20), st.integers(1, 6), st.integers(1, 6), st.integers(1, 13),
       st.integers(1, 13), st.sampled_from(["random", "halves", "ends"]), st.integers(0, 2**16))
def test_resize_linear_kernel_equals_reference(dtype, n, c, h, w, oh, ow, weights, seed):
    rng = np.random.default_rng(seed)
    lo, hi = dtype_range(dtype)
    f = 10
    pick = {"random": lambda k: rng.integers(0, (1 << f) + 1, k),
            "halves": lambda k: np.full(k, 1 << (f - 1)),
            "ends": lambda k: rng.choice([0, 1 << f], k)}[weights]
    r0 = rng.integers(0, h, oh)
    c0 = rng.integers(0, w, ow)
    a = {"rows0": r0.tolist(), "rows1": np.minimum(r0 + 1, h - 1).tolist(), "row_weights": pick(oh).tolist(),
         "cols0": c0.tolist(), "cols1": np.minimum(c0 + 1, w - 1).tolist(), "col_weights": pick(ow).tolist(),
         "frac_bits": f}
    x = rng.integers(lo, hi + 1, (n, c, h, w))
    x.reshape(-1)[::3] = lo
    x.reshape(-1)[1::3] = hi
    y = run_linear_everywhere(linear_graph(x.shape, dtype, a), x)
    assert y.min() >= lo and y.max() <= hi


def test_fixed_point_weights_sum_exactly():
    from intq.ops.resize import resize_linear_attrs

    taps = rules.linear_taps(7, 16, np.float32(16 / 7), "half_pixel")
    a = resize_linear_attrs({"rows0": taps[0], "rows1": taps[1], "row_w0": taps[2], "row_w1": taps[3],
                             "cols0": taps[0], "cols1": taps[1], "col_w0": taps[2], "col_w1": taps[3]})
    assert all(0 <= w <= 1024 for w in a["row_weights"])
    assert max(abs(w / 1024 - b) for w, b in zip(a["row_weights"], taps[3])) <= 1 / 2048 + 1e-7


def test_model_with_bilinear_upsampling_compiles_verifies_and_trains():
    import intq
    from intq.reference import run_integer
    from intq.twin.qat import QATModel, float_graph_with_batchnorms
    from intq.twin.verify import verify
    from intq.quant.scheme import QuantConfig

    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, 3, 8, 12)).astype(np.float32)
    test = rng.standard_normal((6, 3, 8, 12)).astype(np.float32)
    proto = fpn_model(mode="linear", coordinate_transformation_mode="pytorch_half_pixel")
    assert rel_err(run_float(float_graph(proto), test)[0], ort_run(proto, test)[0]) < 1e-5
    for bits in (8, 4):
        model = intq.compile(proto, calib=calib, bits=bits)
        assert "IntResizeLinear" in {n.op for n in model.integer.nodes}
        want = run_integer(model.integer, test)[0]
        assert np.array_equal(model.run(test, integer=True), want)
        assert verify(model, test)["all_exact"]
    model8 = intq.compile(proto, calib=calib, bits=8)
    y, ref = model8.run(test), run_float(model8.float, test)[0]
    assert (y * ref).sum() / np.sqrt((y * y).sum() * (ref * ref).sum()) > 0.99
    fg, bns = float_graph_with_batchnorms(proto)
    qm = QATModel(fg, bns, QuantConfig(default_bits=8), calib)
    plain8 = intq.compile(proto, calib=calib, bits=8, weight_clip="max", bias_correction=False)
    assert np.array_equal(qm.convert(calib).run(test, integer=True), plain8.run(test, integer=True))
