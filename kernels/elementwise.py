"""Elementwise integer kernels over haloed NHWC buffers (geometry as in `epilogue`):
input quantization, standalone requantization (also each branch of a concat), the
k-branch residual add, and clamp. Each equals its op's `run` in `intq.ops.integer`.

`dims` is [N, H, W, C] of the logical tensor; work is split over the N * H rows. Inner
loops run over contiguous channel slices indexed from 0 so that LLVM vectorises them.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .epilogue import MUL, ROUND, SHIFT1, SHIFT2, dn_table, offset, round_shift


@njit(parallel=True, cache=True)
def quantize_input(x, in_scale, in_shift, scale, zp, lo, hi, out, og):
    """`QuantizeInput`: q = clamp(floor(v / scale + 1/2) + zp, lo, hi) from float NCHW x,
    v = x * in_scale[c] + in_shift[c] (a folded input normalisation; 1 and 0 without one).

    The one float step of the graph, computed in float64 exactly as the reference does
    (IEEE multiply, add, divide and floor, in that order and unfused, are deterministic),
    clamped before the integer conversion."""
    n_, c_, h_, w_ = x.shape
    cb = og[2]
    for row in prange(n_ * h_):
        n = row // h_
        h = row - n * h_
        o = offset(og, n, h, 0)
        y = out[o:o + w_ * cb]
        # Channel by channel along the contiguous input row (LLVM vectorises the float
        # math; the NHWC stores are strided).
        for c in range(c_):
            xr = x[n, c, h]
            s, t = in_scale[c], in_shift[c]
            for w in range(w_):
                v = np.float64(xr[w]) * s + t
                q = np.floor(v / scale + 0.5) + zp
                y[w * cb + c] = np.int64(min(max(q, lo), hi))


@njit(parallel=True, cache=True)
def requantize(x, xg, dims, zin, rq, out, og, zo, lo, hi):
    """`Requantize`: y = clamp(DN_k(x - zin) + zo, lo, hi), k the channel (rq's column)."""
    n_, h_, w_, c_ = dims[0], dims[1], dims[2], dims[3]
    mul, s1, rnd, s2 = rq[MUL], rq[SHIFT1], rq[ROUND], rq[SHIFT2]
    for row in prange(n_ * h_):
        n = row // h_
        h = row - n * h_
        for w in range(w_):
            i = offset(xg, n, h, w)
            o = offset(og, n, h, w)
            xr, y = x[i:i + c_], out[o:o + c_]
            for c in range(c_):
                v = round_shift((np.int64(xr[c]) - zin) * mul[c], s1[c], rnd[c], s2[c])
                y[c] = min(max(v + zo, lo), hi)


@njit(parallel=True, cache=True)
def add_branch(x, xg, dims, zin, sign, rq, total, first):
    """One branch of `IntAdd`: total (+)= DN_k(sign * (x - zin)), total an int64 N*H*W*C
    scratch, sign +1 or -1 (applied before the rounding, as the op says)."""
    n_, h_, w_, c_ = dims[0], dims[1], dims[2], dims[3]
    mul, s1, rnd, s2 = rq[MUL], rq[SHIFT1], rq[ROUND], rq[SHIFT2]
    for row in prange(n_ * h_):
        n = row // h_
        h = row - n * h_
        for w in range(w_):
            i = offset(xg, n, h, w)
            t = ((n * h_ + h) * w_ + w) * c_
            xr, tr = x[i:i + c_], total[t:t + c_]
            for c in range(c_):
                v = round_shift((np.int64(xr[c]) - zin) * sign * mul[c], s1[c], rnd[c], s2[c])
                tr[c] = v if first else tr[c] + v


@njit(parallel=True, cache=True)
def add_finish(total, dims, out, og, zo, lo, hi):
    """The end of `IntAdd`: y = clamp(total + zo, lo, hi)."""
    n_, h_, w_, c_ = dims[0], dims[1], dims[2], dims[3]
    for row in prange(n_ * h_):
        n = row // h_
        h = row - n * h_
        for w in range(w_):
            o = offset(og, n, h, w)
            t = ((n * h_ + h) * w_ + w) * c_
            tr, y = total[t:t + c_], out[o:o + c_]
            for c in range(c_):
                y[c] = min(max(tr[c] + zo, lo), hi)


@njit(parallel=True, cache=True)
def clamp(x, xg, dims, out, og, lo, hi):
    """`IntClamp`: y = clamp(x, lo, hi)."""
    n_, h_, w_, c_ = dims[0], dims[1], dims[2], dims[3]
    for row in prange(n_ * h_):
        n = row // h_
        h = row - n * h_
        for w in range(w_):
            i = offset(xg, n, h, w)
            o = offset(og, n, h, w)
            xr, y = x[i:i + c_], out[o:o + c_]
            for c in range(c_):
                y[c] = min(max(np.int64(xr[c]), lo), hi)


@njit(parallel=True, cache=True)
def gather(x, src, out, dst, fill):
    """Data movement by index map: out[dst[i]] = x[src[i]], or fill where src[i] < 0."""
    for i in prange(src.size):
        s = src[i]
        out[dst[i]] = fill if s < 0 else x[s]


@njit(parallel=True, cache=True)
def resize_linear(x, xg, out, og, dims, rows0, rows1, row_w, cols0, cols1, col_w, frac):
    """`IntResizeLinear` (dims: the output's n, h, w, c): per output pixel, the four taps'
    weight products (each axis's pair sums to 2^frac), the exact int64 sum over them, one
    rounding, floor((S + 2^(2 frac - 1)) / 2^(2 frac))."""
    n_, h_, w_, c_ = dims[0], dims[1], dims[2], dims[3]
    one = np.int64(1) << frac
    half = np.int64(1) << (2 * frac - 1)
    shift = 2 * frac
    for row in prange(n_ * h_):
        n = row // h_
        i = row - n * h_
        r0, r1, wy1 = rows0[i], rows1[i], row_w[i]
        wy0 = one - wy1
        for j in range(w_):
            c0, c1, wx1 = cols0[j], cols1[j], col_w[j]
            wx0 = one - wx1
            w00, w01, w10, w11 = wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1
            a, b = offset(xg, n, r0, c0), offset(xg, n, r0, c1)
            c, d = offset(xg, n, r1, c0), offset(xg, n, r1, c1)
            o = offset(og, n, i, j)
            for k in range(c_):
                s = (w00 * np.int64(x[a + k]) + w01 * np.int64(x[b + k])
                     + w10 * np.int64(x[c + k]) + w11 * np.int64(x[d + k]))
                out[o + k] = (s + half) >> shift


@njit(parallel=True, cache=True)
def affine(x, xg, dims, zin, rq, sign, zps, out, og, lo, hi):
    """`IntAffine`: y = clamp(DN_k(sign[k] * (x - zin)) + zps[k], lo, hi) per channel k."""
    n_, h_, w_, c_ = dims[0], dims[1], dims[2], dims[3]
    mul, s1, rnd, s2 = rq[MUL], rq[SHIFT1], rq[ROUND], rq[SHIFT2]
    for row in prange(n_ * h_):
        n = row // h_
        h = row - n * h_
        for w in range(w_):
            i = offset(xg, n, h, w)
            o = offset(og, n, h, w)
            xr, y = x[i:i + c_], out[o:o + c_]
            for c in range(c_):
                v = round_shift((np.int64(xr[c]) - zin) * sign[c] * mul[c], s1[c], rnd[c], s2[c])
                y[c] = min(max(v + zps[c], lo), hi)


@njit(parallel=True, cache=True)
def absolute(x, xg, dims, zin, rq, out, og, zo, lo, hi):
    """`IntAbs`: y = clamp(DN_k(|x - zin|) + zo, lo, hi) per channel k."""
    n_, h_, w_, c_ = dims[0], dims[1], dims[2], dims[3]
    mul, s1, rnd, s2 = rq[MUL], rq[SHIFT1], rq[ROUND], rq[SHIFT2]
    for row in prange(n_ * h_):
        n = row // h_
        h = row - n * h_
        for w in range(w_):
            i = offset(xg, n, h, w)
            o = offset(og, n, h, w)
            xr, y = x[i:i + c_], out[o:o + c_]
            for c in range(c_):
                v = round_shift(abs(np.int64(xr[c]) - zin) * mul[c], s1[c], rnd[c], s2[c])
                y[c] = min(max(v + zo, lo), hi)


def absolute_args(node, consts, channels):
    """`absolute`'s arguments between the input and the output buffers, and after them."""
    a = node.attrs
    return (int(a["in_zero_point"]), dn_table(consts[0], consts[1], channels, channels)), \
        (int(a["out_zero_point"]), int(a["lo"]), int(a["hi"]))


# Channelwise kernels with the common signature kernel(x, xg, dims, *before, out, og,
# *after), by op: `plan.KernelStep` runs them; `args(node, constants, channels)` gives
# (before, after).
KERNELS = {"IntAbs": (absolute, absolute_args)}


@njit(parallel=True, cache=True)
def lookup(x, xg, dims, table, first, out, og):
    """`IntLookup`: y = table[x - first]."""
    n_, h_, w_, c_ = dims[0], dims[1], dims[2], dims[3]
    for row in prange(n_ * h_):
        n = row // h_
        h = row - n * h_
        for w in range(w_):
            i = offset(xg, n, h, w)
            o = offset(og, n, h, w)
            xr, y = x[i:i + c_], out[o:o + c_]
            for c in range(c_):
                y[c] = table[np.int64(xr[c]) - first]


@njit(parallel=True, cache=True)
def leaky_relu(x, xg, dims, zin, pos, neg, sign, out, og, zo, lo, hi):
    """`IntLeakyRelu`: d = x - zin; y = clamp(DN_pos(d) + zo) for d >= 0, else
    clamp(DN_neg(sign[k] * d) + zo), per channel k (pos, neg: DN tables)."""
    n_, h_, w_, c_ = dims[0], dims[1], dims[2], dims[3]
    pm, p1, pr, p2 = pos[MUL], pos[SHIFT1], pos[ROUND], pos[SHIFT2]
    nm, n1, nr, n2 = neg[MUL], neg[SHIFT1], neg[ROUND], neg[SHIFT2]
    for row in prange(n_ * h_):
        n = row // h_
        h = row - n * h_
        for w in range(w_):
            i = offset(xg, n, h, w)
            o = offset(og, n, h, w)
            xr, y = x[i:i + c_], out[o:o + c_]
            for c in range(c_):
                d = np.int64(xr[c]) - zin
                if d >= 0:
                    v = round_shift(d * pm[c], p1[c], pr[c], p2[c])
                else:
                    v = round_shift(d * sign[c] * nm[c], n1[c], nr[c], n2[c])
                y[c] = min(max(v + zo, lo), hi)


@njit(parallel=True, cache=True)
def multiply(a, ag, adims, za, b, bg, bdims, zb, rq, out, og, dims, zo, lo, hi):
    """`IntMul`: y = clamp(DN((a - za) * (b - zb)) + zo, lo, hi), one multiplier (rq column
    0); an operand whose H, W or C is 1 where the output's is not is broadcast."""
    n_, h_, w_, c_ = dims[0], dims[1], dims[2], dims[3]
    mul, s1, rnd, s2 = rq[MUL, 0], rq[SHIFT1, 0], rq[ROUND, 0], rq[SHIFT2, 0]
    for row in prange(n_ * h_):
        n = row // h_
        h = row - n * h_
        for w in range(w_):
            ia = offset(ag, n, h if adims[1] > 1 else 0, w if adims[2] > 1 else 0)
            ib = offset(bg, n, h if bdims[1] > 1 else 0, w if bdims[2] > 1 else 0)
            o = offset(og, n, h, w)
            y = out[o:o + c_]
            for c in range(c_):
                va = np.int64(a[ia + (c if adims[3] > 1 else 0)]) - za
                vb = np.int64(b[ib + (c if bdims[3] > 1 else 0)]) - zb
                v = round_shift(va * vb * mul, s1, rnd, s2)
                y[c] = min(max(v + zo, lo), hi)
