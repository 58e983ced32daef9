"""The AVX-512 VNNI convolution kernel: `conv.conv_portable`'s contract, at the instruction
onnxruntime's INT8 path uses (`vpdpbusd`, uint8 x int8 summed in groups of 4 into int32).

The micro-kernel keeps a 6 x 64 tile in 24 zmm accumulators (6 output pixels x 4 vectors
of 16 channels). Per 4 input channels it loads 4 weight vectors and broadcasts each
pixel's 4 activation bytes once: 24 dot-product instructions per 10 loads. The unrolled
body is written out by hand because Numba has no register-array type; every line has
the same shape.

Compiled only on the "vnni" and "amx" paths (a CPU without VNNI would fault).
"""
from __future__ import annotations

from numba import njit, prange

from .conv import CIN, COUT, TAPS, TILE_M, TILE_N, _task, _task_count, _tile_pixels
from .epilogue import store_pixel, store_pixel_vec
from .simd import vbroadcast4, vdpbusd, vload, vstore, vzero


@njit(cache=True)
def _tile_vnni(x, wp, wbase, toff, taps, c4n, b0, b1, b2, b3, b4, b5, tile):
    a00 = a01 = a02 = a03 = vzero()
    a10 = a11 = a12 = a13 = vzero()
    a20 = a21 = a22 = a23 = vzero()
    a30 = a31 = a32 = a33 = vzero()
    a40 = a41 = a42 = a43 = vzero()
    a50 = a51 = a52 = a53 = vzero()
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
            a00 = vdpbusd(a00, v, w0)
            a01 = vdpbusd(a01, v, w1)
            a02 = vdpbusd(a02, v, w2)
            a03 = vdpbusd(a03, v, w3)
            v = vbroadcast4(x, b1 + k)
            a10 = vdpbusd(a10, v, w0)
            a11 = vdpbusd(a11, v, w1)
            a12 = vdpbusd(a12, v, w2)
            a13 = vdpbusd(a13, v, w3)
            v = vbroadcast4(x, b2 + k)
            a20 = vdpbusd(a20, v, w0)
            a21 = vdpbusd(a21, v, w1)
            a22 = vdpbusd(a22, v, w2)
            a23 = vdpbusd(a23, v, w3)
            v = vbroadcast4(x, b3 + k)
            a30 = vdpbusd(a30, v, w0)
            a31 = vdpbusd(a31, v, w1)
            a32 = vdpbusd(a32, v, w2)
            a33 = vdpbusd(a33, v, w3)
            v = vbroadcast4(x, b4 + k)
            a40 = vdpbusd(a40, v, w0)
            a41 = vdpbusd(a41, v, w1)
            a42 = vdpbusd(a42, v, w2)
            a43 = vdpbusd(a43, v, w3)
            v = vbroadcast4(x, b5 + k)
            a50 = vdpbusd(a50, v, w0)
            a51 = vdpbusd(a51, v, w1)
            a52 = vdpbusd(a52, v, w2)
            a53 = vdpbusd(a53, v, w3)
    vstore(tile, 0, a00)
    vstore(tile, 16, a01)
    vstore(tile, 32, a02)
    vstore(tile, 48, a03)
    vstore(tile, 64, a10)
    vstore(tile, 80, a11)
    vstore(tile, 96, a12)
    vstore(tile, 112, a13)
    vstore(tile, 128, a20)
    vstore(tile, 144, a21)
    vstore(tile, 160, a22)
    vstore(tile, 176, a23)
    vstore(tile, 192, a30)
    vstore(tile, 208, a31)
    vstore(tile, 224, a32)
    vstore(tile, 240, a33)
    vstore(tile, 256, a40)
    vstore(tile, 272, a41)
    vstore(tile, 288, a42)
    vstore(tile, 304, a43)
    vstore(tile, 320, a50)
    vstore(tile, 336, a51)
    vstore(tile, 352, a52)
    vstore(tile, 368, a53)


@njit(parallel=True, cache=True)
def conv_vnni(x, xg, wp, toff, cp, rq, out, og, sc, res, rg, rrq, out2, og2, rq2, vt):
    """Convolution (groups = 1) or Linear with fused epilogue; x uint8, wp packed by
    `conv.pack_vnni`; vt the vector epilogue's tables (`epilogue.store_pixel_vec`, empty
    where it does not apply); other arguments as `conv.conv_portable`."""
    taps, c4n = cp[TAPS], cp[CIN] // 4
    vec = vt[0].size > 0
    for task in prange(_task_count(cp)):
        blk, first, end, wbase, tile, bases, pix = _task(task, cp)
        c0 = blk * TILE_N
        for i in range(first, end):
            rows_here = _tile_pixels(i * TILE_M, cp, xg, pix, bases)
            _tile_vnni(x, wp, wbase, toff, taps, c4n, bases[0], bases[1], bases[2], bases[3], bases[4],
                       bases[5], tile)
            nc = min(TILE_N, cp[COUT] - c0)
            done = 16 * (nc // 16) if vec else 0
            for p in range(rows_here if done else 0):
                store_pixel_vec(tile, p * TILE_N, c0, done // 16, pix[p, 0], pix[p, 1], pix[p, 2], out, og, sc,
                                res, rg, out2, og2, vt)
            for p in range(rows_here if done < nc else 0):  # channels the vector epilogue cannot take
                store_pixel(tile, p * TILE_N + done, c0 + done, nc - done, pix[p, 0], pix[p, 1], pix[p, 2], rq,
                            out, og, sc, res, rg, rrq, out2, og2, rq2)
