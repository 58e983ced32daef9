"""The AVX2 convolution kernels: `conv.conv_portable`'s contract on 256-bit registers, for
CPUs without AVX-512 VNNI (`intq.kernels.cpu`'s "avx2" path), and a depthwise kernel
by rows (`conv_depthwise_rows`; other depthwise layers take `conv_vnni`'s 16-lane
kernel, which LLVM splits into ymm halves).

Each int32 lane sums 4 byte products, as `vpdpbusd` would, through `simd_avx2.dot4_wide`
(which says how, and why exactly): the weights are packed at plan time as 16-bit pairs
(`pack_avx2_wide`, twice the bytes of int8) and `vpmaddwd` multiplies them by the
activation bytes zero-extended in the register. INT4 layers take the same form: the byte
form (`vpmaddubsw`, exact for weights in [-64, 64]) issues as many multiplies, and its
5-pixel tile ran ResNet18's INT4 3x3 layers at 70 GOPS against this one's 85 on an
AVX2-only AMD EPYC, so INT4 would have been slower than INT8.

Tiles are 16 output channels (2 ymm) by 4 pixels: 8 accumulators, 4 weight registers,
the broadcast activation word and its two 16-bit halves, what 16 ymm registers hold
(3 and 6 pixels measured slower). Weights are in `conv.pack_vnni`'s order with 8 lanes
per vector, split into the two arrays of 16-bit pairs (`pack_avx2_wide`); activations
are read in place, as in the other paths (uint8 containers only: `ConvStep` sends
anything else to the portable kernel). The epilogue is the vector one
(`epilogue.store_tile_vec`: LLVM splits its 16-lane vectors into ymm halves), or the
scalar one called where that cannot take the operands.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .conv import CIN, COUT, OW, TAPS, _task, _task_count, _tile_pixels, pack_vnni
from .conv_vnni import depthwise_row_setup, depthwise_row_task
from .epilogue import store_pixel_called, store_tile_vec
from .simd import vepi_requant_rows, vmadd_taps, vrows, vzero
from .simd_avx2 import dot4_wide, ybroadcast4, yload, ystore, yzero

TILE_N = 16
TILE_PIXELS = 4
PIXELS = 13  # cp index of the tile's pixels (as `conv_vnni.PIXELS`)


def pack_avx2_wide(w: np.ndarray, cin_pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, C, KH, KW) int8 weights -> `conv.pack_vnni`'s layout with 8 lanes per vector,
    [block of 16][tap][input channel / 4][2 vectors][8 lanes][4 weights], each lane's 4
    weights (w0, w1, w2, w3) as the 16-bit pairs (w0, w2) and (w1, w3), in two arrays;
    input channels padded with zeros. Each array is returned as its bytes (int8), so that
    a vector sits at the same byte offset in both and the kernel indexes them alike."""
    lanes = pack_vnni(w, cin_pad, TILE_N, lanes=8).reshape(-1, 4).astype(np.int16)
    return tuple(np.ascontiguousarray(lanes[:, k::2]).reshape(-1).view(np.int8) for k in (0, 1))


@njit(cache=True)
def _tile_wide(x, we, wo, wbase, toff, taps, c4n, bases, tile):
    """4 pixels x 16 channels: 8 accumulators, the weights as 16-bit pairs (even, odd)."""
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
def conv_avx2(x, xg, wp, toff, cp, rq, out, og, sc, res, rg, rrq, out2, og2, rq2, vt, wodd):
    """Convolution (groups = 1) or Linear with fused epilogue; x uint8, wp and wodd the
    even and odd 16-bit pairs of `pack_avx2_wide`; vt the vector epilogue's tables
    (`epilogue.store_tile_vec`, empty where it does not apply); other arguments as
    `conv.conv_portable`, cp[PIXELS] the tile's pixels."""
    taps, c4n, tm = cp[TAPS], cp[CIN] // 4, cp[PIXELS]
    vt32, vt64, rvt32, rvt64, cvt32, cvt64 = vt
    vec = vt32.size > 0
    for task in prange(_task_count(cp, tm)):
        blk, first, end, wbase, tile, bases, pix = _task(task, cp, tm, TILE_N)
        c0 = blk * TILE_N
        nc = min(TILE_N, cp[COUT] - c0)
        for i in range(first, end):
            rows_here = _tile_pixels(i * tm, cp, xg, pix, bases, tm)
            _tile_wide(x, wp, wodd, wbase, toff, taps, c4n, bases, tile)
            if vec:
                store_tile_vec(tile, TILE_N, rows_here, pix, c0, nc, out, og, sc, res, rg, out2, og2, vt32, vt64,
                               rvt32, rvt64, cvt32, cvt64)
            else:  # a residual operand or copy the vector epilogue cannot take (see `store_pixel_vec`)
                for p in range(rows_here):
                    store_pixel_called(tile, p * TILE_N, c0, nc, pix[p, 0], pix[p, 1], pix[p, 2], rq, out, og, sc,
                                       res, rg, rrq, out2, og2, rq2)


@njit(cache=True, inline="always")
def _depthwise_row(x, xb, xstep, w, toff, taps, g, ow_, out, ob, ostep, vt32, vt64, zo, lo, hi, nl, narrow):
    """One output row of channel group g (16 channels, LLVM's 16-lane vectors in ymm
    halves): per pixel the taps' int32 products summed (`simd.vmadd_taps`), then
    `vepi_requant_rows` with the group's tables loaded once for the row."""
    rows = vrows(vt32, vt64, 32 * g)
    for ow in range(ow_):
        a = vzero()
        xo = xb + ow * xstep + 16 * g
        for t in range(taps):
            a = vmadd_taps(a, x, xo + toff[t], w[t], 16 * g, nl)
        vepi_requant_rows(a, rows, out, ob + ow * ostep + 16 * g, zo, lo, hi, nl, narrow)


@njit(parallel=True, cache=True)
def conv_depthwise_rows(x, xg, w, toff, cp, out, og, sc, vt32, vt64):
    """Depthwise convolution (multiplier 1) of uint8 activations into a Requantize (no
    residual, no copy) on the AVX2 path: `conv_vnni.conv_depthwise_dot4`'s row tasks and
    row epilogue, with int32 products per tap in place of `vpdpbusd` (AVX2 has none).
    Keeping each (row, channel group)'s tables in registers is what pays: on a Zen 3
    EPYC, MobileNetV2's 17 depthwise layers (batch 1) took 1.24 ms this way, 2.67 ms with
    `conv_vnni.conv_depthwise_vnni`'s per-pixel epilogue and 3.50 ms on the portable
    kernel. w from `conv_vnni.pack_depthwise`; vt32, vt64 from `epilogue.vector_tables`;
    other arguments as `conv.conv_depthwise`."""
    tasks, groups, full, rest, zo, lo, hi, xstep, ostep = depthwise_row_setup(cp, sc, xg, og)
    taps, ow_ = cp[TAPS], cp[OW]
    for task in prange(tasks):
        g, xb, ob = depthwise_row_task(task, groups, cp, xg, og)
        # literal lane counts and narrow flags: each call compiles its own masks and DN form
        if g < full:
            if sc[10]:
                _depthwise_row(x, xb, xstep, w, toff, taps, g, ow_, out, ob, ostep, vt32, vt64, zo, lo, hi, 16, True)
            else:
                _depthwise_row(x, xb, xstep, w, toff, taps, g, ow_, out, ob, ostep, vt32, vt64, zo, lo, hi, 16, False)
        elif sc[10]:
            _depthwise_row(x, xb, xstep, w, toff, taps, g, ow_, out, ob, ostep, vt32, vt64, zo, lo, hi, rest, True)
        else:
            _depthwise_row(x, xb, xstep, w, toff, taps, g, ow_, out, ob, ostep, vt32, vt64, zo, lo, hi, rest, False)
