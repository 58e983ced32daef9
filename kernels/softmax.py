"""`IntSoftmax` over haloed NHWC buffers: the integer softmax of `intq.ops.integer`,
step for step (max-subtracted input, exp table, Q31 normalisation of the sum, reciprocal
by three Newton steps, one DN), over the channels of each pixel (`per_pixel`) or over all
of a sample's elements (softmax over every non-batch axis of a map).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .epilogue import offset, round_shift

# Newton start for the reciprocal of m in [1/2, 1): 48/17 - 32/17 m, in Q29.
C1 = round(48 / 17 * 2**29)
C2 = round(32 / 17 * 2**29)


@njit(cache=True)
def _bit_length(s):
    k = 0
    while k < 63 and s >= (np.int64(1) << k):
        k += 1
    return k


@njit(cache=True)
def _normalise(e, out, lo, hi):
    """p = DN_{R, 21 + k}(e) clamped, R ~ 2^60 / s, k the bit length of s = sum(e)."""
    s = np.int64(0)
    for i in range(e.size):
        s += e[i]
    k = _bit_length(s)
    m = s << (31 - k)
    r = C1 - ((C2 * m) >> 31)
    for _ in range(3):
        r = (r * ((np.int64(2) << 29) - ((m * r) >> 31))) >> 29
    c = 21 + k
    for i in range(e.size):
        v = round_shift(e[i] * r, c - 1, 1, 1)  # c = 21 + k >= 22: h = c - 1, rnd = s = 1
        out[i] = min(max(v, lo), hi)


@njit(parallel=True, cache=True)
def softmax(x, xg, dims, table, out, og, lo, hi, per_pixel):
    """Softmax of each pixel's channels (per_pixel) or of each sample's whole map."""
    n_, h_, w_, c_ = dims[0], dims[1], dims[2], dims[3]
    last = table.size - 1
    pixels = 1 if per_pixel else h_ * w_
    for g in prange(n_ * h_ * w_ // pixels):
        size = pixels * c_
        xi, oi = np.empty(size, np.int64), np.empty(size, np.int64)
        for i in range(size):
            pix = g * pixels + i // c_
            n = pix // (h_ * w_)
            hw = pix - n * h_ * w_
            xi[i] = offset(xg, n, hw // w_, hw % w_) + i % c_
            oi[i] = offset(og, n, hw // w_, hw % w_) + i % c_
        best = -(np.int64(1) << 62)
        for i in range(size):
            best = max(best, np.int64(x[xi[i]]))
        e = np.empty(size, np.int64)
        for i in range(size):
            e[i] = table[min(best - np.int64(x[xi[i]]), last)]
        p = np.empty(size, np.int64)
        _normalise(e, p, lo, hi)
        for i in range(size):
            out[oi[i]] = p[i]
