"""The AVX2 convolution kernel: `conv.conv_portable`'s contract on 256-bit registers, for
CPUs without AVX-512 VNNI (`intq.kernels.cpu`'s "avx2" path).

Each int32 lane sums 4 byte products, as `vpdpbusd` would, from `vpmaddubsw` and
`vpmaddwd` (`simd_avx2.dot4`); the module docstring of `simd_avx2` says why no int16
step saturates. A layer whose weights all lie in [-64, 64] (every INT4 layer) takes
`dot4` directly; any other (INT8) has its weights split at plan time into w = 64 h + l,
both halves in that range, and takes `dot4_split`, twice the multiplies.

Tiles are 16 output channels (2 ymm) by 5 pixels (10 accumulators, `_tile_plain`) or 3
pixels (6 accumulators and 4 weight registers, `_tile_split`): what 16 ymm registers
hold with the broadcast operand. Weights are packed by `pack_avx2` into [block of 16
channels][tap][input channel / 4][2 vectors][8 lanes][4 bytes], one 32-byte load per
vector; activations are read in place, as in the other paths (uint8 containers only:
`ConvStep` sends anything else to the portable kernel). The epilogue is
`epilogue.store_pixel`'s plain loops.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .conv import COUT, TAPS, CIN, _task, _task_count, _tile_pixels, pack_vnni
from .epilogue import store_pixel
from .simd_avx2 import dot4, dot4_split, ybroadcast4, yload, ystore, yzero

TILE_N = 16
TILE_PIXELS = {False: 5, True: 3}  # by split
PIXELS = 13  # cp index of the tile's pixels (as `conv_vnni.PIXELS`)


def needs_split(w: np.ndarray) -> bool:
    """Whether some weight lies outside [-64, 64] (see `simd_avx2`)."""
    return bool(w.size) and (int(w.min()) < -64 or int(w.max()) > 64)


def split_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w = 64 h + l with h = floor((w + 32) / 64) in [-2, 2] and l in [-32, 31]."""
    w = np.asarray(w, np.int64)
    h = np.floor_divide(w + 32, 64)
    return h, w - 64 * h


def pack_avx2(w: np.ndarray, cin_pad: int) -> np.ndarray:
    """(M, C, KH, KW) integer weights (each in [-64, 64]) -> flat int8 [block of 16][tap]
    [input channel / 4][2 vectors][8 lanes][4 bytes]; input channels padded with zeros."""
    return pack_vnni(w, cin_pad, TILE_N, lanes=8)


@njit(cache=True)
def _tile_plain(x, wh, wbase, toff, taps, c4n, bases, tile):
    """5 pixels x 16 channels: 10 accumulators."""
    b0 = bases[0]
    b1 = bases[1]
    b2 = bases[2]
    b3 = bases[3]
    b4 = bases[4]
    a0_0 = a0_1 = yzero()
    a1_0 = a1_1 = yzero()
    a2_0 = a2_1 = yzero()
    a3_0 = a3_1 = yzero()
    a4_0 = a4_1 = yzero()
    for t in range(taps):
        xo = toff[t]
        wo = wbase + t * c4n * 64
        for c4 in range(c4n):
            wi = wo + c4 * 64
            h0 = yload(wh, wi)
            h1 = yload(wh, wi + 32)
            k = xo + c4 * 4
            v = ybroadcast4(x, b0 + k)
            a0_0 = dot4(a0_0, v, h0)
            a0_1 = dot4(a0_1, v, h1)
            v = ybroadcast4(x, b1 + k)
            a1_0 = dot4(a1_0, v, h0)
            a1_1 = dot4(a1_1, v, h1)
            v = ybroadcast4(x, b2 + k)
            a2_0 = dot4(a2_0, v, h0)
            a2_1 = dot4(a2_1, v, h1)
            v = ybroadcast4(x, b3 + k)
            a3_0 = dot4(a3_0, v, h0)
            a3_1 = dot4(a3_1, v, h1)
            v = ybroadcast4(x, b4 + k)
            a4_0 = dot4(a4_0, v, h0)
            a4_1 = dot4(a4_1, v, h1)
    ystore(tile, 0, a0_0)
    ystore(tile, 8, a0_1)
    ystore(tile, 16, a1_0)
    ystore(tile, 24, a1_1)
    ystore(tile, 32, a2_0)
    ystore(tile, 40, a2_1)
    ystore(tile, 48, a3_0)
    ystore(tile, 56, a3_1)
    ystore(tile, 64, a4_0)
    ystore(tile, 72, a4_1)


@njit(cache=True)
def _tile_split(x, wh, wl, wbase, toff, taps, c4n, bases, tile):
    """3 pixels x 16 channels: 6 accumulators, INT8 weights split (h, l)."""
    b0 = bases[0]
    b1 = bases[1]
    b2 = bases[2]
    a0_0 = a0_1 = yzero()
    a1_0 = a1_1 = yzero()
    a2_0 = a2_1 = yzero()
    for t in range(taps):
        xo = toff[t]
        wo = wbase + t * c4n * 64
        for c4 in range(c4n):
            wi = wo + c4 * 64
            h0 = yload(wh, wi)
            l0 = yload(wl, wi)
            h1 = yload(wh, wi + 32)
            l1 = yload(wl, wi + 32)
            k = xo + c4 * 4
            v = ybroadcast4(x, b0 + k)
            a0_0 = dot4_split(a0_0, v, h0, l0)
            a0_1 = dot4_split(a0_1, v, h1, l1)
            v = ybroadcast4(x, b1 + k)
            a1_0 = dot4_split(a1_0, v, h0, l0)
            a1_1 = dot4_split(a1_1, v, h1, l1)
            v = ybroadcast4(x, b2 + k)
            a2_0 = dot4_split(a2_0, v, h0, l0)
            a2_1 = dot4_split(a2_1, v, h1, l1)
    ystore(tile, 0, a0_0)
    ystore(tile, 8, a0_1)
    ystore(tile, 16, a1_0)
    ystore(tile, 24, a1_1)
    ystore(tile, 32, a2_0)
    ystore(tile, 40, a2_1)



@njit(parallel=True, cache=True)
def conv_avx2(x, xg, wp, toff, cp, rq, out, og, sc, res, rg, rrq, out2, og2, rq2, wl, split):
    """Convolution (groups = 1) or Linear with fused epilogue; x uint8, wp packed by
    `pack_avx2` (the h halves when split, else the weights), wl the l halves (split) or
    anything; other arguments as `conv.conv_portable`, cp[PIXELS] the tile's pixels."""
    taps, c4n, tm = cp[TAPS], cp[CIN] // 4, cp[PIXELS]
    for task in prange(_task_count(cp, tm)):
        blk, first, end, wbase, tile, bases, pix = _task(task, cp, tm, TILE_N)
        c0 = blk * TILE_N
        nc = min(TILE_N, cp[COUT] - c0)
        for i in range(first, end):
            rows_here = _tile_pixels(i * tm, cp, xg, pix, bases, tm)
            if split:
                _tile_split(x, wp, wl, wbase, toff, taps, c4n, bases, tile)
            else:
                _tile_plain(x, wp, wbase, toff, taps, c4n, bases, tile)
            for p in range(rows_here):
                store_pixel(tile, p * TILE_N, c0, nc, pix[p, 0], pix[p, 1], pix[p, 2], rq, out, og, sc, res, rg,
                            rrq, out2, og2, rq2)
