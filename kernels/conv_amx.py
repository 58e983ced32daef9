"""The AMX convolution kernel: `conv.conv_portable`'s contract on the tile unit
(TDPBUSD, uint8 x int8 summed in groups of 4 into int32, 16 x 16 x 64 per instruction).

Implicit GEMM again, with one twist that lets a tile load read 16 output pixels at once:
a tile's rows must lie a fixed stride apart. In a haloed NHWC buffer the first tap of
output pixel (oh, ow) of image n sits at

    offset(n, -pt, -pl) + (oh * SH * Wb + ow * SW) * Cb

(Wb the buffer's width with its halo), which is linear in the "virtual pixel"
v = oh * Wv + ow with Wv = SH * Wb / SW: rows SW * Cb bytes apart. The columns
ow >= OW of a virtual row are padding work whose results are dropped (2 of Wb + 2 for a
3 x 3 convolution with stride 1). So a block is 32 virtual pixels x 32 output channels in
four 16 x 16 int32 accumulator tiles (tmm0-3), fed per 64-byte slice of the reduction by
two activation tiles (tmm4-5, 16 pixels each) and two weight tiles (tmm6-7, 16 channels
each): 4 TDPBUSD per 4 tile loads.

The reduction runs per kernel row over KW * Cb contiguous bytes (dilation 1 along W), or
per tap over Cb; it is cut into 64-byte slices, the last one running past the taps' bytes
into whatever follows (the next pixels, or the slack `slack()` asks the plan to allocate
after every buffer), always against zero weights, so it adds exactly 0. After the
reduction the four tiles go to a 32 x 32 scratch and the epilogue finishes each real
pixel as in the VNNI kernel: `epilogue.store_pixel_vec` (the last group of 16 channels
masked), or `epilogue.store_pixel` where the vector epilogue does not apply.

Weights are packed once into [block of 32 channels][tap][64-byte slice][half][16 rows of
4 reduction bytes][16 channels][4 bytes]: each weight tile is 1 KB, contiguous.

Compiled only on the "amx" path: the CPU must have AMX-INT8 and the process the OS's
permission to use tile data (`intq.kernels.cpu.has_amx`).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .conv import COUT, N_, NBLK, OW, PER_TASK, PL, PT, TAPS
from .epilogue import offset, store_pixel_called, store_pixel_vec
from .simd import tile_config, tile_dpbusd, tile_load, tile_release, tile_store, tile_zero

ROWS, COLS = 32, 32          # virtual pixels x output channels per block
# Below this many reduction bytes per output (taps x padded input channels) the VNNI
# kernel is faster: with so few multiply-adds per output the epilogue dominates, and the
# tile path's scratch round trip costs more than it saves (bench_kernels on MobileNetV2's
# 1 x 1 expansions, 16 -> 96 up to 160 -> 960, lost 15-30%; 3 x 3 layers of 64 channels
# and more, 576 bytes, gain 1.4-2.3x).
MIN_REDUCTION = 256
# cp indices past `conv`'s: virtual width, virtual pixels per image, 64-byte slices per
# tap, bytes between virtual pixels, blocks of 32 virtual pixels per image
WV, VPIX, KSTEPS, STEP, PAIRS = range(12, 17)


def slack(step: int) -> int:
    """Bytes a block may read past the input's last real pixel: up to ROWS - 1 virtual
    pixels past it, and the last 64-byte slice past its taps."""
    return ROWS * step + 64


def tile_configuration() -> np.ndarray:
    """LDTILECFG's 64 bytes: palette 1, all eight tiles 16 rows x 64 bytes."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    for t in range(8):
        cfg[16 + 2 * t] = 64  # bytes per row (little-endian uint16)
        cfg[48 + t] = 16      # rows
    return cfg


def pack_amx(w: np.ndarray, cin_pad: int) -> np.ndarray:
    """(M, C, KH, KW) integer weights -> the flat int8 AMX layout (module docstring); the
    reduction axis C is padded with zeros to a multiple of 64 and M to one of 32."""
    m, c, kh, kw = w.shape
    taps = kh * kw
    mp = -(-m // COLS) * COLS
    kp = -(-cin_pad // 64) * 64
    a = np.zeros((mp, kp, taps), np.int8)
    a[:m, :c] = w.reshape(m, c, taps)
    # [blk, half, n, slice, k4, j, tap] -> [blk, tap, slice, half, k4, n, j]
    a = a.reshape(mp // COLS, 2, 16, kp // 64, 16, 4, taps).transpose(0, 6, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(a).reshape(-1)


def virtual_width(x_wb: int, strides) -> int | None:
    """Wv for a buffer of width Wb, or None when rows are not evenly spaced (SH * Wb not a
    multiple of SW)."""
    sh, sw = strides
    return None if (sh * x_wb) % sw else sh * x_wb // sw


TILE_CONFIG = tile_configuration()


@njit(cache=True, inline="always")
def _block(x, wp, base, step, toff, taps, ksteps, wblk, scratch):
    """The 32 x 32 INT32 block of the virtual pixels whose first tap is at x[base],
    base + step, ... into scratch (row-major, 32 channels per pixel)."""
    tile_zero(0)
    tile_zero(1)
    tile_zero(2)
    tile_zero(3)
    for t in range(taps):
        a = base + toff[t]
        wt = wblk + t * ksteps * 2048
        for k in range(ksteps):
            tile_load(4, x, a + k * 64, step)
            tile_load(5, x, a + 16 * step + k * 64, step)
            tile_load(6, wp, wt + k * 2048, 64)
            tile_load(7, wp, wt + k * 2048 + 1024, 64)
            tile_dpbusd(0, 4, 6)
            tile_dpbusd(1, 4, 7)
            tile_dpbusd(2, 5, 6)
            tile_dpbusd(3, 5, 7)
    tile_store(0, scratch, 0, 128)
    tile_store(1, scratch, 16, 128)
    tile_store(2, scratch, 512, 128)
    tile_store(3, scratch, 528, 128)


@njit(parallel=True, cache=True)
def conv_amx(x, xg, wp, toff, cp, rq, out, og, sc, res, rg, rrq, out2, og2, rq2, cfg, vt):
    """Convolution (groups = 1) with fused epilogue on AMX tiles; x uint8, wp packed by
    `pack_amx`, cp as `conv.conv_portable`'s plus the virtual-pixel geometry above, NBLK
    counting blocks of 32 channels; vt the vector epilogue's tables (`store_pixel_vec`;
    empty where it does not apply); other arguments as `conv.conv_portable`."""
    vt32, vt64, rvt32, rvt64, cvt32, cvt64 = vt
    vec = vt32.size > 0
    npairs = cp[N_] * cp[PAIRS]
    chunks = -(-npairs // cp[PER_TASK])
    taps, ksteps, step, wv = cp[TAPS], cp[KSTEPS], cp[STEP], cp[WV]
    for task in prange(chunks * cp[NBLK]):
        blk = task % cp[NBLK]
        chunk = task // cp[NBLK]
        first = chunk * cp[PER_TASK]
        end = min(npairs, first + cp[PER_TASK])
        c0 = blk * COLS
        nc = min(COLS, cp[COUT] - c0)
        wblk = blk * taps * ksteps * 2048
        scratch = np.empty(ROWS * COLS, np.int32)
        tile_config(cfg)
        for i in range(first, end):
            n = i // cp[PAIRS]
            v0 = (i - n * cp[PAIRS]) * ROWS
            _block(x, wp, offset(xg, n, -cp[PT], -cp[PL]) + v0 * step, step, toff, taps, ksteps, wblk,
                   scratch)
            oh = v0 // wv
            ow = v0 - oh * wv
            for r in range(min(ROWS, cp[VPIX] - v0)):
                if ow < cp[OW]:
                    if vec:
                        store_pixel_vec(scratch, r * COLS, c0, nc, n, oh, ow, out, og, sc, res, rg, out2, og2,
                                        vt32, vt64, rvt32, rvt64, cvt32, cvt64)
                    else:  # a residual operand or copy the vector epilogue cannot take
                        store_pixel_called(scratch, r * COLS, c0, nc, n, oh, ow, rq, out, og, sc, res, rg, rrq, out2,
                                           og2, rq2)
                ow += 1
                if ow == wv:
                    ow = 0
                    oh += 1
        tile_release()

