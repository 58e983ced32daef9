"""The AVX-512 VNNI convolution kernel: `conv.conv_portable`'s contract, at the instruction
onnxruntime's INT8 path uses (`vpdpbusd`, uint8 x int8 summed in groups of 4 into int32).

The micro-kernel keeps a tile of pixels x channels in 24 zmm accumulators. Per 4 input
channels it loads one weight vector per 16 channels and broadcasts each pixel's 4
activation bytes once, then issues 24 dot-product instructions. The tile's shape follows
the layer's output channels, so that narrow layers (MobileNet's 16- to 32-channel
projections) do not compute a 64-wide block that is mostly padding:

    tile     accumulators   loads per 24 vpdpbusd
    6 x 64   6 x 4          4 + 6
    8 x 48   8 x 3          3 + 8
    12 x 32  12 x 2         2 + 12
    24 x 16  24 x 1         1 + 24

`tile_vectors` picks the width with the least padding (the wider tile on a tie: fewer
loads). The unrolled bodies are written out because Numba has no register-array type;
every line has the same shape.

Compiled only on the "vnni" and "amx" paths (a CPU without VNNI would fault).
"""
from __future__ import annotations

from numba import njit, prange

import numpy as np

from .conv import COUT, N_, OH, OW, PL, PT, SH, SW, TAPS, CIN, _task, _task_count, _tile_pixels
from .epilogue import offset, store_pixel_called, store_pixel_vec, store_tile_vec
from .simd import vbroadcast4, vdpbusd, vepi_requant_rows, vload, vmadd_taps, vrows, vstore, vtaps4, vzero

# Pixels per tile for tiles of 1, 2, 3 or 4 vectors of 16 channels (24 accumulators each).
TILE_PIXELS = {1: 24, 2: 12, 3: 8, 4: 6}
# cp indices past `conv`'s: the tile's vectors of 16 channels and its pixels.
VECTORS, PIXELS = 12, 13


def tile_vectors(cout: int) -> int:
    """How many 16-channel vectors wide this layer's tiles are: least padding of the last
    channel block, then the widest."""
    return min((4, 3, 2, 1), key=lambda nv: (-(-cout // (16 * nv)) * 16 * nv, -nv))


@njit(cache=True)
def _tile_24x16(x, wp, wbase, toff, taps, c4n, bases, tile):
    """24 pixels x 16 channels: 24 accumulators, 1 weight vector."""
    b0 = bases[0]
    b1 = bases[1]
    b2 = bases[2]
    b3 = bases[3]
    b4 = bases[4]
    b5 = bases[5]
    b6 = bases[6]
    b7 = bases[7]
    b8 = bases[8]
    b9 = bases[9]
    b10 = bases[10]
    b11 = bases[11]
    b12 = bases[12]
    b13 = bases[13]
    b14 = bases[14]
    b15 = bases[15]
    b16 = bases[16]
    b17 = bases[17]
    b18 = bases[18]
    b19 = bases[19]
    b20 = bases[20]
    b21 = bases[21]
    b22 = bases[22]
    b23 = bases[23]
    a0_0 = vzero()
    a1_0 = vzero()
    a2_0 = vzero()
    a3_0 = vzero()
    a4_0 = vzero()
    a5_0 = vzero()
    a6_0 = vzero()
    a7_0 = vzero()
    a8_0 = vzero()
    a9_0 = vzero()
    a10_0 = vzero()
    a11_0 = vzero()
    a12_0 = vzero()
    a13_0 = vzero()
    a14_0 = vzero()
    a15_0 = vzero()
    a16_0 = vzero()
    a17_0 = vzero()
    a18_0 = vzero()
    a19_0 = vzero()
    a20_0 = vzero()
    a21_0 = vzero()
    a22_0 = vzero()
    a23_0 = vzero()
    for t in range(taps):
        xo = toff[t]
        wo = wbase + t * c4n * 64
        for c4 in range(c4n):
            wi = wo + c4 * 64
            w0 = vload(wp, wi)
            k = xo + c4 * 4
            v = vbroadcast4(x, b0 + k)
            a0_0 = vdpbusd(a0_0, v, w0)
            v = vbroadcast4(x, b1 + k)
            a1_0 = vdpbusd(a1_0, v, w0)
            v = vbroadcast4(x, b2 + k)
            a2_0 = vdpbusd(a2_0, v, w0)
            v = vbroadcast4(x, b3 + k)
            a3_0 = vdpbusd(a3_0, v, w0)
            v = vbroadcast4(x, b4 + k)
            a4_0 = vdpbusd(a4_0, v, w0)
            v = vbroadcast4(x, b5 + k)
            a5_0 = vdpbusd(a5_0, v, w0)
            v = vbroadcast4(x, b6 + k)
            a6_0 = vdpbusd(a6_0, v, w0)
            v = vbroadcast4(x, b7 + k)
            a7_0 = vdpbusd(a7_0, v, w0)
            v = vbroadcast4(x, b8 + k)
            a8_0 = vdpbusd(a8_0, v, w0)
            v = vbroadcast4(x, b9 + k)
            a9_0 = vdpbusd(a9_0, v, w0)
            v = vbroadcast4(x, b10 + k)
            a10_0 = vdpbusd(a10_0, v, w0)
            v = vbroadcast4(x, b11 + k)
            a11_0 = vdpbusd(a11_0, v, w0)
            v = vbroadcast4(x, b12 + k)
            a12_0 = vdpbusd(a12_0, v, w0)
            v = vbroadcast4(x, b13 + k)
            a13_0 = vdpbusd(a13_0, v, w0)
            v = vbroadcast4(x, b14 + k)
            a14_0 = vdpbusd(a14_0, v, w0)
            v = vbroadcast4(x, b15 + k)
            a15_0 = vdpbusd(a15_0, v, w0)
            v = vbroadcast4(x, b16 + k)
            a16_0 = vdpbusd(a16_0, v, w0)
            v = vbroadcast4(x, b17 + k)
            a17_0 = vdpbusd(a17_0, v, w0)
            v = vbroadcast4(x, b18 + k)
            a18_0 = vdpbusd(a18_0, v, w0)
            v = vbroadcast4(x, b19 + k)
            a19_0 = vdpbusd(a19_0, v, w0)
            v = vbroadcast4(x, b20 + k)
            a20_0 = vdpbusd(a20_0, v, w0)
            v = vbroadcast4(x, b21 + k)
            a21_0 = vdpbusd(a21_0, v, w0)
            v = vbroadcast4(x, b22 + k)
            a22_0 = vdpbusd(a22_0, v, w0)
            v = vbroadcast4(x, b23 + k)
            a23_0 = vdpbusd(a23_0, v, w0)
    vstore(tile, 0, a0_0)
    vstore(tile, 16, a1_0)
    vstore(tile, 32, a2_0)
    vstore(tile, 48, a3_0)
    vstore(tile, 64, a4_0)
    vstore(tile, 80, a5_0)
    vstore(tile, 96, a6_0)
    vstore(tile, 112, a7_0)
    vstore(tile, 128, a8_0)
    vstore(tile, 144, a9_0)
    vstore(tile, 160, a10_0)
    vstore(tile, 176, a11_0)
    vstore(tile, 192, a12_0)
    vstore(tile, 208, a13_0)
    vstore(tile, 224, a14_0)
    vstore(tile, 240, a15_0)
    vstore(tile, 256, a16_0)
    vstore(tile, 272, a17_0)
    vstore(tile, 288, a18_0)
    vstore(tile, 304, a19_0)
    vstore(tile, 320, a20_0)
    vstore(tile, 336, a21_0)
    vstore(tile, 352, a22_0)
    vstore(tile, 368, a23_0)


@njit(cache=True)
def _tile_12x32(x, wp, wbase, toff, taps, c4n, bases, tile):
    """12 pixels x 32 channels: 24 accumulators, 2 weight vectors."""
    b0 = bases[0]
    b1 = bases[1]
    b2 = bases[2]
    b3 = bases[3]
    b4 = bases[4]
    b5 = bases[5]
    b6 = bases[6]
    b7 = bases[7]
    b8 = bases[8]
    b9 = bases[9]
    b10 = bases[10]
    b11 = bases[11]
    a0_0 = a0_1 = vzero()
    a1_0 = a1_1 = vzero()
    a2_0 = a2_1 = vzero()
    a3_0 = a3_1 = vzero()
    a4_0 = a4_1 = vzero()
    a5_0 = a5_1 = vzero()
    a6_0 = a6_1 = vzero()
    a7_0 = a7_1 = vzero()
    a8_0 = a8_1 = vzero()
    a9_0 = a9_1 = vzero()
    a10_0 = a10_1 = vzero()
    a11_0 = a11_1 = vzero()
    for t in range(taps):
        xo = toff[t]
        wo = wbase + t * c4n * 128
        for c4 in range(c4n):
            wi = wo + c4 * 128
            w0 = vload(wp, wi)
            w1 = vload(wp, wi + 64)
            k = xo + c4 * 4
            v = vbroadcast4(x, b0 + k)
            a0_0 = vdpbusd(a0_0, v, w0)
            a0_1 = vdpbusd(a0_1, v, w1)
            v = vbroadcast4(x, b1 + k)
            a1_0 = vdpbusd(a1_0, v, w0)
            a1_1 = vdpbusd(a1_1, v, w1)
            v = vbroadcast4(x, b2 + k)
            a2_0 = vdpbusd(a2_0, v, w0)
            a2_1 = vdpbusd(a2_1, v, w1)
            v = vbroadcast4(x, b3 + k)
            a3_0 = vdpbusd(a3_0, v, w0)
            a3_1 = vdpbusd(a3_1, v, w1)
            v = vbroadcast4(x, b4 + k)
            a4_0 = vdpbusd(a4_0, v, w0)
            a4_1 = vdpbusd(a4_1, v, w1)
            v = vbroadcast4(x, b5 + k)
            a5_0 = vdpbusd(a5_0, v, w0)
            a5_1 = vdpbusd(a5_1, v, w1)
            v = vbroadcast4(x, b6 + k)
            a6_0 = vdpbusd(a6_0, v, w0)
            a6_1 = vdpbusd(a6_1, v, w1)
            v = vbroadcast4(x, b7 + k)
            a7_0 = vdpbusd(a7_0, v, w0)
            a7_1 = vdpbusd(a7_1, v, w1)
            v = vbroadcast4(x, b8 + k)
            a8_0 = vdpbusd(a8_0, v, w0)
            a8_1 = vdpbusd(a8_1, v, w1)
            v = vbroadcast4(x, b9 + k)
            a9_0 = vdpbusd(a9_0, v, w0)
            a9_1 = vdpbusd(a9_1, v, w1)
            v = vbroadcast4(x, b10 + k)
            a10_0 = vdpbusd(a10_0, v, w0)
            a10_1 = vdpbusd(a10_1, v, w1)
            v = vbroadcast4(x, b11 + k)
            a11_0 = vdpbusd(a11_0, v, w0)
            a11_1 = vdpbusd(a11_1, v, w1)
    vstore(tile, 0, a0_0)
    vstore(tile, 16, a0_1)
    vstore(tile, 32, a1_0)
    vstore(tile, 48, a1_1)
    vstore(tile, 64, a2_0)
    vstore(tile, 80, a2_1)
    vstore(tile, 96, a3_0)
    vstore(tile, 112, a3_1)
    vstore(tile, 128, a4_0)
    vstore(tile, 144, a4_1)
    vstore(tile, 160, a5_0)
    vstore(tile, 176, a5_1)
    vstore(tile, 192, a6_0)
    vstore(tile, 208, a6_1)
    vstore(tile, 224, a7_0)
    vstore(tile, 240, a7_1)
    vstore(tile, 256, a8_0)
    vstore(tile, 272, a8_1)
    vstore(tile, 288, a9_0)
    vstore(tile, 304, a9_1)
    vstore(tile, 320, a10_0)
    vstore(tile, 336, a10_1)
    vstore(tile, 352, a11_0)
    vstore(tile, 368, a11_1)


@njit(cache=True)
def _tile_8x48(x, wp, wbase, toff, taps, c4n, bases, tile):
    """8 pixels x 48 channels: 24 accumulators, 3 weight vectors."""
    b0 = bases[0]
    b1 = bases[1]
    b2 = bases[2]
    b3 = bases[3]
    b4 = bases[4]
    b5 = bases[5]
    b6 = bases[6]
    b7 = bases[7]
    a0_0 = a0_1 = a0_2 = vzero()
    a1_0 = a1_1 = a1_2 = vzero()
    a2_0 = a2_1 = a2_2 = vzero()
    a3_0 = a3_1 = a3_2 = vzero()
    a4_0 = a4_1 = a4_2 = vzero()
    a5_0 = a5_1 = a5_2 = vzero()
    a6_0 = a6_1 = a6_2 = vzero()
    a7_0 = a7_1 = a7_2 = vzero()
    for t in range(taps):
        xo = toff[t]
        wo = wbase + t * c4n * 192
        for c4 in range(c4n):
            wi = wo + c4 * 192
            w0 = vload(wp, wi)
            w1 = vload(wp, wi + 64)
            w2 = vload(wp, wi + 128)
            k = xo + c4 * 4
            v = vbroadcast4(x, b0 + k)
            a0_0 = vdpbusd(a0_0, v, w0)
            a0_1 = vdpbusd(a0_1, v, w1)
            a0_2 = vdpbusd(a0_2, v, w2)
            v = vbroadcast4(x, b1 + k)
            a1_0 = vdpbusd(a1_0, v, w0)
            a1_1 = vdpbusd(a1_1, v, w1)
            a1_2 = vdpbusd(a1_2, v, w2)
            v = vbroadcast4(x, b2 + k)
            a2_0 = vdpbusd(a2_0, v, w0)
            a2_1 = vdpbusd(a2_1, v, w1)
            a2_2 = vdpbusd(a2_2, v, w2)
            v = vbroadcast4(x, b3 + k)
            a3_0 = vdpbusd(a3_0, v, w0)
            a3_1 = vdpbusd(a3_1, v, w1)
            a3_2 = vdpbusd(a3_2, v, w2)
            v = vbroadcast4(x, b4 + k)
            a4_0 = vdpbusd(a4_0, v, w0)
            a4_1 = vdpbusd(a4_1, v, w1)
            a4_2 = vdpbusd(a4_2, v, w2)
            v = vbroadcast4(x, b5 + k)
            a5_0 = vdpbusd(a5_0, v, w0)
            a5_1 = vdpbusd(a5_1, v, w1)
            a5_2 = vdpbusd(a5_2, v, w2)
            v = vbroadcast4(x, b6 + k)
            a6_0 = vdpbusd(a6_0, v, w0)
            a6_1 = vdpbusd(a6_1, v, w1)
            a6_2 = vdpbusd(a6_2, v, w2)
            v = vbroadcast4(x, b7 + k)
            a7_0 = vdpbusd(a7_0, v, w0)
            a7_1 = vdpbusd(a7_1, v, w1)
            a7_2 = vdpbusd(a7_2, v, w2)
    vstore(tile, 0, a0_0)
    vstore(tile, 16, a0_1)
    vstore(tile, 32, a0_2)
    vstore(tile, 48, a1_0)
    vstore(tile, 64, a1_1)
    vstore(tile, 80, a1_2)
    vstore(tile, 96, a2_0)
    vstore(tile, 112, a2_1)
    vstore(tile, 128, a2_2)
    vstore(tile, 144, a3_0)
    vstore(tile, 160, a3_1)
    vstore(tile, 176, a3_2)
    vstore(tile, 192, a4_0)
    vstore(tile, 208, a4_1)
    vstore(tile, 224, a4_2)
    vstore(tile, 240, a5_0)
    vstore(tile, 256, a5_1)
    vstore(tile, 272, a5_2)
    vstore(tile, 288, a6_0)
    vstore(tile, 304, a6_1)
    vstore(tile, 320, a6_2)
    vstore(tile, 336, a7_0)
    vstore(tile, 352, a7_1)
    vstore(tile, 368, a7_2)


@njit(cache=True)
def _tile_6x64(x, wp, wbase, toff, taps, c4n, bases, tile):
    """6 pixels x 64 channels: 24 accumulators, 4 weight vectors."""
    b0 = bases[0]
    b1 = bases[1]
    b2 = bases[2]
    b3 = bases[3]
    b4 = bases[4]
    b5 = bases[5]
    a0_0 = a0_1 = a0_2 = a0_3 = vzero()
    a1_0 = a1_1 = a1_2 = a1_3 = vzero()
    a2_0 = a2_1 = a2_2 = a2_3 = vzero()
    a3_0 = a3_1 = a3_2 = a3_3 = vzero()
    a4_0 = a4_1 = a4_2 = a4_3 = vzero()
    a5_0 = a5_1 = a5_2 = a5_3 = vzero()
    for t in range(taps):
        xo = toff[t]
        wo = wbase + t * c4n * 256
        for c4 in range(c4n):
            wi = wo + c4 * 256
            w0 = vload(wp, wi)
            w1 = vload(wp, wi + 64)
            w2 = vload(wp, wi + 128)
            w3 = vload(wp, wi + 192)
            k = xo + c4 * 4
            v = vbroadcast4(x, b0 + k)
            a0_0 = vdpbusd(a0_0, v, w0)
            a0_1 = vdpbusd(a0_1, v, w1)
            a0_2 = vdpbusd(a0_2, v, w2)
            a0_3 = vdpbusd(a0_3, v, w3)
            v = vbroadcast4(x, b1 + k)
            a1_0 = vdpbusd(a1_0, v, w0)
            a1_1 = vdpbusd(a1_1, v, w1)
            a1_2 = vdpbusd(a1_2, v, w2)
            a1_3 = vdpbusd(a1_3, v, w3)
            v = vbroadcast4(x, b2 + k)
            a2_0 = vdpbusd(a2_0, v, w0)
            a2_1 = vdpbusd(a2_1, v, w1)
            a2_2 = vdpbusd(a2_2, v, w2)
            a2_3 = vdpbusd(a2_3, v, w3)
            v = vbroadcast4(x, b3 + k)
            a3_0 = vdpbusd(a3_0, v, w0)
            a3_1 = vdpbusd(a3_1, v, w1)
            a3_2 = vdpbusd(a3_2, v, w2)
            a3_3 = vdpbusd(a3_3, v, w3)
            v = vbroadcast4(x, b4 + k)
            a4_0 = vdpbusd(a4_0, v, w0)
            a4_1 = vdpbusd(a4_1, v, w1)
            a4_2 = vdpbusd(a4_2, v, w2)
            a4_3 = vdpbusd(a4_3, v, w3)
            v = vbroadcast4(x, b5 + k)
            a5_0 = vdpbusd(a5_0, v, w0)
            a5_1 = vdpbusd(a5_1, v, w1)
            a5_2 = vdpbusd(a5_2, v, w2)
            a5_3 = vdpbusd(a5_3, v, w3)
    vstore(tile, 0, a0_0)
    vstore(tile, 16, a0_1)
    vstore(tile, 32, a0_2)
    vstore(tile, 48, a0_3)
    vstore(tile, 64, a1_0)
    vstore(tile, 80, a1_1)
    vstore(tile, 96, a1_2)
    vstore(tile, 112, a1_3)
    vstore(tile, 128, a2_0)
    vstore(tile, 144, a2_1)
    vstore(tile, 160, a2_2)
    vstore(tile, 176, a2_3)
    vstore(tile, 192, a3_0)
    vstore(tile, 208, a3_1)
    vstore(tile, 224, a3_2)
    vstore(tile, 240, a3_3)
    vstore(tile, 256, a4_0)
    vstore(tile, 272, a4_1)
    vstore(tile, 288, a4_2)
    vstore(tile, 304, a4_3)
    vstore(tile, 320, a5_0)
    vstore(tile, 336, a5_1)
    vstore(tile, 352, a5_2)
    vstore(tile, 368, a5_3)



@njit(cache=True, inline="always")
def _tile(nv, x, wp, wbase, toff, taps, c4n, bases, tile):
    if nv == 4:
        _tile_6x64(x, wp, wbase, toff, taps, c4n, bases, tile)
    elif nv == 3:
        _tile_8x48(x, wp, wbase, toff, taps, c4n, bases, tile)
    elif nv == 2:
        _tile_12x32(x, wp, wbase, toff, taps, c4n, bases, tile)
    else:
        _tile_24x16(x, wp, wbase, toff, taps, c4n, bases, tile)


@njit(parallel=True, cache=True)
def conv_vnni(x, xg, wp, toff, cp, rq, out, og, sc, res, rg, rrq, out2, og2, rq2, vt):
    """Convolution (groups = 1) or Linear with fused epilogue; x uint8, wp packed by
    `conv.pack_vnni` in blocks of 16 * cp[VECTORS] channels; vt the vector epilogue's tables
    (`epilogue.store_tile_vec`, empty where it does not apply); other arguments as
    `conv.conv_portable`."""
    taps, c4n = cp[TAPS], cp[CIN] // 4
    nv, tm = cp[VECTORS], cp[PIXELS]
    tn = 16 * nv
    vt32, vt64, rvt32, rvt64, cvt32, cvt64 = vt
    vec = vt32.size > 0
    for task in prange(_task_count(cp, tm)):
        blk, first, end, wbase, tile, bases, pix = _task(task, cp, tm, tn)
        c0 = blk * tn
        nc = min(tn, cp[COUT] - c0)
        for i in range(first, end):
            rows_here = _tile_pixels(i * tm, cp, xg, pix, bases, tm)
            _tile(nv, x, wp, wbase, toff, taps, c4n, bases, tile)
            if vec:
                store_tile_vec(tile, tn, rows_here, pix, c0, nc, out, og, sc, res, rg, out2, og2, vt32, vt64, rvt32,
                               rvt64, cvt32, cvt64)
            else:  # a residual operand or copy the vector epilogue cannot take (see `store_pixel_vec`)
                for p in range(rows_here):
                    store_pixel_called(tile, p * tn, c0, nc, pix[p, 0], pix[p, 1], pix[p, 2], rq, out, og, sc, res,
                                       rg, rrq, out2, og2, rq2)


def pack_depthwise(w: np.ndarray) -> np.ndarray:
    """(C, 1, KH, KW) depthwise weights -> int32 [tap][channel], channels padded with
    zeros to a multiple of 16 (the last group's lanes past C multiply by 0)."""
    c = w.shape[0]
    taps = w.shape[2] * w.shape[3]
    out = np.zeros((taps, -(-c // 16) * 16), np.int32)
    out[:, :c] = w.reshape(c, taps).T
    return out


@njit(parallel=True, cache=True)
def conv_depthwise_vnni(x, xg, w, toff, cp, rq, out, og, sc, res, rg, rrq, out2, og2, rq2, vt):
    """Depthwise convolution (multiplier 1) in zmm registers: per output pixel, 16 channels
    at a time, the taps' products summed in one register (`simd.vmadd_taps`), then the
    vector epilogue; w from `pack_depthwise`; other arguments as `conv.conv_depthwise`
    plus the vector tables vt (empty where they do not apply: then `store_pixel`)."""
    n_, oh_, ow_ = cp[N_], cp[OH], cp[OW]
    c, taps = cp[COUT], cp[TAPS]
    full, rest = c // 16, c % 16
    vt32, vt64, rvt32, rvt64, cvt32, cvt64 = vt
    vec = vt32.size > 0
    for row in prange(n_ * oh_):
        n = row // oh_
        oh = row - n * oh_
        acc = np.empty(w.shape[1], np.int32)
        for ow in range(ow_):
            base = offset(xg, n, oh * cp[SH] - cp[PT], ow * cp[SW] - cp[PL])
            for g in range(full):
                a = vzero()
                for t in range(taps):
                    a = vmadd_taps(a, x, base + toff[t] + 16 * g, w[t], 16 * g, 16)
                vstore(acc, 16 * g, a)
            if rest:
                a = vzero()
                for t in range(taps):
                    a = vmadd_taps(a, x, base + toff[t] + 16 * full, w[t], 16 * full, rest)
                vstore(acc, 16 * full, a)
            if vec:
                store_pixel_vec(acc, 0, 0, c, n, oh, ow, out, og, sc, res, rg, out2, og2, vt32, vt64, rvt32,
                                rvt64, cvt32, cvt64)
            else:
                store_pixel_called(acc, 0, 0, c, n, oh, ow, rq, out, og, sc, res, rg, rrq, out2, og2, rq2)


def pack_depthwise_dot4(w: np.ndarray) -> np.ndarray:
    """(C, 1, KH, KW) depthwise weights -> int8 [channel group][tap quad][64], byte
    4 ch + j of quad q the weight of tap 4q + j of channel 16 g + ch (`simd.vtaps4`'s
    order); taps past the last and channels past C are 0."""
    c, taps = w.shape[0], w.shape[2] * w.shape[3]
    groups, quads = -(-c // 16), -(-taps // 4)
    wt = np.zeros((groups * 16, quads * 4), np.int8)
    wt[:c, :taps] = w.reshape(c, taps)
    return np.ascontiguousarray(wt.reshape(groups, 16, quads, 4).transpose(0, 2, 1, 3)).reshape(-1)


@njit(cache=True, inline="always")
def _depthwise_dot4_row(x, xb, xstep, w, toff, taps, g, ow_, out, ob, ostep, vt32, vt64, zo, lo, hi, nl, narrow):
    """One output row of channel group g: four taps per vpdpbusd, the rest (1 to 3 taps)
    in one more, then `vepi_requant_rows` with the group's tables loaded once."""
    t = 32 * g
    rows = vrows(vt32, vt64, t)
    quads, r = taps // 4, taps % 4
    wg = g * (quads + (r > 0)) * 64
    for ow in range(ow_):
        a = vzero()
        xo = xb + ow * xstep + 16 * g
        for q in range(quads):
            j = 4 * q
            a = vdpbusd(a, vtaps4(x, xo + toff[j], xo + toff[j + 1], xo + toff[j + 2], xo + toff[j + 3], 4, nl),
                        vload(w, wg + 64 * q))
        j = 4 * quads
        if r == 1:
            a = vdpbusd(a, vtaps4(x, xo + toff[j], 0, 0, 0, 1, nl), vload(w, wg + 64 * quads))
        elif r == 2:
            a = vdpbusd(a, vtaps4(x, xo + toff[j], xo + toff[j + 1], 0, 0, 2, nl), vload(w, wg + 64 * quads))
        elif r == 3:
            a = vdpbusd(a, vtaps4(x, xo + toff[j], xo + toff[j + 1], xo + toff[j + 2], 0, 3, nl),
                        vload(w, wg + 64 * quads))
        vepi_requant_rows(a, rows, out, ob + ow * ostep + 16 * g, zo, lo, hi, nl, narrow)


@njit(cache=True, inline="always")
def depthwise_row_setup(cp, sc, xg, og):
    """The loop constants of a depthwise kernel by rows: (task count, channel groups of
    16, whole groups, channels in the last, zo, lo, hi, input and output steps from one
    output pixel to the next)."""
    c = cp[COUT]
    full, rest = c // 16, c % 16
    groups = full + (rest > 0)
    return (cp[N_] * cp[OH] * groups, groups, full, rest, sc[1], sc[2], sc[3], xg[2] * cp[SW], og[2])


@njit(cache=True, inline="always")
def depthwise_row_task(task, groups, cp, xg, og):
    """(channel group, offset of its input row's first pixel, of its output row's) of
    task `task` of a depthwise kernel by rows: tasks are (image, output row, group)."""
    row = task // groups
    g = task - row * groups
    n = row // cp[OH]
    oh = row - n * cp[OH]
    return g, offset(xg, n, oh * cp[SH] - cp[PT], -cp[PL]), offset(og, n, oh, 0)


@njit(parallel=True, cache=True)
def conv_depthwise_dot4(x, xg, w, toff, cp, out, og, sc, vt32, vt64):
    """Depthwise convolution (multiplier 1) of uint8 activations into a Requantize (no
    residual, no copy): `vpdpbusd` sums four taps of 16 channels at once (`simd.vtaps4`),
    a third of the multiplies of `conv_depthwise_vnni`'s int32 products, and the epilogue
    keeps each channel group's tables in registers along an output row. Tasks are (row,
    channel group) pairs. w from `pack_depthwise_dot4`; vt32, vt64 from
    `epilogue.vector_tables`; other arguments as `conv.conv_depthwise`."""
    tasks, groups, full, rest, zo, lo, hi, xstep, ostep = depthwise_row_setup(cp, sc, xg, og)
    taps, ow_ = cp[TAPS], cp[OW]
    for task in prange(tasks):
        g, xb, ob = depthwise_row_task(task, groups, cp, xg, og)
        # literal lane counts and narrow flags: each call compiles its own masks and DN form
        if g < full:
            if sc[10]:
                _depthwise_dot4_row(x, xb, xstep, w, toff, taps, g, ow_, out, ob, ostep, vt32, vt64, zo, lo, hi,
                                    16, True)
            else:
                _depthwise_dot4_row(x, xb, xstep, w, toff, taps, g, ow_, out, ob, ostep, vt32, vt64, zo, lo, hi,
                                    16, False)
        elif sc[10]:
            _depthwise_dot4_row(x, xb, xstep, w, toff, taps, g, ow_, out, ob, ostep, vt32, vt64, zo, lo, hi,
                                rest, True)
        else:
            _depthwise_dot4_row(x, xb, xstep, w, toff, taps, g, ow_, out, ob, ostep, vt32, vt64, zo, lo, hi,
                                rest, False)
