"""Convolution and fully connected layers as implicit GEMM over NHWC uint8 activations.

Output pixels are the GEMM rows (M = N * OH * OW), output channels the columns, and the
reduction runs over kernel taps, then input channels, read in place from the haloed input
buffer (the halo holds the input zero point, so padding needs no branch and no copy).
A tile is 6 output pixels x 64 output channels; its INT32 accumulator lives in registers
(VNNI path) or a small scratch (portable path) and goes straight to `epilogue.store_pixel`.

Weights are packed once, at plan time, into the order the inner loop reads:
* VNNI: [channel block of 64][tap][input channel / 4][4 vectors][16 lanes][4 bytes], so one
  64-byte load feeds one `vpdpbusd` for 16 channels x 4 input channels;
* portable: [channel block][tap][input channel][64 channels], so the inner loop is a
  contiguous int32 multiply-add that LLVM vectorises.
Input channels are padded to a multiple of 4 with zero weights; the padded activation
lanes may hold anything, since they are only ever multiplied by zero.

Work is split over both cores by (channel block, run of pixel tiles); each task packs
enough tiles to amortise its scratch and keeps its 64-channel weight block hot in cache.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .epilogue import offset, store_pixel

TILE_M, TILE_N = 6, 64
# cp (int64 conv parameters) indices
N_, OH, OW, SH, SW, PT, PL, TAPS, CIN, COUT, NBLK, PER_TASK = range(12)


def pack_vnni(w: np.ndarray, cin_pad: int, width: int = TILE_N, lanes: int = 16) -> np.ndarray:
    """(M, C, KH, KW) integer weights -> the flat int8 VNNI layout (see module docstring),
    in blocks of `width` output channels (a multiple of `lanes`: `conv_vnni`'s tile widths
    with 16 int32 lanes per zmm; `conv_avx2` packs 8 per ymm the same way)."""
    m, c, kh, kw = w.shape
    mp = -(-m // width) * width
    a = np.zeros((mp, cin_pad, kh * kw), np.int8)
    a[:m, :c] = w.reshape(m, c, kh * kw)
    # [blk, j, lane, c4, cc, tap] -> [blk, tap, c4, j, lane, cc]
    a = a.reshape(mp // width, width // lanes, lanes, cin_pad // 4, 4, kh * kw).transpose(0, 5, 3, 1, 2, 4)
    return np.ascontiguousarray(a).reshape(-1)


def pack_portable(w: np.ndarray, cin_pad: int) -> np.ndarray:
    """(M, C, KH, KW) integer weights -> flat int8 [blk][tap][cin][64]."""
    m, c, kh, kw = w.shape
    mp = -(-m // TILE_N) * TILE_N
    a = np.zeros((mp, cin_pad, kh * kw), np.int8)
    a[:m, :c] = w.reshape(m, c, kh * kw)
    a = a.reshape(mp // TILE_N, TILE_N, cin_pad, kh * kw).transpose(0, 3, 2, 1)
    return np.ascontiguousarray(a).reshape(-1)


@njit(cache=True, inline="always")
def _row_base(m, cp, xg):
    """Element index of the first tap's channel 0 for output row m (clamped to the last
    row, so a ragged last tile recomputes a valid pixel instead of reading past the end)."""
    hw = cp[OH] * cp[OW]
    mm = min(m, cp[N_] * hw - 1)
    n = mm // hw
    r = mm - n * hw
    oh = r // cp[OW]
    ow = r - oh * cp[OW]
    return offset(xg, n, oh * cp[SH] - cp[PT], ow * cp[SW] - cp[PL])


@njit(cache=True, inline="always")
def _task_count(cp, tm=TILE_M):
    """How many prange tasks a convolution splits into: runs of PER_TASK pixel tiles (of
    tm pixels) times channel blocks (each task keeps one weight block hot)."""
    ntile = -(-(cp[N_] * cp[OH] * cp[OW]) // tm)
    return -(-ntile // cp[PER_TASK]) * cp[NBLK]


@njit(cache=True, inline="always")
def _task(task, cp, tm=TILE_M, tn=TILE_N):
    """(channel block, first tile, end tile, offset of the block's packed weights) of one
    task, and its scratch: the tile's accumulators, input bases and output pixels (tiles
    of tm pixels x tn channels)."""
    ntile = -(-(cp[N_] * cp[OH] * cp[OW]) // tm)
    blk = task % cp[NBLK]
    chunk = task // cp[NBLK]
    first = chunk * cp[PER_TASK]
    end = min(ntile, first + cp[PER_TASK])
    wbase = blk * cp[TAPS] * cp[CIN] * tn  # every packing holds TAPS x CIN x tn per block
    tile = np.empty(tm * tn, np.int32)
    return blk, first, end, wbase, tile, np.empty(tm, np.int64), np.empty((tm, 3), np.int64)


@njit(cache=True, inline="always")
def _tile_pixels(m0, cp, xg, pix, bases, tm=TILE_M):
    """The tile's output pixels: pix[p] = (n, oh, ow) of GEMM row m0 + p and bases[p] its
    `_row_base`, with one division per tile (stepping along the row), not two per pixel:
    64-bit divisions cost more than a 1x1 layer's whole reduction. Rows past the last
    repeat the last pixel, as `_row_base` does. Returns how many rows are real."""
    hw = cp[OH] * cp[OW]
    last = cp[N_] * hw - 1
    mm = min(m0, last)
    n = mm // hw
    r = mm - n * hw
    oh = r // cp[OW]
    ow = r - oh * cp[OW]
    for p in range(tm):
        pix[p, 0], pix[p, 1], pix[p, 2] = n, oh, ow
        bases[p] = offset(xg, n, oh * cp[SH] - cp[PT], ow * cp[SW] - cp[PL])
        if m0 + p < last:
            ow += 1
            if ow == cp[OW]:
                ow = 0
                oh += 1
                if oh == cp[OH]:
                    oh = 0
                    n += 1
    return min(tm, last + 1 - m0)


@njit(cache=True, inline="always")
def _finish_tile(tile, pix, rows, blk, cp, rq, out, og, sc, res, rg, rrq, out2, og2, rq2):
    c0 = blk * TILE_N
    nc = min(TILE_N, cp[COUT] - c0)
    for p in range(rows):
        store_pixel(tile, p * TILE_N, c0, nc, pix[p, 0], pix[p, 1], pix[p, 2], rq, out, og, sc, res, rg,
                    rrq, out2, og2, rq2)


@njit(cache=True)
def _tile_portable(x, wp, wbase, toff, taps, cin, bases, tile):
    # Row slices indexed by a range variable: LLVM then knows every index is in bounds and
    # non-negative, drops Numba's wraparound check and vectorises the 64-lane update.
    tile[:] = 0
    for p in range(TILE_M):
        acc = tile[p * TILE_N:(p + 1) * TILE_N]
        for t in range(taps):
            xo = bases[p] + toff[t]
            wo = wbase + t * cin * TILE_N
            for c in range(cin):
                a = np.int32(x[xo + c])
                wrow = wp[wo + c * TILE_N:wo + (c + 1) * TILE_N]
                for j in range(TILE_N):
                    acc[j] += a * np.int32(wrow[j])


@njit(parallel=True, cache=True)
def conv_portable(x, xg, wp, toff, cp, rq, out, og, sc, res, rg, rrq, out2, og2, rq2):
    """Convolution (groups = 1) or Linear with fused epilogue, plain loops (any x86/ARM)."""
    taps, cin = cp[TAPS], cp[CIN]
    for task in prange(_task_count(cp)):
        blk, first, end, wbase, tile, bases, pix = _task(task, cp)
        for i in range(first, end):
            rows_here = _tile_pixels(i * TILE_M, cp, xg, pix, bases)
            _tile_portable(x, wp, wbase, toff, taps, cin, bases, tile)
            _finish_tile(tile, pix, rows_here, blk, cp, rq, out, og, sc, res, rg, rrq, out2, og2, rq2)


@njit(parallel=True, cache=True)
def conv_grouped(x, xg, w, toff, cp, groups, rq, out, og, sc, res, rg, rrq, out2, og2, rq2):
    """Grouped convolution (1 < groups < channels), plain loops; w is (M, taps * Cg) int32
    in [channel][tap][input channel] order. Depthwise has its own kernel."""
    rows = cp[N_] * cp[OH] * cp[OW]
    cout, taps = cp[COUT], cp[TAPS]
    cg = np.int64(w.shape[1]) // taps
    mg = cout // groups
    hw = cp[OH] * cp[OW]
    for mu in prange(rows):
        m = np.int64(mu)  # prange may type its index unsigned; keep index arithmetic signed
        acc = np.zeros(cout, np.int32)
        base = _row_base(m, cp, xg)
        for k in range(cout):
            ci0 = (np.int64(k) // mg) * cg
            total = np.int32(0)
            for t in range(taps):
                xo = base + toff[t] + ci0
                for c in range(cg):
                    total += np.int32(x[xo + c]) * w[k, t * cg + c]
            acc[k] = total
        n = m // hw
        r = m - n * hw
        oh = r // cp[OW]
        store_pixel(acc, 0, 0, cout, n, oh, r - oh * cp[OW], rq, out, og, sc, res, rg, rrq, out2, og2, rq2)


@njit(parallel=True, cache=True)
def conv_depthwise(x, xg, w, toff, cp, rq, out, og, sc, res, rg, rrq, out2, og2, rq2):
    """Depthwise convolution (one input channel per output channel, multiplier 1): w is
    (taps, C) int32, and the inner loop runs over contiguous channels."""
    n_, oh_, ow_ = cp[N_], cp[OH], cp[OW]
    c, taps = cp[COUT], cp[TAPS]
    for row in prange(n_ * oh_):
        n = row // oh_
        oh = row - n * oh_
        acc = np.empty(c, np.int32)
        for ow in range(ow_):
            base = offset(xg, n, oh * cp[SH] - cp[PT], ow * cp[SW] - cp[PL])
            acc[:] = 0
            for t in range(taps):
                xo = base + toff[t]
                xr, wr = x[xo:xo + c], w[t]
                for k in range(c):
                    acc[k] += np.int32(xr[k]) * wr[k]
            store_pixel(acc, 0, 0, c, n, oh, ow, rq, out, og, sc, res, rg, rrq, out2, og2, rq2)
