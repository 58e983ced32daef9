"""Add and Sub between tensors with broadcasting, and with constants of any broadcastable
shape (a detector's anchor grid): an IntAdd with a sign per branch and an offset constant
at the output scale; Mul by such a constant (its strides): an IntMul with a constant b. Its reference equals the rule spelled out in Python integers, and
the Numba plan and the twin equal the reference; a YOLO-style box decode compiles,
runs the same on both backends, verifies exact and agrees with float."""
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from conftest import make_model, ort_run, rel_err
from intq.ir import Graph
from intq.kernels import cpu
from intq.kernels.fuse import run_reference
from intq.kernels.plan import Plan
from intq.ops import infer_shapes
from intq.ops.integer import dtype_range

PATHS = ["portable"] + (["avx2"] if cpu.has_avx2() else []) + (["vnni"] if cpu.has_vnni() else [])


def spelled_add(xs, bs, cs, zs, signs, offset, zo, lo, hi):
    """floor(s (x - z) b / 2^c + 1/2) per branch, summed with the offset, in Python ints."""
    shape = np.broadcast_shapes(*[x.shape for x in xs], np.shape(offset))
    total = np.zeros(shape, dtype=object) + np.asarray(offset, dtype=object)
    for x, b, c, z, s in zip(xs, bs, cs, zs, signs):
        v = np.broadcast_to(x, shape).astype(object)
        total = total + np.vectorize(lambda e: (s * (int(e) - z) * b + ((1 << c) >> 1)) >> c, otypes=[object])(v)
    return np.clip(total + zo, lo, hi).astype(np.int64)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.sampled_from(["uint8", "int8", "int16", "int32"]), st.sampled_from(["int8", "int16", "int32"]),
       st.sampled_from(["same", "channel", "pixel", "row"]), st.booleans(), st.booleans(),
       st.booleans(), st.integers(0, 2**16))
def test_signed_broadcast_add_equals_the_rule(in_dtype, out_dtype, broadcast, subtract, offset, ties, seed):
    rng = np.random.default_rng(seed)
    lo, hi = dtype_range(in_dtype)
    olo, ohi = dtype_range(out_dtype)
    shape = (2, 3, 4, 5)
    other = {"same": shape, "channel": (2, 3, 1, 1), "pixel": (2, 1, 4, 5), "row": (2, 3, 1, 5)}[broadcast]
    g = Graph("add")
    g.add_input("a", shape, in_dtype)
    g.add_input("b", other, in_dtype)
    b = [1, 1] if ties else [int(v) for v in rng.integers(1, 2**31, 2)]
    c = [1, 1] if ties else [int(v) for v in rng.integers(28, 36, 2)]
    zs = [int(rng.integers(lo, hi + 1)) if in_dtype != "int32" else 0 for _ in range(2)]
    signs = [1, -1] if subtract else [1, 1]
    inputs = ["a", "b", *(g.add_constant(f"b{i}", np.array([b[i]])) for i in range(2)),
              *(g.add_constant(f"c{i}", np.array([c[i]])) for i in range(2))]
    off = rng.integers(-1000, 1000, (1, 1, 4, 5)) if offset else 0
    attrs = {"n": 2, "zero_points": zs, "out_zero_point": 0 if out_dtype == "int32" else 3,
             "lo": olo, "hi": ohi, "dtype": out_dtype}
    if subtract:
        attrs["signs"] = signs
    if offset:
        attrs["offset"] = 1
        inputs.append(g.add_constant("off", off))
    g.add_node("IntAdd", inputs, ["y"], attrs, name="add")
    g.outputs = ["y"]
    infer_shapes(g)
    feeds = {"a": rng.integers(lo, hi + 1, shape), "b": rng.integers(lo, hi + 1, other)}
    feeds["a"].reshape(-1)[::2] = hi
    feeds["b"].reshape(-1)[::3] = lo
    (want,) = run_reference(g, feeds)
    assert np.array_equal(want, spelled_add([feeds["a"], feeds["b"]], b, c, zs, signs, off,
                                            attrs["out_zero_point"], olo, ohi))
    from intq.twin.ops import IntAdd

    (twin,) = IntAdd(g.nodes[0], g).exact(torch.as_tensor(feeds["a"]), torch.as_tensor(feeds["b"]))
    assert np.array_equal(twin.numpy(), want)
    for path in PATHS:
        (got,) = Plan(g, path).run(feeds)
        assert np.array_equal(got, want), path


def decode_model():
    """A YOLO-style head and box decode: distances to the four sides from a conv head,
    subtracted from and added to the anchor-point grid (a constant (1, 2, H*W)), the boxes
    concatenated with the scores; plus a gate broadcast from a pooled tensor."""
    rng = np.random.default_rng(7)
    h, w = 6, 8
    ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel()])[None].astype(np.float32)   # (1, 2, 48)
    inits = {"W1": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
             "Wd": (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32),
             "Ws": (rng.standard_normal((3, 8, 1, 1)) * 0.3).astype(np.float32),
             "grid": grid, "flat": np.array([0, 4, -1], np.int64), "flat3": np.array([0, 3, -1], np.int64),
             "split": np.array([2, 2], np.int64),
             "strides": np.where(np.arange(h * w) < 32, 8.0, 16.0).reshape(1, 1, -1).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("GlobalAveragePool", ["r1"], ["pooled"]),
             helper.make_node("Add", ["r1", "pooled"], ["gated"]),            # tensor + (N, C, 1, 1)
             helper.make_node("Conv", ["gated", "Wd"], ["dist4"]),
             helper.make_node("Relu", ["dist4"], ["dist_pos"]),
             helper.make_node("Reshape", ["dist_pos", "flat"], ["dist"]),     # (N, 4, 48)
             helper.make_node("Split", ["dist", "split"], ["lt", "rb"], axis=1),
             helper.make_node("Sub", ["grid", "lt"], ["xy1"]),                # constant - tensor
             helper.make_node("Add", ["grid", "rb"], ["xy2"]),                # constant + tensor
             helper.make_node("Sub", ["xy2", "xy1"], ["wh_cells"]),           # tensor - tensor
             helper.make_node("Mul", ["wh_cells", "strides"], ["wh"]),        # by (1, 1, H*W)
             helper.make_node("Conv", ["gated", "Ws"], ["s4"]),
             helper.make_node("Sigmoid", ["s4"], ["s4p"]),
             helper.make_node("Reshape", ["s4p", "flat3"], ["scores"]),
             helper.make_node("Concat", ["xy1", "wh", "scores"], ["y"], axis=1)]
    return make_model(nodes, [("x", [None, 3, h, w])], [("y", None)], inits)


def test_box_decode_compiles_runs_on_both_backends_and_verifies():
    import intq
    from intq.float_executor import run_float
    from intq.twin.verify import verify

    rng = np.random.default_rng(0)
    proto = decode_model()
    calib = rng.standard_normal((16, 3, 6, 8)).astype(np.float32)
    test = rng.standard_normal((6, 3, 6, 8)).astype(np.float32)
    model = intq.compile(proto, calib=calib)
    ops = [n.op for n in model.integer.nodes]
    assert ops.count("IntAdd") >= 4
    signed = [n for n in model.integer.nodes if n.op == "IntAdd" and n.attrs.get("signs")]
    offset = [n for n in model.integer.nodes if n.op == "IntAdd" and n.attrs.get("offset")]
    assert len(signed) == 2 and len(offset) == 2
    assert any(n.op == "IntMul" and n.attrs.get("b_constant") for n in model.integer.nodes)
    ref = run_float(model.float, test)[0]
    assert rel_err(ref, ort_run(proto, test)[0]) < 1e-5
    assert np.array_equal(model.run(test, integer=True), model.run(test, "reference", integer=True))
    assert verify(model, test)["all_exact"]
    y = model.run(test)
    for rows in (slice(0, 4), slice(4, 7)):   # boxes (pixels) and scores (0..1) alike
        a, b = y[:, rows].ravel(), ref[:, rows].ravel()
        assert a @ b / np.sqrt((a @ a) * (b @ b)) > 0.99


def test_mul_by_a_constant_equals_the_rule():
    from intq.twin.ops import IntMul

    rng = np.random.default_rng(5)
    g = Graph("mul")
    g.add_input("a", (2, 3, 7), "int16")
    const = g.add_constant("k", rng.integers(-2**13, 2**13, (1, 1, 7)))
    mb, mc = g.add_constant("mb", np.array([1 << 30])), g.add_constant("mc", np.array([40]))
    g.add_node("IntMul", ["a", const, mb, mc], ["y"],
               {"a_zero_point": -5, "b_zero_point": 0, "b_constant": 1, "out_zero_point": 2,
                "lo": -128, "hi": 127, "dtype": "int8"}, name="mul")
    g.outputs = ["y"]
    infer_shapes(g)
    a = rng.integers(-2**15, 2**15, (2, 3, 7))
    (want,) = run_reference(g, {"a": a})
    k = g.constants[const]
    spelled = [(int(v) + 5) * int(kk) for v, kk in zip(a.ravel(), np.broadcast_to(k, a.shape).ravel())]
    spelled = np.array([(((p << 30) + (1 << 39)) >> 40) + 2 for p in spelled]).reshape(a.shape)
    assert np.array_equal(want, np.clip(spelled, -128, 127))
    (twin,) = IntMul(g.nodes[0], g).exact(torch.as_tensor(a))
    assert np.array_equal(twin.numpy(), want)
    assert np.array_equal(Plan(g).run({"a": a})[0], want)
