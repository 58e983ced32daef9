"""The AVX2 convolution kernel: `conv.conv_portable`'s contract on 256-bit registers, for
CPUs without AVX-512 VNNI (`intq.kernels.cpu`'s "avx2" path).

Each int32 lane sums 4 byte products, as `vpdpbusd` would (`simd_avx2` says how, and
why exactly). A layer whose weights all lie in [-64, 64] (every INT4 layer) takes
`dot4`: `vpmaddubsw` then `vpmaddwd` on int8 weights. Any other (INT8) takes
`dot4_wide`: its weights are packed at plan time as 16-bit pairs (`pack_avx2_wide`, twice
the bytes) and `vpmaddwd` multiplies them by the activations' bytes zero-extended in
the register, as many multiplies as `dot4`.

Tiles are 16 output channels (2 ymm) by 5 pixels (10 accumulators, `_tile_plain`) or 4
pixels (8 accumulators, 4 weight registers and the activation word's two halves,
`_tile_wide`): what 16 ymm registers hold beside the broadcast operand. Weights are
packed by `pack_avx2` into [block of 16 channels][tap][input channel / 4][2 vectors]
[8 lanes][4 bytes], one 32-byte load per vector (`pack_avx2_wide`: the same order, each
lane's 4 weights as two arrays of 16-bit pairs); activations are read in place, as in
the other paths (uint8 containers only: `ConvStep` sends anything else to the portable
kernel). The epilogue is `epilogue.store_pixel`'s plain loops.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .conv import COUT, TAPS, CIN, _task, _task_count, _tile_pixels, pack_vnni
from .epilogue import store_pixel_called, store_tile_vec
from .simd_avx2 import dot4, dot4_wide, ybroadcast4, yload, ystore, yzero

TILE_N = 16
TILE_PIXELS = {False: 5, True: 4}  # by wide
PIXELS = 13  # cp index of the tile's pixels (as `conv_vnni.PIXELS`)


def needs_wide(w: np.ndarray) -> bool:
    """Whether some weight lies outside [-64, 64], where `dot4` could saturate (see
    `simd_avx2`), so that the layer takes `dot4_wide`."""
    return bool(w.size) and (int(w.min()) < -64 or int(w.max()) > 64)


def pack_avx2(w: np.ndarray, cin_pad: int) -> np.ndarray:
    """(M, C, KH, KW) integer weights (each in [-64, 64]) -> flat int8 [block of 16][tap]
    [input channel / 4][2 vectors][8 lanes][4 bytes]; input channels padded with zeros."""
    return pack_vnni(w, cin_pad, TILE_N, lanes=8)


def pack_avx2_wide(w: np.ndarray, cin_pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, C, KH, KW) int8 weights -> `pack_avx2`'s layout with each lane's 4 weights
    (w0, w1, w2, w3) as the 16-bit pairs (w0, w2) and (w1, w3), in two arrays; each is
    returned as its bytes (int8), so that a vector sits at the same byte offset in both
    as in `pack_avx2`'s, and the kernel indexes them alike."""
    lanes = pack_avx2(w, cin_pad).reshape(-1, 4).astype(np.int16)
    return tuple(np.ascontiguousarray(lanes[:, k::2]).reshape(-1).view(np.int8) for k in (0, 1))


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
def _tile_wide(x, we, wo, wbase, toff, taps, c4n, bases, tile):
    """4 pixels x 16 channels: 8 accumulators, INT8 weights as 16-bit pairs (even, odd)."""
    b0 = bases[0]
    b1 = bases[1]
    b2 = bases[2]
    b3 = bases[3]
    a0_0 = a0_1 = yzero()
    a1_0 = a1_1 = yzero()
    a2_0 = a2_1 = yzero()
    a3_0 = a3_1 = yzero()
    for t in range(taps):
        xo = toff[t]
        wo_t = wbase + t * c4n * 64
        for c4 in range(c4n):
            wi = wo_t + c4 * 64
            e0 = yload(we, wi)
            o0 = yload(wo, wi)
            e1 = yload(we, wi + 32)
            o1 = yload(wo, wi + 32)
            k = xo + c4 * 4
            v = ybroadcast4(x, b0 + k)
            a0_0 = dot4_wide(a0_0, v, e0, o0)
            a0_1 = dot4_wide(a0_1, v, e1, o1)
            v = ybroadcast4(x, b1 + k)
            a1_0 = dot4_wide(a1_0, v, e0, o0)
            a1_1 = dot4_wide(a1_1, v, e1, o1)
            v = ybroadcast4(x, b2 + k)
            a2_0 = dot4_wide(a2_0, v, e0, o0)
            a2_1 = dot4_wide(a2_1, v, e1, o1)
            v = ybroadcast4(x, b3 + k)
            a3_0 = dot4_wide(a3_0, v, e0, o0)
            a3_1 = dot4_wide(a3_1, v, e1, o1)
    ystore(tile, 0, a0_0)
    ystore(tile, 8, a0_1)
    ystore(tile, 16, a1_0)
    ystore(tile, 24, a1_1)
    ystore(tile, 32, a2_0)
    ystore(tile, 40, a2_1)
    ystore(tile, 48, a3_0)
    ystore(tile, 56, a3_1)


@njit(parallel=True, cache=True)
def conv_avx2(x, xg, wp, toff, cp, rq, out, og, sc, res, rg, rrq, out2, og2, rq2, vt, wodd, wide):
    """Convolution (groups = 1) or Linear with fused epilogue; x uint8, wp packed by
    `pack_avx2`, or when wide the even pairs of `pack_avx2_wide` and wodd its odd pairs
    (else anything); vt the vector epilogue's tables (`epilogue.store_tile_vec`, empty
    where it does not apply); other arguments as `conv.conv_portable`, cp[PIXELS] the
    tile's pixels."""
    taps, c4n, tm = cp[TAPS], cp[CIN] // 4, cp[PIXELS]
    vt32, vt64, rvt32, rvt64, cvt32, cvt64 = vt
    vec = vt32.size > 0
    for task in prange(_task_count(cp, tm)):
        blk, first, end, wbase, tile, bases, pix = _task(task, cp, tm, TILE_N)
        c0 = blk * TILE_N
        nc = min(TILE_N, cp[COUT] - c0)
        for i in range(first, end):
            rows_here = _tile_pixels(i * tm, cp, xg, pix, bases, tm)
            if wide:
                _tile_wide(x, wp, wodd, wbase, toff, taps, c4n, bases, tile)
            else:
                _tile_plain(x, wp, wbase, toff, taps, c4n, bases, tile)
            if vec:
                store_tile_vec(tile, TILE_N, rows_here, pix, c0, nc, out, og, sc, res, rg, out2, og2, vt32, vt64,
                               rvt32, rvt64, cvt32, cvt64)
            else:  # a residual operand or copy the vector epilogue cannot take (see `store_pixel_vec`)
                for p in range(rows_here):
                    store_pixel_called(tile, p * TILE_N, c0, nc, pix[p, 0], pix[p, 1], pix[p, 2], rq, out, og, sc,
                                       res, rg, rrq, out2, og2, rq2)
