"""Channelwise ops on tensors the kernels cannot address in place, run by `StagedStep`
(gathered into a channels-inner scratch, the ordinary kernel, scattered back) with no
fallback to the reference executor: every op on 3-D and 5-D tensors, products and sums
broadcast along any axis, by constants of any broadcastable shape, softmax along any
axes, concat along any axis. Each equals the op's reference `run` element for element,
on integers at the ends of their dtypes."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from intq.ir import Graph
from intq.kernels.fuse import run_reference
from intq.kernels.plan import Plan, StagedStep
from intq.ops import infer_shapes
from intq.ops.integer import dtype_range

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)


def extreme_ints(rng, shape, lo, hi):
    """Random integers in [lo, hi], a third of them at the ends of the range."""
    v = rng.integers(lo, hi + 1, size=shape)
    ends = rng.random(shape)
    v[ends < 1 / 6] = lo
    v[ends > 5 / 6] = hi
    return v


def multipliers(rng, count, ties):
    """(b, c) of `count` channels; ties=True gives b = 1, c = 1 (every odd value a tie)."""
    if ties:
        return np.ones(count, np.int64), np.ones(count, np.int64)
    return rng.integers(0, 2**31, count), rng.integers(0, 63, count)


def softmax_table(scale, count):
    """An exp table as `lower_softmax` builds it (2^E exp(-scale d), last entry 0)."""
    e = 30 - max(1, int(np.ceil(np.log2(max(count, 2)))))
    length = int(np.ceil((e + 1) * np.log(2) / scale)) + 1
    table = np.floor(2.0**e * np.exp(-scale * np.arange(length)) + 0.5).astype(np.int64)
    table[-1] = 0
    return table


def const(g, name, value, dtype=None):
    t = g.add_constant(name, np.asarray(value))
    if dtype:
        g.values[t].dtype = dtype
    return t


def assert_plan_equals_reference(g, feeds, staged=True):
    infer_shapes(g)
    want = run_reference(g, feeds)
    plan = Plan(g)
    if staged:
        assert any(isinstance(s, StagedStep) for s in plan.steps)
    got = plan.run(feeds)
    for name, a, b in zip(g.outputs, got, want):
        assert a.shape == b.shape, name
        bad = np.argwhere(a != b)
        assert bad.size == 0, f"{name}: {len(bad)} elements differ, first at {bad[0]}"


shapes = st.one_of(st.tuples(st.integers(1, 2), st.integers(1, 6), st.integers(1, 9)),
                   st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
                             st.integers(1, 3)))
in_dtypes = st.sampled_from(["uint8", "int8", "int16"])


@SETTINGS
@given(shapes, in_dtypes, st.booleans(), st.integers(0, 2**16))
def test_unary_channelwise_ops_on_3d_and_5d_tensors(shape, dtype, ties, seed):
    """Requantize, IntAffine, IntLookup, IntLeakyRelu and IntAbs with per-channel constants
    along axis 1 of a 3-D or 5-D tensor."""
    rng = np.random.default_rng(seed)
    lo, hi = dtype_range(dtype)
    c = shape[1]
    zin = int(rng.choice([lo, hi, rng.integers(lo, hi + 1)]))
    g = Graph("unary")
    g.add_input("x", shape, dtype)
    b, cc = multipliers(rng, c, ties)
    g.add_node("Requantize", ["x", const(g, "rq.b", b), const(g, "rq.c", cc)], ["rq"],
               {"in_zero_point": zin, "out_zero_point": 5, "lo": -128, "hi": 127, "dtype": "int8"},
               name="requantize")
    b, cc = multipliers(rng, c, ties)
    g.add_node("IntAffine", ["x", const(g, "af.b", b), const(g, "af.c", cc),
                             const(g, "af.s", rng.choice([-1, 1], c)),
                             const(g, "af.z", rng.integers(-40000, 40000, c))],
               ["af"], {"in_zero_point": zin, "lo": -2**15, "hi": 2**15 - 1, "dtype": "int16"},
               name="affine")
    g.add_node("IntLookup", ["x", const(g, "lk.t", rng.integers(0, 256, hi - lo + 1), "uint8")], ["lk"],
               {"offset": lo, "dtype": "uint8"}, name="lookup")
    (bp, cp), (bn, cn) = multipliers(rng, c, ties), multipliers(rng, c, ties)
    g.add_node("IntLeakyRelu", ["x", const(g, "lr.bp", bp), const(g, "lr.cp", cp), const(g, "lr.bn", bn),
                                const(g, "lr.cn", cn), const(g, "lr.s", rng.choice([-1, 1], c))],
               ["lr"], {"in_zero_point": zin, "out_zero_point": -3, "lo": -128, "hi": 127, "dtype": "int8"},
               name="leaky")
    b, cc = multipliers(rng, c, ties)
    g.add_node("IntAbs", ["x", const(g, "ab.b", b), const(g, "ab.c", cc)], ["ab"],
               {"in_zero_point": zin, "out_zero_point": 0, "lo": 0, "hi": 255, "dtype": "uint8"}, name="abs")
    g.outputs = ["rq", "af", "lk", "lr", "ab"]
    assert_plan_equals_reference(g, {"x": extreme_ints(rng, shape, lo, hi)})


def broadcast_shape(rng, shape, drop_leading):
    """`shape` with some axes set to 1, and (drop_leading) leading axes dropped, as a
    broadcast operand of a tensor of `shape` may have."""
    s = [1 if rng.random() < 0.4 else d for d in shape]
    return tuple(s[int(rng.integers(1, len(s))):]) if drop_leading else tuple(s)


@SETTINGS
@given(st.one_of(shapes, st.tuples(st.integers(1, 2), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4))),
       st.sampled_from(["uint8", "int8", "int16"]), st.sampled_from(["uint8", "int8"]), st.booleans(),
       st.booleans(), st.integers(0, 2**16))
def test_products_broadcast_along_any_axis_and_by_constants_of_any_shape(shape, a_dtype, b_dtype, ties,
                                                                         by_constant, seed):
    rng = np.random.default_rng(seed)
    alo, ahi = dtype_range(a_dtype)
    blo, bhi = dtype_range(b_dtype)
    g = Graph("mul")
    g.add_input("a", shape, a_dtype)
    feeds = {"a": extreme_ints(rng, shape, alo, ahi)}
    if by_constant:
        bshape = broadcast_shape(rng, shape, drop_leading=True)
        b = const(g, "bconst", extreme_ints(rng, bshape, -127, 127))
        zb = 0
    else:
        bshape = (shape[0],) + broadcast_shape(rng, shape, drop_leading=False)[1:]
        g.add_input("b", bshape, b_dtype)
        feeds["b"] = extreme_ints(rng, bshape, blo, bhi)
        b, zb = "b", int(rng.choice([blo, bhi, rng.integers(blo, bhi + 1)]))
    mb, mc = multipliers(rng, 1, ties)
    attrs = {"a_zero_point": int(rng.choice([alo, ahi])), "b_zero_point": zb, "out_zero_point": 7,
             "lo": -2**15, "hi": 2**15 - 1, "dtype": "int16"}
    if by_constant:
        attrs["b_constant"] = 1
    g.add_node("IntMul", ["a", b, const(g, "mb", mb), const(g, "mc", mc)], ["y"], attrs, name="mul")
    g.outputs = ["y"]
    # An SE-style product of 4-D tensors runs in place; every other case is staged.
    assert_plan_equals_reference(g, feeds, staged=len(shape) != 4 or by_constant)


@SETTINGS
@given(shapes, st.integers(2, 3), in_dtypes, st.sampled_from(["int8", "int16", "int32"]), st.booleans(),
       st.booleans(), st.integers(0, 2**16))
def test_sums_with_signs_offsets_and_broadcast_branches(shape, branches, dtype, out_dtype, offset, ties, seed):
    rng = np.random.default_rng(seed)
    lo, hi = dtype_range(dtype)
    olo, ohi = dtype_range(out_dtype)
    g = Graph("add")
    feeds, names, bs, cs = {}, [], [], []
    for i in range(branches):
        v = shape if i == 0 else (shape[0],) + broadcast_shape(rng, shape, drop_leading=False)[1:]
        g.add_input(f"x{i}", v, dtype)
        feeds[f"x{i}"] = extreme_ints(rng, v, lo, hi)
        names.append(f"x{i}")
        b, c = multipliers(rng, v[1], ties)   # per channel of the branch's own axis 1
        b, c = (b, c) if v[1] == shape[1] else (b[:1], c[:1])
        bs.append(const(g, f"b{i}", b))
        cs.append(const(g, f"c{i}", c))
    attrs = {"n": branches, "zero_points": [int(rng.integers(lo, hi + 1)) for _ in range(branches)],
             "signs": [int(s) for s in rng.choice([-1, 1], branches)],
             "out_zero_point": 0 if out_dtype == "int32" else 3, "lo": olo, "hi": ohi, "dtype": out_dtype}
    inputs = names + bs + cs
    if offset:
        attrs["offset"] = 1
        inputs.append(const(g, "off", rng.integers(-1000, 1000, broadcast_shape(rng, shape, drop_leading=True))))
    g.add_node("IntAdd", inputs, ["y"], attrs, name="add")
    g.outputs = ["y"]
    assert_plan_equals_reference(g, feeds)


@SETTINGS
@given(st.one_of(shapes, st.tuples(st.integers(1, 2), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4))),
       in_dtypes, st.sampled_from([0.02, 0.1, 0.7]), st.data())
def test_softmax_along_any_axes(shape, dtype, scale, data):
    """Every non-empty set of non-batch axes (the DFL's bins are axis 1 of a 4-D tensor;
    a 3-D head's last axis; two axes of a 5-D tensor)."""
    rank = len(shape)
    axes = sorted(data.draw(st.sets(st.integers(1, rank - 1), min_size=1)))
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    lo, hi = dtype_range(dtype)
    g = Graph("softmax")
    g.add_input("x", shape, dtype)
    count = int(np.prod([shape[a] for a in axes]))
    neg = [a - rank for a in axes] if rng.random() < 0.5 else axes   # negative axes too
    g.add_node("IntSoftmax", ["x", const(g, "t", softmax_table(scale, count), "int32")], ["y"],
               {"axes": neg, "lo": 0, "hi": 255, "dtype": "uint8"}, name="softmax")
    g.outputs = ["y"]
    in_place = rank == 4 and axes in ([1], [1, 2, 3])
    assert_plan_equals_reference(g, {"x": extreme_ints(rng, shape, lo, hi)}, staged=not in_place)


@SETTINGS
@given(shapes, st.lists(st.integers(1, 4), min_size=1, max_size=3), in_dtypes,
       st.sampled_from(["uint8", "int8", "int16", "int32"]), st.booleans(), st.data())
def test_concat_along_any_axis_of_3d_and_5d_tensors(shape, sizes, dtype, out_dtype, ties, data):
    axis = data.draw(st.integers(1, len(shape) - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    lo, hi = dtype_range(dtype)
    olo, ohi = dtype_range(out_dtype)
    g = Graph("concat")
    feeds, names, bs, cs = {}, [], [], []
    for i, size in enumerate(sizes):
        v = list(shape)
        v[axis] = size
        g.add_input(f"x{i}", tuple(v), dtype)
        feeds[f"x{i}"] = extreme_ints(rng, v, lo, hi)
        names.append(f"x{i}")
        b, c = multipliers(rng, v[1], ties)
        bs.append(const(g, f"b{i}", b))
        cs.append(const(g, f"c{i}", c))
    k = len(sizes)
    g.add_node("IntConcat", names + bs + cs, ["y"],
               {"n": k, "zero_points": [int(rng.integers(lo, hi + 1)) for _ in range(k)],
                "axis": axis - len(shape) if rng.random() < 0.5 else axis,
                "out_zero_point": 0 if out_dtype == "int32" else int(rng.integers(olo, ohi + 1)),
                "lo": olo, "hi": ohi, "dtype": out_dtype}, name="cat")
    g.outputs = ["y"]
    assert_plan_equals_reference(g, feeds)
