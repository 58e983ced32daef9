"""Concat along any axis off the batch, as detector heads join their scales: on the height
or width of a 4-D tensor each branch is requantized into its rows or columns by the Numba
kernel; on a 3-D tensor's last axis (YOLO's anchors) each branch is staged through a
channels-inner scratch (`StagedStep`), with no reference fallback. Either equals
the reference on every dtype; a model concatenating along the width compiles and verifies."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from conftest import make_model, ort_run, rel_err
from intq.ir import Graph
from intq.kernels import cpu
from intq.kernels.fuse import run_reference
from intq.kernels.plan import ConcatStep, Plan
from intq.ops import infer_shapes
from intq.ops.integer import dtype_range

PATHS = ["portable"] + (["avx2"] if cpu.has_avx2() else []) + (["vnni"] if cpu.has_vnni() else [])


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.sampled_from([2, 3, -1, -2]), st.sampled_from(["uint8", "int8", "int16"]),
       st.sampled_from(["uint8", "int8", "int16", "int32"]), st.integers(1, 3), st.integers(1, 9),
       st.lists(st.integers(1, 5), min_size=1, max_size=3), st.integers(0, 2**16))
def test_concat_off_channels_equals_reference(axis, in_dtype, out_dtype, n, c, sizes, seed):
    rng = np.random.default_rng(seed)
    lo, hi = dtype_range(in_dtype)
    olo, ohi = dtype_range(out_dtype)
    g = Graph("concat")
    feeds, names = {}, []
    for i, size in enumerate(sizes):
        shape = [n, c, 3, 4]
        shape[axis % 4] = size
        g.add_input(f"x{i}", tuple(shape), in_dtype)
        feeds[f"x{i}"] = rng.integers(lo, hi + 1, shape)
        names.append(f"x{i}")
    k = len(sizes)
    bs = [g.add_constant(f"b{i}", rng.integers(1, 2**31, 1)) for i in range(k)]
    cs = [g.add_constant(f"c{i}", rng.integers(28, 34, 1)) for i in range(k)]
    g.add_node("IntConcat", names + bs + cs, ["y"],
               {"n": k, "zero_points": [int(rng.integers(lo, hi + 1)) for _ in range(k)], "axis": axis,
                "out_zero_point": 0 if out_dtype == "int32" else int(rng.integers(olo, ohi + 1)),
                "lo": olo, "hi": ohi, "dtype": out_dtype}, name="cat")
    g.outputs = ["y"]
    infer_shapes(g)
    (want,) = run_reference(g, feeds)
    for path in PATHS:
        plan = Plan(g, path)
        assert any(isinstance(s, ConcatStep) for s in plan.steps)
        (got,) = plan.run(feeds)
        assert np.array_equal(got, want), path


def test_concat_on_a_3d_tensors_last_axis_is_staged():
    rng = np.random.default_rng(0)
    g = Graph("concat3d")
    for i, length in enumerate((6, 3)):
        g.add_input(f"x{i}", (2, 4, length), "int8")
    bs = [g.add_constant(f"b{i}", np.array([1 << 30])) for i in range(2)]
    cs = [g.add_constant(f"c{i}", np.array([30 + i])) for i in range(2)]
    g.add_node("IntConcat", ["x0", "x1", *bs, *cs], ["y"],
               {"n": 2, "zero_points": [3, -2], "axis": 2, "out_zero_point": 1, "lo": -128, "hi": 127,
                "dtype": "int8"}, name="cat")
    g.outputs = ["y"]
    infer_shapes(g)
    feeds = {"x0": rng.integers(-128, 128, (2, 4, 6)), "x1": rng.integers(-128, 128, (2, 4, 3))}
    (want,) = run_reference(g, feeds)
    plan = Plan(g)
    assert [type(s).__name__ for s in plan.steps] == ["FeedStep", "FeedStep", "StagedStep"]
    assert np.array_equal(plan.run(feeds)[0], want)


def test_model_concatenating_along_the_width_compiles_and_verifies():
    import intq
    from intq.float_executor import run_float
    from intq.twin.verify import verify

    rng = np.random.default_rng(3)
    w = {n: (rng.standard_normal(s) * 0.3).astype(np.float32) for n, s in
         (("W1", (6, 3, 3, 3)), ("W2", (6, 3, 3, 3)), ("W3", (4, 6, 3, 3)))}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "W2"], ["b"], pads=[1, 1, 1, 1], strides=[1, 2]),
             helper.make_node("Concat", ["a", "b"], ["ab"], axis=3),
             helper.make_node("Relu", ["ab"], ["r"]),
             helper.make_node("Conv", ["r", "W3"], ["y"], pads=[1, 1, 1, 1])]
    proto = make_model(nodes, [("x", [None, 3, 6, 8])], [("y", None)], w)
    calib = rng.standard_normal((16, 3, 6, 8)).astype(np.float32)
    test = rng.standard_normal((4, 3, 6, 8)).astype(np.float32)
    model = intq.compile(proto, calib=calib)
    assert rel_err(run_float(model.float, test)[0], ort_run(proto, test)[0]) < 1e-5
    assert np.array_equal(model.run(test, integer=True), model.run(test, "reference", integer=True))
    assert verify(model, test)["all_exact"]
