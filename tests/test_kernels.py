"""The Numba backend equals the numpy reference executor, element for element.

Small integer graphs are built by hand so that every value can be pushed to its extreme:
the input goes through `QuantizeInput` with scale 1, so the float images given *are* the
integers the kernels see. Each graph runs through the execution plan on both kernel paths
(VNNI where the CPU has it, and the portable one) and through `run_integer`.
"""
from __future__ import annotations

import numpy as np
import pytest
from numba import njit
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from intq.ir import Graph
from intq.kernels import cpu
from intq.kernels.simd import (vepi_raw_rows, vepi_requant_rows, vepi_requant_split_rows, vepi_residual_rows,
                               vepi_residual_split_rows, vload, vrows, vsplit_rows, vwiden)
from intq.kernels.plan import Plan
from intq.kernels.simd_avx2 import dot4_wide, ybroadcast4, yload, ystore, yzero
from intq.ops import infer_shapes
from intq.ops.integer import dtype_range
from intq.ops.window import output_size
from intq.reference import run_integer

PATHS = ["portable"] + (["avx2"] if cpu.has_avx2() else []) + (["vnni"] if cpu.has_vnni() else []) + (["amx"] if cpu.has_amx() else [])
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
INT32_MAX = 2**31 - 1
# The vector epilogue (`simd.vepi_*`) is written in plain LLVM vectors of 16 lanes: with
# AVX-512 they are zmm registers, on an AVX2-only CPU LLVM splits them into ymm halves
# (and the AVX2 kernel runs it there), so its tests run on both.
VECTOR_EPILOGUE = pytest.mark.skipif(not (cpu.has_vnni() or cpu.has_avx2()), reason="no AVX2 or AVX-512 here")


def check(graph: Graph, x: np.ndarray, paths=PATHS):
    """Every output of the plan equals the reference's, for each kernel path."""
    infer_shapes(graph)
    want = run_integer(graph, x)
    for path in paths:
        got = Plan(graph, path).run(x)
        for g, w in zip(got, want):
            assert g.dtype == np.int64 and g.shape == w.shape, path
            bad = np.argwhere(g != w)
            assert bad.size == 0, f"{path}: {len(bad)} elements differ, first at {bad[0]}: " \
                                  f"{g[tuple(bad[0])]} != {w[tuple(bad[0])]}"


def quantized_input(g: Graph, shape, dtype="uint8"):
    """Graph input x and its integer twin 'xq' (scale 1: the floats fed are the integers)."""
    lo, hi = dtype_range(dtype)
    g.add_input("x", shape, "float32")
    g.add_node("QuantizeInput", ["x"], ["xq"], {"scale": 1.0, "zero_point": 0, "lo": lo, "hi": hi,
                                                "dtype": dtype}, name="quantize_input")
    return "xq"


def extreme_ints(rng, shape, lo, hi):
    """Random integers in [lo, hi], a third of them at the ends of the range."""
    v = rng.integers(lo, hi + 1, size=shape)
    ends = rng.random(shape)
    v[ends < 1 / 6] = lo
    v[ends > 5 / 6] = hi
    return v


def multipliers(rng, count, ties=False):
    """Per-channel (b, c): b < 2**31, c <= 62; ties=True gives b = 1, c = 1 (x.5 cases)."""
    if ties:
        return np.ones(count, np.int64), np.ones(count, np.int64)
    return (rng.integers(0, 2**31, count), rng.integers(0, 63, count))


def add_requantize(g, src, dst, b, c, zin, dtype, zo=0, lo=None, hi=None):
    dlo, dhi = dtype_range(dtype)
    bn, cn = g.add_constant(f"{dst}.b", np.asarray(b, np.int64)), g.add_constant(f"{dst}.c", np.asarray(c, np.int64))
    g.add_node("Requantize", [src, bn, cn], [dst], {
        "in_zero_point": zin, "out_zero_point": zo, "lo": dlo if lo is None else lo,
        "hi": dhi if hi is None else hi, "dtype": dtype}, name=f"{dst}.requant")


def add_conv(g, rng, xq, wq, bias, bits, stride, pads, dil, groups):
    """IntConv 'acc' of xq by the `bits`-bit weights wq and INT32 bias, with an input zero
    point at or between the ends of the activation range."""
    xlo, xhi = dtype_range(f"uint{bits}")
    wn = g.add_constant("w", wq.astype(np.int8))
    g.values[wn].dtype = f"int{bits}"
    bn = g.add_constant("bias", bias.astype(np.int32))
    g.add_node("IntConv", [xq, wn, bn], ["acc"], {
        "x_zero_point": zero_point(rng, xlo, xhi), "strides": [stride, stride], "pads": list(pads),
        "dilations": [dil, dil], "groups": groups}, name="conv")


conv_cases = st.fixed_dictionaries({
    "n": st.integers(1, 3), "c": st.integers(1, 20), "h": st.integers(1, 11), "w": st.integers(1, 11),
    "m": st.integers(1, 80), "k": st.sampled_from([1, 2, 3, 5]), "stride": st.integers(1, 3),
    "dil": st.integers(1, 2), "pads": st.tuples(*[st.integers(0, 2)] * 4),
    "group_kind": st.sampled_from(["dense", "dense", "depthwise", "grouped"]),
    "bits": st.sampled_from([4, 8]), "ties": st.booleans(), "seed": st.integers(0, 2**16),
    "out": st.sampled_from(["uint8", "int8", "int16", "uint16", "int32", "raw"]),
    "per_tensor": st.booleans(),
})


def zero_point(rng, lo, hi):
    """A zero point in [lo, hi], at one of the limits half of the time."""
    return int(extreme_ints(rng, (), lo, hi)) if rng.random() < 0.5 else int(rng.choice([lo, hi]))


@SETTINGS
@given(conv_cases)
def test_conv_equals_reference(case):
    rng = np.random.default_rng(case["seed"])
    n, c, h, w, k, s, d = case["n"], case["c"], case["h"], case["w"], case["k"], case["stride"], case["dil"]
    pt, pl, pb, pr = case["pads"]
    assume(output_size(h, k, s, d, pt, pb) if (h + pt + pb - (k - 1) * d - 1) >= 0 else False)
    assume((w + pl + pr - (k - 1) * d - 1) >= 0)
    groups = {"dense": 1, "depthwise": c, "grouped": next((q for q in (2, 3) if c % q == 0 and c > q), 1)}[case["group_kind"]]
    m = c if groups == c else -(-case["m"] // groups) * groups
    bits = case["bits"]
    xlo, xhi = dtype_range(f"uint{bits}")
    wlo, whi = (-7, 7) if bits == 4 else (-128, 127)
    g = Graph("conv")
    xq = quantized_input(g, (n, c, h, w), f"uint{bits}")
    wq = extreme_ints(rng, (m, c // groups, k, k), wlo, whi)
    bound = int(np.abs(wq).reshape(m, -1).sum(1).max()) * xhi
    bias = rng.integers(-(INT32_MAX - bound), INT32_MAX - bound + 1, m)
    add_conv(g, rng, xq, wq, bias, bits, s, (pt, pl, pb, pr), d, groups)
    if case["out"] == "raw":
        g.outputs = ["acc"]
    else:
        b, cc = multipliers(rng, 1 if case["per_tensor"] else m, case["ties"])
        lo, hi = dtype_range(case["out"])
        zo = zero_point(rng, lo, hi) if case["out"] != "int32" else 0
        add_requantize(g, "acc", "y", b, cc, 0, case["out"], zo)
        g.outputs = ["y"]
    check(g, extreme_ints(rng, (n, c, h, w), xlo, xhi).astype(np.float32))


# Each epilogue intrinsic with its form flag as a literal (True, False) and as a run-time
# value: a kernel passes either, and the intrinsic emits one form or branches between both.
@njit  # not cached: a cache here would not see edits to kernels/simd.py
def _vector_requant(acc, t32, t64, out, zo, lo, hi, nl, narrow, literal):
    a, rows = vload(acc, 0), vrows(t32, t64, 0)
    if not literal:
        vepi_requant_rows(a, rows, out, 0, zo, lo, hi, nl, narrow)
    elif narrow:
        vepi_requant_rows(a, rows, out, 0, zo, lo, hi, nl, True)
    else:
        vepi_requant_rows(a, rows, out, 0, zo, lo, hi, nl, False)


@njit
def _vector_residual(acc, t32, t64, res, rt32, rt64, out, zo, lo, hi, nl, narrow, literal):
    a, rows, r, rrows = vload(acc, 0), vrows(t32, t64, 0), vwiden(res, 0, nl), vrows(rt32, rt64, 0)
    if not literal:
        vepi_residual_rows(a, rows, r, rrows, out, 0, zo, lo, hi, nl, narrow)
    elif narrow:
        vepi_residual_rows(a, rows, r, rrows, out, 0, zo, lo, hi, nl, True)
    else:
        vepi_residual_rows(a, rows, r, rrows, out, 0, zo, lo, hi, nl, False)


@njit
def _vector_raw(acc, t32, t64, out, nl):
    vepi_raw_rows(vload(acc, 0), vrows(t32, t64, 0), out, 0, nl)


@VECTOR_EPILOGUE
@SETTINGS
@given(st.integers(0, 2**16), st.sampled_from(["uint8", "int8", "int16", "uint16", "int32"]),
       st.sampled_from(["random", "ties", "c0", "c62", "bmax", "narrow", "narrow-edge"]),
       st.sampled_from(["uint8", "int16", "int32"]))
def test_vector_epilogue_equals_dn(seed, out_dtype, kind, res_dtype):
    """The zmm epilogue (`simd.vepi_requant_rows`, `vepi_residual_rows`, `vepi_raw_rows`) against
    `dyadic.requantize`,
    the rule's definition: 16 channels with their own multipliers, accumulators and biases
    at the ends of INT32 (their sum fits, as the validator guarantees), ties (b = 1,
    c = 1 on odd values, negative ones included), c = 0 and c = 62, b = 2^31 - 1,
    a residual operand of 8, 16 or 32 bits (an accumulator, zero point 0); the last
    group of a layer masked to its first nl lanes, the others left as they were; the
    narrow int32 form on shifts from 32 to 62, 33 to 62 in both tables of the residual
    add ("narrow-edge": b = 2^31 - 1 with c = 32, and c = 33 in both branches of the
    residual add, the largest results each can meet)."""
    from intq.dyadic import requantize
    from intq.kernels.epilogue import dn_table, vector_tables

    rng = np.random.default_rng(seed)
    nl = int(rng.integers(1, 17))
    acc = extreme_ints(rng, 16, -2**31, 2**31 - 1)
    bias = np.clip(extreme_ints(rng, 16, -2**31, 2**31 - 1), -2**31 - acc, 2**31 - 1 - acc)
    b, c = multipliers(rng, 16, ties=kind == "ties")
    if kind == "c0":
        c[:] = 0
    elif kind == "c62":
        c[:] = 62
    elif kind == "bmax":
        b[:] = 2**31 - 1
    elif kind == "narrow":
        c = rng.integers(32, 63, 16)
    elif kind == "narrow-edge":
        b[:], c[:] = 2**31 - 1, 32
    narrow = kind.startswith("narrow")
    tables = lambda b, c, bias=None, z=None: vector_tables(dn_table(b, c, 16, 16, bias),  # noqa: E731
                                                           None if z is None else -z, narrow=narrow)
    lo, hi = dtype_range(out_dtype)
    zo = zero_point(rng, lo, hi) if out_dtype != "int32" else 0
    sentinel = rng.integers(lo, hi, 16, endpoint=True).astype(out_dtype)
    want = requantize(acc + bias, b, c, lo, hi, zo)
    for literal in (True, False):
        out = sentinel.copy()
        _vector_requant(acc.astype(np.int32), *tables(b, c, bias), out, zo, lo, hi, nl, narrow, literal)
        assert np.array_equal(out[:nl].astype(np.int64), want[:nl]), (literal, out, want)
        assert np.array_equal(out[nl:], sentinel[nl:])
    if out_dtype == "int32":
        raw = sentinel.copy()
        _vector_raw(acc.astype(np.int32), *vector_tables(dn_table(b, c, 16, 16, bias)), raw, nl)
        assert np.array_equal(raw[:nl].astype(np.int64), (acc + bias)[:nl])
        assert np.array_equal(raw[nl:], sentinel[nl:])

    rlo, rhi = dtype_range(res_dtype)
    r = extreme_ints(rng, 16, rlo, rhi)
    zr = zero_point(rng, rlo, rhi) if res_dtype != "int32" else 0
    rb, rc = multipliers(rng, 16, ties=kind == "ties")
    if narrow:   # the residual add's narrow form needs c >= 33 in both tables
        c = np.maximum(c, 33)
        rb, rc = (b, c) if kind == "narrow-edge" else (rb, rng.integers(33, 63, 16))
    total = requantize(acc + bias, b, c, -2**62, 2**62) + requantize(r - zr, rb, rc, -2**62, 2**62)
    for literal in (True, False):
        out = sentinel.copy()
        _vector_residual(acc.astype(np.int32), *tables(b, c, bias), r.astype(res_dtype), *tables(rb, rc, z=zr),
                         out, zo, lo, hi, nl, narrow, literal)
        assert np.array_equal(out[:nl].astype(np.int64), np.clip(total + zo, lo, hi)[:nl]), literal
        assert np.array_equal(out[nl:], sentinel[nl:])


@njit
def _vector_requant_split(x, st_, out, zo, lo, hi, nl):
    vepi_requant_split_rows(vwiden(x, 0, nl), vsplit_rows(st_, 0), out, 0, zo, lo, hi, nl)


@njit
def _vector_residual_split(acc, t32, t64, res, st_, out, zo, lo, hi, m, nl):
    vepi_residual_split_rows(vload(acc, 0), vrows(t32, t64, 0), vwiden(res, 0, nl), vsplit_rows(st_, 0), out, 0,
                             zo, lo, hi, m, nl)


@VECTOR_EPILOGUE
@SETTINGS
@given(st.integers(0, 2**16), st.sampled_from(["uint8", "uint16"]),
       st.sampled_from(["uint8", "int8", "int16", "uint16", "int32"]),
       st.sampled_from(["random", "edges", "ties", "bmax"]))
def test_split_epilogue_equals_dn(seed, x_dtype, out_dtype, kind):
    """The split form (`simd.vepi_requant_split_rows`, `vepi_residual_split_rows`: DN of an unsigned
    16-bit operand with b split at bit 16, in int32 lanes) against `dyadic.requantize`:
    operands at 0 and at their largest value, b = 2^31 - 1, shifts at the form's ends
    (17, the smallest it takes; 47, the largest it computes; 48 and 62, where DN is 0),
    ties (b = 2^k, c = k + 17: x = 2^15 lands on a half), the last group masked."""
    from intq.dyadic import requantize
    from intq.kernels.epilogue import dn_table, split_bound, split_table, vector_tables

    rng = np.random.default_rng(seed)
    nl = int(rng.integers(1, 17))
    xlo, xhi = dtype_range(x_dtype)
    x = extreme_ints(rng, 16, xlo, xhi)
    b, c = rng.integers(0, 2**31, 16), rng.integers(17, 63, 16)
    if kind == "edges":
        c = rng.choice([17, 18, 47, 48, 62], 16)
    elif kind == "ties":
        k = rng.integers(0, 15, 16)
        b, c = 2 ** k, k + 17
        x[::2] = 2**15 if x_dtype == "uint16" else 2**7
    elif kind == "bmax":
        b[:] = 2**31 - 1
    lo, hi = dtype_range(out_dtype)
    zo = zero_point(rng, lo, hi) if out_dtype != "int32" else 0
    table = dn_table(b, c, 16, 16)
    sentinel = rng.integers(lo, hi, 16, endpoint=True).astype(out_dtype)
    out = sentinel.copy()
    _vector_requant_split(x.astype(x_dtype), split_table(table), out, zo, lo, hi, nl)
    want = requantize(x, b, c, lo, hi, zo)
    assert np.array_equal(out[:nl].astype(np.int64), want[:nl]), (out, want)
    assert np.array_equal(out[nl:], sentinel[nl:])

    # the residual add: an INT32 accumulator (int64 form) plus the split operand
    acc = extreme_ints(rng, 16, -2**31, 2**31 - 1)
    bias = np.clip(extreme_ints(rng, 16, -2**31, 2**31 - 1), -2**31 - acc, 2**31 - 1 - acc)
    ab, ac = multipliers(rng, 16)
    m = split_bound(table, 16, x_dtype)
    if out_dtype == "int32":  # the plan takes the form only where lo - m and hi + m fit int32
        lo, hi = lo + m, hi - m
    out = sentinel.copy()
    _vector_residual_split(acc.astype(np.int32), *vector_tables(dn_table(ab, ac, 16, 16, bias)),
                           x.astype(x_dtype), split_table(table), out, zo, lo, hi, m, nl)
    total = requantize(acc + bias, ab, ac, -2**62, 2**62) + requantize(x, b, c, -2**62, 2**62)
    assert np.all(requantize(x, b, c, -2**62, 2**62) <= m)
    assert np.array_equal(out[:nl].astype(np.int64), np.clip(total + zo, lo, hi)[:nl])
    assert np.array_equal(out[nl:], sentinel[nl:])


depthwise_cases = st.fixed_dictionaries({
    "n": st.integers(1, 2), "c": st.integers(2, 40), "h": st.integers(1, 9), "w": st.integers(1, 9),
    "kh": st.integers(1, 5), "kw": st.integers(1, 5), "stride": st.integers(1, 2), "dil": st.integers(1, 2),
    "pads": st.tuples(*[st.integers(0, 2)] * 4), "bits": st.sampled_from([4, 8]),
    "mult": st.sampled_from(["fit", "fit", "random", "ties", "narrow", "narrow-edge"]), "per_tensor": st.booleans(),
    "out": st.sampled_from(["uint8", "int8", "int16", "uint16"]), "seed": st.integers(0, 2**16),
})


# the row depthwise kernels: four taps per vpdpbusd with VNNI, int32 products on AVX2
ROW_DEPTHWISE = {"vnni": "dw_dot4", "avx2": "dw_rows"}
ROW_DEPTHWISE_PATHS = [p for p in ROW_DEPTHWISE if p in PATHS]


@pytest.mark.skipif(not ROW_DEPTHWISE_PATHS, reason="no AVX2 or AVX-512 VNNI here")
@settings(SETTINGS, max_examples=80)  # cheap cases, one compiled kernel: more of them
@given(depthwise_cases)
def test_depthwise_rows_equal_reference(case):
    """The row depthwise kernels (`conv_vnni.conv_depthwise_dot4`, four taps per
    vpdpbusd; `conv_avx2.conv_depthwise_rows`) equal the reference: every remainder of
    taps over 4 (kernels 1x1 to 5x5, rectangular), channel counts that leave a ragged last
    group, strides, dilations, asymmetric pads, weights at -128 and 127 and inputs at 0
    and 255, both DN forms (narrow: shifts of 32 and more; "narrow-edge": c = 32 with
    b = 2^31 - 1), ties, and every output width they take. The plan must pick the kernel
    on each path, or the test would check another."""
    rng = np.random.default_rng(case["seed"])
    n, c, h, w, kh, kw = case["n"], case["c"], case["h"], case["w"], case["kh"], case["kw"]
    s, d = case["stride"], case["dil"]
    pt, pl, pb, pr = case["pads"]
    assume(h + pt + pb - (kh - 1) * d - 1 >= 0 and w + pl + pr - (kw - 1) * d - 1 >= 0)
    bits = case["bits"]
    xlo, xhi = dtype_range(f"uint{bits}")
    wlo, whi = (-7, 7) if bits == 4 else (-128, 127)
    g = Graph("depthwise")
    xq = quantized_input(g, (n, c, h, w), f"uint{bits}")
    wq = extreme_ints(rng, (c, 1, kh, kw), wlo, whi)
    bound = int(np.abs(wq).reshape(c, -1).sum(1).max()) * xhi
    fit = case["mult"] == "fit"  # a small bias and a scale that maps the sums onto the output range:
    span = bound if fit else INT32_MAX - bound  # few outputs clamp, so a wrong tap shows
    bias = rng.integers(-span, span + 1, c)
    add_conv(g, rng, xq, wq, bias, bits, s, (pt, pl, pb, pr), d, c)
    count = 1 if case["per_tensor"] else c
    lo, hi = dtype_range(case["out"])
    b, cc = multipliers(rng, count, case["mult"] == "ties")
    if fit:
        cc = rng.integers(33, 45, count)
        b = np.clip(np.round((hi - lo) / (4 * max(bound, 1)) * 2.0 ** cc), 1, 2**31 - 1).astype(np.int64)
    elif case["mult"] == "narrow":
        cc = rng.integers(32, 63, count)
    elif case["mult"] == "narrow-edge":
        b, cc = np.full(count, 2**31 - 1), np.full(count, 32)
    add_requantize(g, "acc", "y", b, cc, 0, case["out"], zero_point(rng, lo, hi))
    g.outputs = ["y"]
    infer_shapes(g)
    for path in ROW_DEPTHWISE_PATHS:
        plan = Plan(g, path)
        assert [getattr(st_, ROW_DEPTHWISE[path]) for st_ in plan.steps
                if getattr(st_, "kind", None) == "depthwise"] == [True]
    check(g, extreme_ints(rng, (n, c, h, w), xlo, xhi).astype(np.float32), ROW_DEPTHWISE_PATHS)


amx_cases = st.fixed_dictionaries({
    "n": st.integers(1, 3), "c": st.integers(1, 150), "h": st.integers(4, 12), "w": st.integers(4, 12),
    "m": st.integers(1, 100), "k": st.sampled_from([1, 3, 5]), "dil": st.integers(1, 2),
    "pads": st.tuples(*[st.integers(0, 2)] * 4), "seed": st.integers(0, 2**16),
    "out": st.sampled_from(["uint8", "int8", "int16", "int32", "raw"]),
})


@pytest.mark.skipif(not cpu.has_amx(), reason="no AMX-INT8 here")
@SETTINGS
@given(amx_cases)
def test_amx_conv_equals_reference(case):
    """Shapes that the AMX kernel takes (stride 1, at least 16 output pixels): reductions
    of one to several 64-byte slices with a ragged last one, output channels that fill
    32-channel blocks or not, padding (so dropped columns), dilation, several images
    (so blocks that run past an image into the next, and past the buffer into its slack)."""
    rng = np.random.default_rng(case["seed"])
    n, c, h, w, k, d, m = case["n"], case["c"], case["h"], case["w"], case["k"], case["dil"], case["m"]
    pt, pl, pb, pr = case["pads"]
    assume(h + pt + pb > (k - 1) * d and w + pl + pr > (k - 1) * d)
    assume(output_size(h, k, 1, d, pt, pb) * output_size(w, k, 1, d, pl, pr) >= 16)
    g = Graph("amx")
    xq = quantized_input(g, (n, c, h, w))
    wq = extreme_ints(rng, (m, c, k, k), -128, 127)
    bound = int(np.abs(wq).reshape(m, -1).sum(1).max()) * 255
    assume(bound < INT32_MAX // 2)
    wn = g.add_constant("w", wq.astype(np.int8))
    g.values[wn].dtype = "int8"
    bn = g.add_constant("bias", rng.integers(-(INT32_MAX - bound), INT32_MAX - bound + 1, m).astype(np.int32))
    g.add_node("IntConv", [xq, wn, bn], ["acc"], {
        "x_zero_point": zero_point(rng, 0, 255), "strides": [1, 1], "pads": [pt, pl, pb, pr],
        "dilations": [d, d], "groups": 1}, name="conv")
    if case["out"] == "raw":
        g.outputs = ["acc"]
    else:
        lo, hi = dtype_range(case["out"])
        add_requantize(g, "acc", "y", *multipliers(rng, m), 0, case["out"],
                       zero_point(rng, lo, hi) if case["out"] != "int32" else 0)
        g.outputs = ["y"]
    from unittest import mock

    from intq.kernels import conv_amx
    with mock.patch.object(conv_amx, "MIN_REDUCTION", 0):  # short reductions too
        check(g, extreme_ints(rng, (n, c, h, w), 0, 255).astype(np.float32), paths=["amx"])
        assert Plan(g, "amx").steps[1].amx


# Compiles, in a process of its own, the AMX kernel for the AMX steps of a saved model, for
# a Sapphire Rapids target, without running it: the kernels are typed and lowered with the
# AMX features, nothing jitted runs, and the compiled code goes to a cache folder of its own.
_AMX_CROSS_COMPILE = """
import sys
from numba import typeof
import intq
from intq.kernels import conv_amx
from intq.kernels.plan import ConvStep, Plan

plan = Plan(intq.load(sys.argv[1]).integer, "amx")
steps = [i for i, s in enumerate(plan.steps) if isinstance(s, ConvStep) and s.amx]
signatures = set()
for i in steps:  # each step hands its arguments' types to this recorder instead of running
    plan.steps[i].kernel = lambda *args: signatures.add(tuple(typeof(a) for a in args))
env, calls = plan.bind(1)
for i in steps:
    calls[i]()
for sig in signatures:
    conv_amx.conv_amx.compile(sig)
asm = "".join(conv_amx.conv_amx.inspect_asm(sig) for sig in conv_amx.conv_amx.signatures)
print(len(steps), len(signatures), "tdpbusd" in asm, "ldtilecfg" in asm)
"""


@pytest.mark.skipif(not cpu.has_vnni(), reason="no AVX-512 here")
def test_amx_kernel_compiles_for_sapphire_rapids(tmp_path):
    """On CPUs without AMX the AMX kernel's own test is skipped, so an edit to the code it
    shares (the vector epilogue, the scalar fallback) could break it unseen. This compiles
    `conv_amx` for the bundled ResNet's AMX steps with LLVM told the CPU is a Sapphire
    Rapids: it checks that the kernel types and lowers and that the tile instructions are
    in its code, not what it computes (that is `test_amx_conv_equals_reference`'s, where
    AMX runs)."""
    import os
    import subprocess
    import sys

    import intq
    from conftest import MODELS

    path = str(tmp_path / "resnet.intq")
    intq.compile(MODELS / "resnet.onnx", MODELS / "digits_calib.npz", bits=8).save(path)
    env = dict(os.environ, NUMBA_CPU_NAME="sapphirerapids", NUMBA_CACHE_DIR=str(tmp_path / "numba"),
               NUMBA_CPU_FEATURES="+amx-tile,+amx-int8,+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512cd,"
                                  "+avx512vnni,+avx2,+fma,+bmi2,+popcnt,+sse4.2")
    done = subprocess.run([sys.executable, "-c", _AMX_CROSS_COMPILE, path], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    steps, signatures, tdpbusd, ldtilecfg = done.stdout.split()
    assert int(steps) >= 2 and int(signatures) >= 1 and tdpbusd == ldtilecfg == "True", done.stdout


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 70), st.integers(1, 9), st.sampled_from(["conv", "wide", "both"]),
       st.sampled_from(["int16", "int8", "uint16", "int32"]), st.booleans(), st.integers(0, 2**16))
def test_residual_add_fused_into_conv(n, c, hw, other, out_dtype, ties, seed):
    """conv accumulator + another tensor (a wide tensor, or a second conv's accumulator),
    each branch with its own per-channel multiplier: the epilogue-fused IntAdd, and the
    8-bit requantized copy of its output written by the same epilogue."""
    rng = np.random.default_rng(seed)
    g = Graph("residual")
    xq = quantized_input(g, (n, c, hw, hw))
    accs = []
    xzp = zero_point(rng, 0, 255)  # a tensor has one zero point, whoever reads it
    for i in range(2 if other == "both" else 1):
        wn = g.add_constant(f"w{i}", extreme_ints(rng, (c, c, 3, 3), -128, 127).astype(np.int8))
        g.values[wn].dtype = "int8"
        bn = g.add_constant(f"b{i}", rng.integers(-10**6, 10**6, c).astype(np.int32))
        g.add_node("IntConv", [xq, wn, bn], [f"acc{i}"], {"x_zero_point": xzp,
                   "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "groups": 1}, name=f"conv{i}")
        accs.append(f"acc{i}")
    zps = [0] * len(accs)
    if other != "both":
        wide = "int16" if other == "wide" else "int8"
        add_requantize(g, xq, "skip", *multipliers(rng, 1), 0, wide, int(rng.integers(-50, 50)))
        accs.append("skip")
        zps.append(int(rng.integers(-50, 50)))
    if other == "conv":
        accs.reverse()
        zps.reverse()
    bs, cs = zip(*[multipliers(rng, c if a.startswith("acc") else 1, ties) for a in accs])
    ins = accs + [g.add_constant(f"add.b{i}", b) for i, b in enumerate(bs)] + \
        [g.add_constant(f"add.c{i}", cc) for i, cc in enumerate(cs)]
    lo, hi = dtype_range(out_dtype)
    g.add_node("IntAdd", ins, ["y"], {"n": 2, "zero_points": zps, "out_zero_point": int(rng.integers(-9, 9)) if lo < 0 else 3,
                                      "lo": lo, "hi": hi, "dtype": out_dtype}, name="add")
    # The next block's 8-bit copy of the sum, written by the same epilogue.
    add_requantize(g, "y", "y8", *multipliers(rng, 1, ties), zero_point(rng, lo, hi), "uint8",
                   zero_point(rng, 0, 255))
    g.outputs = ["y", "y8"]
    x = extreme_ints(rng, (n, c, hw, hw), 0, 255).astype(np.float32)
    check(g, x)
    assert any(getattr(s, "copy", None) is not None for s in Plan(g, "portable").steps)
    want = run_integer(g, x)[0]
    for path in PATHS:  # the same add unfused: accumulators stored, then the elementwise add
        assert np.array_equal(Plan(g, path, fuse_residual=False).run(x)[0], want)


def _fit_shift(b, top, bits):
    """Shifts c with b * top / 2^c about 2^bits: DN then spans its output range."""
    return np.maximum(np.ceil(np.log2(np.asarray(b, np.float64) * top)).astype(np.int64) - bits, 0)


@settings(SETTINGS, max_examples=12)
@given(st.integers(1, 2), st.integers(1, 70), st.integers(1, 9), st.booleans(), st.integers(0, 2**16))
def test_residual_stream_split_form(n, c, hw, ties, seed):
    """ResNet's residual stream: a conv accumulator plus a uint16 operand with zero point 0,
    into a uint16 output with zero point 0, and the output's 8-bit copy. The VNNI epilogue
    rescales the operand and the copy in the split form (asserted). The multipliers fit
    each DN to its output range, so sums cross 0 and 65535 instead of saturating, and a
    clamp bound or rounding step off by one shows; ties=True puts the operand's and the
    copy's multipliers on halves (b = 2, c = 17 at 2^15)."""
    rng = np.random.default_rng(seed)
    g = Graph("stream")
    xq = quantized_input(g, (n, c, hw, hw))
    wq = extreme_ints(rng, (c, c, 3, 3), -128, 127)
    add_conv(g, rng, xq, wq, rng.integers(-10**6, 10**6, c), 8, 1, (1, 1, 1, 1), 1, 1)
    add_requantize(g, xq, "skip", 2**30, 22, 0, "uint16", 0)  # the stream: x * 256
    b1 = rng.integers(2**30, 2**31, c)
    c1 = _fit_shift(b1, 9 * c * 255 * 128 + 10**6, 16)
    b2 = rng.integers(2**30, 2**31, 1)
    b2, c2 = (np.array([2]), np.array([17])) if ties else (b2, _fit_shift(b2, 65535, 15))
    ins = ["acc", "skip"] + [g.add_constant(f"add.{k}", v) for k, v in (("b0", b1), ("b1", b2), ("c0", c1), ("c1", c2))]
    g.add_node("IntAdd", ins, ["y"], {"n": 2, "zero_points": [0, 0], "out_zero_point": 0, "lo": 0, "hi": 65535,
                                      "dtype": "uint16"}, name="add")
    b3 = rng.integers(2**30, 2**31, 1)
    b3, c3 = (np.array([2]), np.array([17])) if ties else (b3, _fit_shift(b3, 65535, 7))
    add_requantize(g, "y", "y8", b3, c3, 0, "uint8", zero_point(rng, 0, 255))
    g.outputs = ["y", "y8"]
    x = extreme_ints(rng, (n, c, hw, hw), 0, 255).astype(np.float32)
    check(g, x)
    if cpu.has_vnni():
        assert [int(s.sc[11]) for s in Plan(g, "vnni").steps if getattr(s, "copy", None) is not None] == [3]


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 20), st.integers(1, 12), st.integers(1, 12),
       st.integers(1, 4), st.integers(1, 3), st.tuples(*[st.integers(0, 1)] * 4), st.booleans(),
       st.booleans(), st.sampled_from(["uint8", "int16", "uint16", "int32"]), st.integers(0, 2**16))
def test_pools_equal_reference(n, c, h, w, k, s, pads, ceil_mode, include_pad, dtype, seed):
    from intq.ops.pool import AveragePool

    rng = np.random.default_rng(seed)
    pt, pl, pb, pr = pads
    assume(max(pads) < k and h + pt + pb >= k and w + pl + pr >= k)
    lo, hi = dtype_range(dtype)
    if dtype == "int32":
        lo, hi = -2**20, 2**20  # a 32-bit stream reaches pools only requantized to 16 bits
    g = Graph("pools")
    xq = quantized_input(g, (n, c, h, w), dtype)
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": list(pads), "ceil_mode": int(ceil_mode)}
    g.add_node("MaxPool", [xq], ["mx"], dict(attrs, dilations=[1, 1]), name="max")
    z = int(rng.integers(lo, hi + 1)) if dtype != "int32" else 0
    ho, wo = (output_size(h, k, s, 1, pt, pb, ceil_mode), output_size(w, k, s, 1, pl, pr, ceil_mode))
    count = AveragePool.divisor(dict(attrs, count_include_pad=int(include_pad)), (h, w))
    assert count.shape == (ho, wo)
    b, cc = multipliers(rng, ho * wo)
    g.add_node("IntAvgPool", [xq, g.add_constant("ap.b", b.reshape(ho, wo)), g.add_constant("ap.c", cc.reshape(ho, wo))],
               ["avg"], dict(attrs, in_zero_point=z, out_zero_point=-3, lo=-128, hi=127, dtype="int8"), name="avg")
    b, cc = multipliers(rng, 1)
    g.add_node("IntGlobalAvgPool", [xq, g.add_constant("gp.b", b[0]), g.add_constant("gp.c", cc[0])], ["gap"],
               {"in_zero_point": z, "out_zero_point": 100, "lo": 0, "hi": 255, "dtype": "uint8",
                "keepdims": int(rng.integers(0, 2))}, name="gap")
    g.outputs = ["mx", "avg", "gap"]
    check(g, extreme_ints(rng, (n, c, h, w), lo, hi).astype(np.float32))


@SETTINGS
@given(st.integers(1, 3), st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(1, 6),
       st.booleans(), st.integers(0, 2**16))
def test_requantize_concat_clamp_pad(n, channels, hw, per_channel, seed):
    """Standalone Requantize (per tensor, per channel), IntConcat of several branches with
    their own multipliers and zero points, IntClamp and IntPad."""
    rng = np.random.default_rng(seed)
    c = sum(channels)
    g = Graph("elementwise")
    xq = quantized_input(g, (n, c, hw, hw), "int16")
    parts, zps = [], []
    off = 0
    for i, ci in enumerate(channels):
        sl = g.add_constant(f"sel{i}", np.eye(c, dtype=np.int8)[off:off + ci].reshape(ci, c, 1, 1))
        g.values[sl].dtype = "int8"
        # A 1x1 conv picks channels off..off+ci (the only way to split in the integer IR).
        src = f"p{i}"
        add_requantize(g, xq, f"u{i}", *multipliers(rng, 1), int(rng.integers(-99, 99)), "uint8")
        bn = g.add_constant(f"sb{i}", np.zeros(ci, np.int32))
        g.add_node("IntConv", [f"u{i}", sl, bn], [src], {"x_zero_point": 0, "strides": [1, 1],
                   "pads": [0, 0, 0, 0], "dilations": [1, 1], "groups": 1}, name=f"pick{i}")
        parts.append(src)
        zps.append(0)
        off += ci
    k = len(parts)
    bs = [multipliers(rng, ci if per_channel else 1) for ci in channels]
    ins = parts + [g.add_constant(f"cat.b{i}", b) for i, (b, _) in enumerate(bs)] + \
        [g.add_constant(f"cat.c{i}", cc) for i, (_, cc) in enumerate(bs)]
    g.add_node("IntConcat", ins, ["cat"], {"n": k, "zero_points": zps, "out_zero_point": 7, "lo": -300,
                                           "hi": 4000, "dtype": "int16", "axis": 1}, name="cat")
    g.add_node("IntClamp", ["cat"], ["clamped"], {"lo": -5, "hi": 900}, name="clamp")
    g.add_node("IntPad", ["clamped"], ["padded"], {"pads": [1, 0, 2, 1], "value": 7}, name="pad")
    add_requantize(g, "padded", "y", *multipliers(rng, 1), 7, "int8", 2)
    g.outputs = ["y", "cat"]
    check(g, extreme_ints(rng, (n, c, hw, hw), -2**15, 2**15 - 1).astype(np.float32))


@pytest.mark.parametrize("hw", [1, 3])
def test_flatten_into_linear_and_to_output(hw):
    """A Linear reading a flattened NCHW map (run as a whole-map convolution) and a Flatten
    that is itself an output (moved through the reference layout)."""
    rng = np.random.default_rng(hw)
    n, c, m = 3, 5, 70
    g = Graph("flatten")
    xq = quantized_input(g, (n, c, hw, hw))
    g.add_node("Flatten", [xq], ["flat"], {"axis": 1}, name="flatten")
    wn = g.add_constant("w", extreme_ints(rng, (m, c * hw * hw), -128, 127).astype(np.int8))
    g.values[wn].dtype = "int8"
    g.add_node("IntLinear", ["flat", wn, g.add_constant("b", rng.integers(-9999, 9999, m).astype(np.int32))],
               ["acc"], {"x_zero_point": 17}, name="fc")
    add_requantize(g, "acc", "y", *multipliers(rng, m), 0, "int16", -4)
    g.outputs = ["y", "flat"]
    check(g, extreme_ints(rng, (n, c, hw, hw), 0, 255).astype(np.float32))


def test_input_quantization_rounds_like_the_reference():
    """QuantizeInput: ties (x.5) round up, values past the range clamp, negatives floor."""
    g = Graph("q")
    g.add_input("x", (1, 1, 2, 8), "float32")
    g.add_node("QuantizeInput", ["x"], ["q"], {"scale": 0.5, "zero_point": 3, "lo": 0, "hi": 255,
                                               "dtype": "uint8"}, name="quantize_input")
    g.outputs = ["q"]
    x = np.array([[-0.25, 0.25, -1.75, 1.25, 1e30, -1e30, 127.74, 126.26],
                  [0.7499999, -0.7500001, 3.0, -1.5, 60.0, 61.25, 0.0, -0.0]], np.float32)
    check(g, x.reshape(1, 1, 2, 8))


def _const(g, name, value, dtype):
    t = g.add_constant(name, np.asarray(value))
    g.values[t].dtype = dtype
    return t


def _softmax_table(scale, n):
    """An exp table as `lower_softmax` builds it (2^E exp(-scale d), last entry 0)."""
    e = 30 - max(1, int(np.ceil(np.log2(max(n, 2)))))
    length = int(np.ceil((e + 1) * np.log(2) / scale)) + 1
    table = np.floor(2.0**e * np.exp(-scale * np.arange(length)) + 0.5).astype(np.int64)
    table[-1] = 0
    return table


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 21), st.integers(1, 7), st.sampled_from(["uint8", "int8", "int16"]),
       st.booleans(), st.integers(0, 2**16))
def test_real_network_ops_equal_reference(n, c, hw, dtype, ties, seed):
    """IntAffine (signs, offsets, per channel), IntLookup (a table over the whole input
    range), IntLeakyRelu, IntMul as a squeeze-excitation gate (N, C, 1, 1) x (N, C, H, W),
    IntSoftmax per pixel and over a whole sample, at extreme values and zero points."""
    rng = np.random.default_rng(seed)
    lo, hi = dtype_range(dtype)
    g = Graph("mobile")
    xq = quantized_input(g, (n, c, hw, hw), dtype)
    zin = zero_point(rng, lo, hi)
    # IntAffine to int16, its offsets anywhere in int16
    b, cc = multipliers(rng, c, ties)
    g.add_node("IntAffine", [xq, g.add_constant("af.b", b), g.add_constant("af.c", cc),
                             g.add_constant("af.s", rng.choice([-1, 1], c)),
                             g.add_constant("af.z", rng.integers(-40000, 40000, c))],
               ["af"], {"in_zero_point": zin, "lo": -2**15, "hi": 2**15 - 1, "dtype": "int16"}, name="affine")
    # IntLookup of the input (table over its dtype) and of the 16-bit affine output
    _const_table = lambda name, lo_, hi_, out: _const(g, name, rng.integers(*dtype_range(out), hi_ - lo_ + 1,
                                                                        endpoint=True), out)
    g.add_node("IntLookup", [xq, _const_table("lk.t", lo, hi, "uint8")], ["lk"],
               {"offset": lo, "dtype": "uint8"}, name="lookup")
    g.add_node("IntLookup", ["af", _const_table("lk16.t", -2**15, 2**15 - 1, "int8")], ["lk16"],
               {"offset": -2**15, "dtype": "int8"}, name="lookup16")
    # IntLeakyRelu, per-channel slopes of either sign
    pos, neg = multipliers(rng, c, ties), multipliers(rng, 1 if ties else c)
    g.add_node("IntLeakyRelu", [xq, *(g.add_constant(f"lr.{k}", v) for k, v in
                                     (("bp", pos[0]), ("cp", pos[1]), ("bn", neg[0]), ("cn", neg[1]))),
                                g.add_constant("lr.s", rng.choice([-1, 1], c))],
               ["lr"], {"in_zero_point": zin, "out_zero_point": zero_point(rng, -128, 127),
                        "lo": -128, "hi": 127, "dtype": "int8"}, name="leaky")
    # SE gate: global pool to (N, C, 1, 1), product with the 8-bit leaky output
    g.add_node("IntGlobalAvgPool", [xq, g.add_constant("gp.b", np.array([int(rng.integers(1, 2**31))])),
                                    g.add_constant("gp.c", np.array([int(rng.integers(20, 40))]))],
               ["gate"], {"in_zero_point": zin, "out_zero_point": 0, "lo": 0, "hi": 255, "dtype": "uint8"},
               name="pool")
    mb, mc = multipliers(rng, 1, ties)
    g.add_node("IntMul", ["lr", "gate", g.add_constant("mul.b", mb), g.add_constant("mul.c", mc)], ["se"],
               {"a_zero_point": zero_point(rng, -128, 127), "b_zero_point": zero_point(rng, 0, 255),
                "out_zero_point": zero_point(rng, 0, 255), "lo": 0, "hi": 255, "dtype": "uint8"},
               name="gate_mul")
    g.add_node("IntMul", ["gate", "lk", g.add_constant("mul2.b", mb), g.add_constant("mul2.c", mc)], ["se2"],
               {"a_zero_point": 3, "b_zero_point": 0, "out_zero_point": -3, "lo": -128, "hi": 127,
                "dtype": "int8"}, name="gate_mul2")
    scale = float(rng.choice([0.02, 0.1, 0.7]))
    g.add_node("IntSoftmax", ["se", _const(g, "sm.t", _softmax_table(scale, c), "int32")], ["sm"],
               {"axes": [1], "lo": 0, "hi": 255, "dtype": "uint8"}, name="softmax")
    g.add_node("IntSoftmax", ["lk16", _const(g, "sm2.t", _softmax_table(scale, c * hw * hw), "int32")],
               ["sm2"], {"axes": [1, 2, 3], "lo": 0, "hi": 255, "dtype": "uint8"}, name="softmax_all")
    g.outputs = ["af", "lk", "lk16", "lr", "se", "se2", "sm", "sm2"]
    check(g, extreme_ints(rng, (n, c, hw, hw), lo, hi).astype(np.float32))


@SETTINGS
@given(st.integers(1, 3), st.sampled_from([2, 4, 6]), st.integers(1, 5), st.integers(0, 2**16))
def test_movement_ops_equal_reference(n, c, hw, seed):
    """Channel shuffle (Reshape to 5-D, Transpose, Reshape), Split and Slice on channels,
    Squeeze/Unsqueeze, and an elementwise op on a 3-D tensor (staged, `StagedStep`)."""
    rng = np.random.default_rng(seed)
    g = Graph("movement")
    xq = quantized_input(g, (n, c, hw, hw), "int8")
    g.add_node("Reshape", [xq], ["r5"], {"shape": [-1, 2, c // 2, hw, hw]}, name="to5")
    g.add_node("Transpose", ["r5"], ["t5"], {"perm": [0, 2, 1, 3, 4]}, name="shuffle")
    g.add_node("Reshape", ["t5"], ["shuf"], {"shape": [-1, c, hw, hw]}, name="to4")
    g.add_node("Split", ["shuf"], ["s0", "s1"], {"axis": 1, "split": [c // 2, c - c // 2]}, name="split")
    g.add_node("Slice", ["s1"], ["sl"], {"axes": [1, 3], "starts": [0, 1], "ends": [c, 99], "steps": [1, 1]},
               name="slice")
    g.add_node("IntGlobalAvgPool", ["s0", g.add_constant("gp.b", np.array([1 << 30])),
                                    g.add_constant("gp.c", np.array([30]))],
               ["gp"], {"in_zero_point": 0, "out_zero_point": 0, "lo": -128, "hi": 127, "dtype": "int8",
                        "keepdims": 1}, name="gap")
    g.add_node("Squeeze", ["gp"], ["sq"], {"axes": [3]}, name="squeeze")
    g.add_node("IntLookup", ["sq", _const(g, "t3", rng.integers(0, 256, 256), "uint8")], ["lk3"],
               {"offset": -128, "dtype": "uint8"}, name="lookup3d")
    g.add_node("Unsqueeze", ["lk3"], ["usq"], {"axes": [3]}, name="unsqueeze")
    g.add_node("Transpose", ["xq"], ["nhwc"], {"perm": [0, 2, 3, 1]}, name="to_nhwc")
    g.outputs = ["shuf", "s0", "sl", "usq", "nhwc", "lk3"]
    check(g, extreme_ints(rng, (n, c, hw, hw), -128, 127).astype(np.float32))


fused_cases = st.fixed_dictionaries({
    "epilogue": st.sampled_from(["requantize", "residual", "concat_branch", "copy"]),
    "n": st.integers(1, 3), "c": st.integers(1, 40), "m": st.integers(1, 40), "hw": st.integers(1, 9),
    "k": st.sampled_from([1, 3]), "groups": st.sampled_from(["dense", "depthwise"]),
    "operand": st.sampled_from(["uint8", "int8", "int16", "int32"]),
    "out": st.sampled_from(["uint8", "int8", "int16", "int32"]), "ties": st.booleans(),
    "seed": st.integers(0, 2**16),
})


@SETTINGS
@given(fused_cases)
def test_fused_node_equals_its_reference(case):
    """One fused node alone (`kernels.fuse.FusedConv`): a layer with its residual-add
    epilogue, its concat branch written in place, or its output requantized and copied;
    the graph's inputs are integer tensors fed as they are, so every value can sit at the
    ends of its range. The Numba step equals the fused node's reference `run` (which
    composes the parts' own `run`s), and that equals the unfused graph's."""
    from intq.kernels.fuse import fuse, run_reference

    rng = np.random.default_rng(case["seed"])
    n, c, hw, k, kind = case["n"], case["c"], case["hw"], case["k"], case["epilogue"]
    m = c if case["groups"] == "depthwise" else case["m"]
    groups = c if case["groups"] == "depthwise" else 1
    g = Graph("fused")
    g.add_input("x", (n, c, hw, hw), "uint8")
    wq = extreme_ints(rng, (m, c // groups, k, k), -127, 127)
    bound = int(np.abs(wq).reshape(m, -1).sum(1).max()) * 255
    wn = g.add_constant("w", wq.astype(np.int8))
    g.values[wn].dtype = "int8"
    bn = g.add_constant("bias", rng.integers(-(INT32_MAX - bound), INT32_MAX - bound + 1, m).astype(np.int32))
    g.add_node("IntConv", ["x", wn, bn], ["acc"], {
        "x_zero_point": zero_point(rng, 0, 255), "strides": [1, 1], "pads": [k // 2] * 4,
        "dilations": [1, 1], "groups": groups}, name="conv")
    lo, hi = dtype_range(case["out"])
    zo = zero_point(rng, lo, hi) if case["out"] != "int32" else 0
    feeds = {"x": extreme_ints(rng, (n, c, hw, hw), 0, 255)}
    if kind in ("requantize", "copy"):
        add_requantize(g, "acc", "y", *multipliers(rng, m, case["ties"]), 0, case["out"], zo)
        g.outputs = ["y"]
        if kind == "copy":
            add_requantize(g, "y", "y8", *multipliers(rng, 1, case["ties"]), zo, "uint8", zero_point(rng, 0, 255))
            g.outputs = ["y", "y8"]
    else:
        rlo, rhi = dtype_range(case["operand"])
        shape = (n, m, hw, hw) if kind == "residual" else (n, int(rng.integers(1, 9)), hw, hw)
        g.add_input("r", shape, case["operand"])
        feeds["r"] = extreme_ints(rng, shape, rlo, rhi)
        zr = zero_point(rng, rlo, rhi) if case["operand"] != "int32" else 0
        branches = [("acc", 0, multipliers(rng, m, case["ties"])), ("r", zr, multipliers(rng, 1, case["ties"]))]
        if rng.random() < 0.5:
            branches.reverse()
        names, zps, (bs, cs) = [b[0] for b in branches], [b[1] for b in branches], zip(*[b[2] for b in branches])
        ins = names + [g.add_constant(f"j.b{i}", b) for i, b in enumerate(bs)] + \
            [g.add_constant(f"j.c{i}", cc) for i, cc in enumerate(cs)]
        attrs = {"n": 2, "zero_points": zps, "out_zero_point": zo, "lo": lo, "hi": hi, "dtype": case["out"]}
        if kind == "residual":
            g.add_node("IntAdd", ins, ["y"], attrs, name="add")
        else:
            g.add_node("IntConcat", ins, ["y"], dict(attrs, axis=1), name="concat")
        g.outputs = ["y"]
    infer_shapes(g)
    fused = fuse(g)
    layers = [node for node in fused.nodes if node.op == "FusedConv"]
    assert len(layers) == 1
    assert layers[0].attrs["epilogue"] == ("requantize" if kind == "copy" else kind)
    assert layers[0].attrs["copy"] == (kind == "copy")
    want = run_reference(g, feeds)
    for got, w in zip(run_reference(fused, feeds), want):
        assert np.array_equal(got, w)
    from intq.kernels.epilogue import REQUANT, RESIDUAL
    from intq.kernels.plan import ConvStep

    for path in PATHS:
        plan = Plan(g, path)
        (step,) = [s for s in plan.steps if isinstance(s, ConvStep)]   # one kernel call
        assert step.epilogue.mode == (RESIDUAL if kind == "residual" else REQUANT)
        assert (step.epilogue.copy is not None) == (kind == "copy")
        assert step.coff == (0 if kind != "concat_branch" or names[0] == "acc" else feeds["r"].shape[1])
        for got, w in zip(plan.run(feeds), want):
            bad = np.argwhere(got != w)
            assert bad.size == 0, f"{path}: {len(bad)} elements differ, first at {bad[0]}"


@njit
def _avx2_dots(x4, we, wo, out):
    """The 16 channels of one `pack_avx2_wide` block times the 4 activation bytes x4,
    broadcast as the AVX2 kernel does, through `dot4_wide`."""
    v = ybroadcast4(x4, 0)
    for j in range(2):
        ystore(out, 8 * j, dot4_wide(yzero(), v, yload(we, 32 * j), yload(wo, 32 * j)))


@pytest.mark.skipif(not cpu.has_avx2(), reason="no AVX2 here")
@SETTINGS
@given(st.lists(st.integers(0, 255), min_size=4, max_size=4),
       st.lists(st.integers(-128, 127), min_size=64, max_size=64), st.sampled_from(["any", "-128", "127", "0"]))
def test_avx2_dot_products_equal_exact(xs, ws, kind):
    """`simd_avx2.dot4_wide` on weights packed by `conv_avx2.pack_avx2_wide` equals the
    exact int64 dot products, the extremes included: activations all 255 with weights all
    -128 (each product -32640, a pair sum of -65280 where `vpmaddubsw` would saturate at
    -32768) or all 127, and all 0."""
    from intq.kernels.conv_avx2 import pack_avx2_wide

    x, w = np.array(xs, np.int64), np.array(ws, np.int64).reshape(16, 4, 1, 1)
    if kind != "any":
        x[:], w[:] = 255, int(kind)
    want = w[:, :, 0, 0] @ x
    out = np.zeros(16, np.int32)
    _avx2_dots(x.astype(np.uint8), *pack_avx2_wide(w, 4), out)
    assert np.array_equal(out, want), (out, want)


@pytest.mark.skipif(not cpu.has_avx2(), reason="no AVX2 here")
@pytest.mark.parametrize("weight", [-128, 127, 64, -64, 65])
def test_avx2_saturation_extremes(weight):
    """The AVX2 kernel at the extremes of its no-saturation argument: activations all 255
    (and all 0 in a second image), every weight at the given value, so each int16 pair
    sum of a `vpmaddubsw` would be 2 * 255 * weight (saturating from 65 on, which
    `dot4_wide` must not), and the layer must equal the reference."""
    g = Graph("sat")
    xq = quantized_input(g, (2, 8, 3, 3), "uint8")
    wn = g.add_constant("w", np.full((20, 8, 1, 1), weight, np.int8))
    g.values[wn].dtype = "int8"
    bn = g.add_constant("bias", np.zeros(20, np.int32))
    g.add_node("IntConv", [xq, wn, bn], ["acc"], {"x_zero_point": 0, "strides": [1, 1], "pads": [0] * 4,
               "dilations": [1, 1], "groups": 1}, name="conv")
    g.outputs = ["acc"]
    x = np.zeros((2, 8, 3, 3), np.float32)
    x[0] = 255
    check(g, x, paths=["avx2"])
    assert Plan(g, "avx2").steps[1].avx2
