"""`IntAbs` (ONNX Abs), the op added by the README's "Adding an integer op" list: its Numba
kernel equals its reference on integers at the ends of every activation dtype, and a model
with Abs compiles, verifies exact against the twin and trains with QAT."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from conftest import make_model
from intq.ir import Graph
from intq.kernels import cpu
from intq.kernels.plan import KernelStep, Plan
from intq.kernels.fuse import run_reference
from intq.ops import infer_shapes
from intq.ops.integer import dtype_range
from intq.validate import validate_integer_graph

PATHS = ["portable"] + (["avx2"] if cpu.has_avx2() else []) + (["vnni"] if cpu.has_vnni() else [])


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.sampled_from(["uint4", "uint8", "int8", "int16", "int32"]),
       st.sampled_from(["uint8", "int8", "int16", "int32"]), st.integers(1, 3), st.integers(1, 40),
       st.sampled_from(["random", "ties", "c0", "c62", "bmax"]), st.booleans(), st.integers(0, 2**16))
def test_int_abs_kernel_equals_reference(in_dtype, out_dtype, n, c, kind, per_channel, seed):
    rng = np.random.default_rng(seed)
    lo, hi = dtype_range(in_dtype)
    olo, ohi = dtype_range(out_dtype)
    count = c if per_channel else 1
    b, cc = rng.integers(0, 2**31, count), rng.integers(0, 63, count)
    if kind == "ties":
        b, cc = np.ones(count, np.int64), np.ones(count, np.int64)
    elif kind == "c0":
        cc[:] = 0
    elif kind == "c62":
        cc[:] = 62
    elif kind == "bmax":
        b[:] = 2**31 - 1
    g = Graph("abs")
    g.add_input("x", (n, c, 3, 5), in_dtype)
    bn, cn = g.add_constant("b", b.astype(np.int64)), g.add_constant("c", cc.astype(np.int64))
    zin = int(rng.choice([lo, hi, rng.integers(lo, hi + 1)]))
    zo = int(rng.integers(olo, ohi + 1)) if out_dtype != "int32" else 0
    g.add_node("IntAbs", ["x", bn, cn], ["y"], {"in_zero_point": zin, "out_zero_point": zo,
                                              "lo": olo, "hi": ohi, "dtype": out_dtype}, name="abs")
    g.outputs = ["y"]
    infer_shapes(g)
    x = rng.integers(lo, hi + 1, (n, c, 3, 5))
    x[..., 0], x[..., 1] = lo, hi
    (want,) = run_reference(g, {"x": x})
    # The rule written out in Python integers: floor(|x - z| b / 2^c + 1/2), ties up.
    bb, ccc = np.broadcast_to(b.reshape(1, -1, 1, 1), x.shape), np.broadcast_to(cc.reshape(1, -1, 1, 1), x.shape)
    exact = [(abs(int(v) - zin) * int(m) + ((1 << int(s)) >> 1)) >> int(s)
             for v, m, s in zip(x.ravel(), bb.ravel(), ccc.ravel())]
    assert np.array_equal(want, np.clip(np.array(exact, dtype=object) + zo, olo, ohi).astype(np.int64).reshape(x.shape))
    for path in PATHS:
        plan = Plan(g, path)
        assert any(isinstance(s, KernelStep) for s in plan.steps)
        (got,) = plan.run({"x": x})
        assert np.array_equal(got, want), path


def abs_model():
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    fc = rng.standard_normal((5, 8)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Abs", ["c1"], ["a"]),
             helper.make_node("Conv", ["a", "W2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "FC"], ["y"], transB=1)]
    return make_model(nodes, [("x", [None, 3, 8, 8])], [("y", None)], {"W1": w1, "W2": w2, "FC": fc})


def test_model_with_abs_compiles_verifies_and_trains(tmp_path):
    import intq
    from intq.reference import run_integer
    from intq.twin.verify import verify
    from intq.twin.qat import QATModel, float_graph_with_batchnorms
    from intq.quant.scheme import QuantConfig

    rng = np.random.default_rng(0)
    calib, test = rng.standard_normal((16, 3, 8, 8)).astype(np.float32), rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    for bits in (8, 4):
        model = intq.compile(abs_model(), calib=calib, bits=bits)
        assert "IntAbs" in {n.op for n in model.integer.nodes}
        validate_integer_graph(model.integer)
        want = run_integer(model.integer, test)[0]
        assert np.array_equal(model.run(test, integer=True), want)
        assert verify(model, test)["all_exact"]
    model8 = intq.compile(abs_model(), calib=calib, bits=8)
    logits, ref = model8.run(test), intq.float_executor.run_float(model8.float, test)[0]
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= 0.75
    fg, bns = float_graph_with_batchnorms(abs_model())
    qm = QATModel(fg, bns, QuantConfig(default_bits=8), calib)
    untrained = qm.convert(calib)
    # QAT's scheme: max clipping, no bias correction (it trains the rounding itself)
    plain8 = intq.compile(abs_model(), calib=calib, bits=8, weight_clip="max", bias_correction=False)
    assert np.array_equal(untrained.run(test, integer=True), plain8.run(test, integer=True))
