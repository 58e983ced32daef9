"""Pooling kernels over haloed NHWC buffers, equal to `MaxPool`, `IntAvgPool` and
`IntGlobalAvgPool` of the integer graph. Window cells outside the input (padding, and
what ceil_mode reads past the end) are skipped: max pooling ignores them, and average
pooling sums (x - z_in) over the cells inside, its DN multiplier already holding 1/count.
Sums are INT32, which lowering proves cannot overflow.

pp (int64): [N, C, H, W, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW].
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .epilogue import dn, offset

N_, C_, H_, W_, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW = range(14)


@njit(parallel=True, cache=True)
def max_pool(x, xg, pp, out, og):
    """MaxPool: the largest input cell of each window (cells outside the input skipped).
    Every window holds at least one cell of the input (pads < kernel), which starts the
    running maximum; it is kept in the output row itself, at the tensor's own width (the
    output has the input's parameters and container), so 16-bit maps vectorise 16 or 32
    lanes at a time instead of int64's 4 or 8."""
    c_ = pp[C_]
    for row in prange(pp[N_] * pp[OH]):
        n = row // pp[OH]
        oh = row - n * pp[OH]
        for ow in range(pp[OW]):
            o = offset(og, n, oh, ow)
            y = out[o:o + c_]
            first = True
            for i in range(pp[KH]):
                h = oh * pp[SH] - pp[PT] + i * pp[DH]
                if h < 0 or h >= pp[H_]:
                    continue
                for j in range(pp[KW]):
                    w = ow * pp[SW] - pp[PL] + j * pp[DW]
                    if w < 0 or w >= pp[W_]:
                        continue
                    xi = offset(xg, n, h, w)
                    xr = x[xi:xi + c_]
                    if first:
                        for c in range(c_):
                            y[c] = xr[c]
                        first = False
                    else:
                        for c in range(c_):
                            y[c] = max(y[c], xr[c])


@njit(parallel=True, cache=True)
def avg_pool(x, xg, pp, zin, rq, out, og, zo, lo, hi):
    """IntAvgPool: DN_pos(sum over the window's cells of (x - zin)) + zo, clamped; rq has
    one DN column per output position oh * OW + ow (the count differs at borders)."""
    c_ = pp[C_]
    for row in prange(pp[N_] * pp[OH]):
        n = row // pp[OH]
        oh = row - n * pp[OH]
        acc = np.empty(c_, np.int32)
        for ow in range(pp[OW]):
            acc[:] = 0
            for i in range(pp[KH]):
                h = oh * pp[SH] - pp[PT] + i
                if h < 0 or h >= pp[H_]:
                    continue
                for j in range(pp[KW]):
                    w = ow * pp[SW] - pp[PL] + j
                    if w < 0 or w >= pp[W_]:
                        continue
                    xi = offset(xg, n, h, w)
                    xr = x[xi:xi + c_]
                    for c in range(c_):
                        acc[c] += np.int32(xr[c]) - zin
            o = offset(og, n, oh, ow)
            k = oh * pp[OW] + ow
            y = out[o:o + c_]
            for c in range(c_):
                y[c] = min(max(dn(np.int64(acc[c]), rq, k) + zo, lo), hi)


@njit(parallel=True, cache=True)
def global_avg_pool(x, xg, pp, zin, rq, out, og, zo, lo, hi):
    """IntGlobalAvgPool: DN(sum over H x W of (x - zin)) + zo, clamped, per (n, c)."""
    c_ = pp[C_]
    for n in prange(pp[N_]):
        acc = np.zeros(c_, np.int32)
        for h in range(pp[H_]):
            for w in range(pp[W_]):
                xi = offset(xg, n, h, w)
                xr = x[xi:xi + c_]
                for c in range(c_):
                    acc[c] += np.int32(xr[c]) - zin
        o = offset(og, n, 0, 0)
        y = out[o:o + c_]
        for c in range(c_):
            y[c] = min(max(dn(np.int64(acc[c]), rq, 0) + zo, lo), hi)
