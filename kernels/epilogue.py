"""What happens to an INT32 accumulator after the dot products: the fused epilogue.

Every Conv/Linear kernel ends here, one output pixel at a time (the VNNI kernel one group
of 16 channels at a time across its tile's pixels, `store_tile_vec`), so the accumulator
never goes to memory. `mode` picks what the layer's consumer was in the integer graph:

* REQUANT (0): `Requantize` — y = clamp(DN(acc + bias) + z_out, lo, hi) per channel.
* RESIDUAL (1): `IntAdd` of this accumulator and one other tensor r (HAWQ-V3 eq. 7) —
  y = clamp(DN_1(acc + bias) + DN_2(r - z_r) + z_out, lo, hi), each branch with its own
  per-channel multiplier, as `intq.ops.integer.IntAdd` specifies.
* RAW (2): no consumer to fuse — the INT32 accumulator acc + bias is stored.

With COPY set (sc[5] = 1), the stored y is also requantized into a second tensor, as the
`Requantize` that reads y would do: y2 = clamp(DN_2(y - z_y) + z_2, lo_2, hi_2). This is how
the 16-bit residual stream and its 8-bit copy for the next convolutions come out of one
epilogue instead of two passes.

DN is `intq.dyadic.requantize`'s rule, written with precomputed shifts: for multiplier
(b, c), h = max(c - 1, 0), rnd = (c > 0), s = c - h, and DN(v) = ((v * b >> h) + rnd) >> s,
which is floor(v * b / 2**c + 1/2) (ties toward +infinity) without overflowing int64.

Tensors are flat NHWC buffers with a halo; a view is described by its geometry
g = [Hb, Wb, Cb, ht, hl, coff]: pixel (n, h, w), channel k lives at
((n * Hb + h + ht) * Wb + w + hl) * Cb + coff + k.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .simd import (SPLIT_MAX_SHIFT, SPLIT_MIN_SHIFT, vepi_raw_rows, vepi_requant_rows, vepi_requant_split_rows,
                   vepi_residual_rows, vepi_residual_split_rows, vload, vrows, vsplit_rows, vwiden, vzero_rows)

REQUANT, RESIDUAL, RAW = 0, 1, 2
# Rows of the per-channel parameter table `rq` (int64, shape (5, channels)).
BIAS, MUL, SHIFT1, ROUND, SHIFT2 = range(5)


def dn_table(b, c, count: int, channels: int, bias=None) -> np.ndarray:
    """The (5, channels) int64 table of bias and DN shifts for `count` real channels, from
    per-channel or per-tensor multipliers (b, c); channels past `count` (block padding)
    get zeros."""
    b = np.broadcast_to(np.asarray(b, np.int64).reshape(-1), (count,))
    c = np.broadcast_to(np.asarray(c, np.int64).reshape(-1), (count,))
    t = np.zeros((5, channels), np.int64)
    if bias is not None:
        t[BIAS, :count] = np.asarray(bias, np.int64).reshape(-1)
    h = np.maximum(c - 1, 0)
    t[MUL, :count], t[SHIFT1, :count], t[ROUND, :count], t[SHIFT2, :count] = b, h, c > 0, c - h
    return t


@njit(cache=True, inline="always")
def offset(g, n, h, w):
    """Element index of channel 0 (of the view) at pixel (n, h, w)."""
    return ((n * g[0] + h + g[3]) * g[1] + w + g[4]) * g[2] + g[5]


@njit(cache=True, inline="always")
def round_shift(p, h, rnd, s):
    """The rounding half of DN, applied to the product p = v * b: ((p >> h) + rnd) >> s,
    i.e. floor(p / 2**c + 1/2), ties toward +infinity (see the module docstring). Every
    kernel's requantization goes through here; callers form p themselves so that they
    can say when both factors fit int32 (one `vpmuldq`)."""
    return ((p >> h) + rnd) >> s


@njit(cache=True, inline="always")
def dn(v, rq, k):
    """DN of the int64 value v with column k's multiplier in table rq (the form used
    where a whole row of channels shares one column, e.g. a pooled position)."""
    return round_shift(v * rq[MUL, k], rq[SHIFT1, k], rq[ROUND, k], rq[SHIFT2, k])


@njit(cache=True, inline="always")
def store_pixel(acc, t, c0, nc, n, h, w, rq, out, og, sc, res, rg, rrq, out2, og2, rq2):
    """Finish channels c0..c0+nc of output pixel (n, h, w) from acc[t : t + nc].

    sc = [mode, z_out, lo, hi, z_r, copy, z_y, z_2, lo_2, hi_2]; res/rg/rrq: the residual
    operand, its geometry and DN table (used in mode RESIDUAL); out2/og2/rq2: the copy's
    tensor, geometry and DN table (used when copy is 1). Every loop runs over contiguous
    row slices indexed from 0, so LLVM vectorises it (no wraparound checks, no gathers).
    """
    mode, zo, lo, hi = sc[0], sc[1], sc[2], sc[3]
    o = offset(og, n, h, w) + c0
    a = acc[t:t + nc]
    y = out[o:o + nc]
    bias = rq[BIAS, c0:c0 + nc]
    if mode == RAW:
        for j in range(nc):
            y[j] = a[j] + bias[j]
        return
    mul, s1, rnd, s2 = rq[MUL, c0:c0 + nc], rq[SHIFT1, c0:c0 + nc], rq[ROUND, c0:c0 + nc], rq[SHIFT2, c0:c0 + nc]
    # acc + bias fits int32 (the validator's overflow bound) and so does b < 2^31: said
    # with int32 casts, LLVM multiplies with vpmuldq (1 uop) instead of vpmullq (3 uops).
    # The residual operand and the copy's input may be int32 tensors, so r - z_r and
    # y - z_y can exceed int32: their products stay plain int64.
    if mode == REQUANT:
        for j in range(nc):
            v = np.int64(np.int32(a[j] + bias[j])) * np.int64(np.int32(mul[j]))
            v = round_shift(v, s1[j], rnd[j], s2[j])
            y[j] = min(max(v + zo, lo), hi)
    else:
        zr = sc[4]
        ro = offset(rg, n, h, w) + c0
        r = res[ro:ro + nc]
        rmul, rs1, rrnd, rs2 = rrq[MUL, c0:c0 + nc], rrq[SHIFT1, c0:c0 + nc], rrq[ROUND, c0:c0 + nc], rrq[SHIFT2, c0:c0 + nc]
        if r.itemsize <= 2:  # r - z_r fits int32 (the usual 8/16-bit residual stream)
            for j in range(nc):
                v = np.int64(np.int32(a[j] + bias[j])) * np.int64(np.int32(mul[j]))
                v = round_shift(v, s1[j], rnd[j], s2[j])
                u = np.int64(np.int32(r[j] - zr)) * np.int64(np.int32(rmul[j]))
                v += round_shift(u, rs1[j], rrnd[j], rs2[j])
                y[j] = min(max(v + zo, lo), hi)
        else:
            for j in range(nc):
                v = np.int64(np.int32(a[j] + bias[j])) * np.int64(np.int32(mul[j]))
                v = round_shift(v, s1[j], rnd[j], s2[j])
                v += round_shift((np.int64(r[j]) - zr) * rmul[j], rs1[j], rrnd[j], rs2[j])
                y[j] = min(max(v + zo, lo), hi)
    if sc[5]:
        zy, z2, lo2, hi2 = sc[6], sc[7], sc[8], sc[9]
        o2 = offset(og2, n, h, w) + c0
        y2 = out2[o2:o2 + nc]
        m2, t1, r2, t2 = rq2[MUL, c0:c0 + nc], rq2[SHIFT1, c0:c0 + nc], rq2[ROUND, c0:c0 + nc], rq2[SHIFT2, c0:c0 + nc]
        if y.itemsize <= 2:
            for j in range(nc):
                v = np.int64(np.int32(y[j] - zy)) * np.int64(np.int32(m2[j]))
                v = round_shift(v, t1[j], r2[j], t2[j])
                y2[j] = min(max(v + z2, lo2), hi2)
        else:
            for j in range(nc):
                v = round_shift((np.int64(y[j]) - zy) * m2[j], t1[j], r2[j], t2[j])
                y2[j] = min(max(v + z2, lo2), hi2)


@njit(cache=True)
def store_pixel_called(acc, t, c0, nc, n, h, w, rq, out, og, sc, res, rg, rrq, out2, og2, rq2):
    """`store_pixel` as a function of its own, not inlined: for the kernels whose epilogue
    is the vector one (`store_pixel_vec`, `store_tile_vec`) and that take this one only
    where it cannot (a wide residual operand with a zero point, a wide copied output).
    Inlined into their parallel bodies, its loops cost seconds of compile time in every
    variant of them; called, it compiles once per operand types and only that path pays
    for the call."""
    store_pixel(acc, t, c0, nc, n, h, w, rq, out, og, sc, res, rg, rrq, out2, og2, rq2)


def shifts(rq: np.ndarray, count: int | None = None) -> np.ndarray:
    """The shifts c of a `dn_table`'s first `count` channels (all without a count): the
    table stores them as SHIFT1 + SHIFT2."""
    return rq[SHIFT1, :count] + rq[SHIFT2, :count]


def narrow_ok(rq: np.ndarray, count: int, residual: bool = False) -> bool:
    """Whether the first `count` channels of `rq` allow the narrow vector epilogue: every
    shift c at least `simd.NARROW_MIN_SHIFT`, or `NARROW_MIN_SHIFT_RESIDUAL` for either
    table of a residual add (which sums two results)."""
    from .simd import NARROW_MIN_SHIFT, NARROW_MIN_SHIFT_RESIDUAL
    return bool(np.all(shifts(rq, count) >= (NARROW_MIN_SHIFT_RESIDUAL if residual else NARROW_MIN_SHIFT)))


def vector_tables(rq: np.ndarray, bias=None, narrow: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`rq` (a `dn_table`) as the two tables of `simd.vrows`, per
    group of 16 channels: int32 [bias x 16][multiplier x 16] and int64 [2^(c-1) of the
    even channels, of the odd ones][c of the even channels, of the odd ones]. `bias`
    replaces the bias row (-z for a residual operand or a copy's input). narrow: the
    third int64 row holds c - 32 of all 16 channels as int32 lanes instead (channels with
    c < 32, the block's padding, shift by 0), the fourth zeros (`simd.NARROW_MIN_SHIFT`)."""
    channels = rq.shape[1]
    groups = channels // 16
    b = rq[BIAS] if bias is None else np.broadcast_to(np.asarray(bias, np.int64), (channels,))
    c = shifts(rq)
    half = np.where(c > 0, np.left_shift(np.int64(1), np.maximum(c - 1, 0)), 0)
    t32 = np.stack([b.reshape(groups, 16), rq[MUL].reshape(groups, 16)], axis=1)
    pairs = lambda v: v.reshape(groups, 8, 2)  # noqa: E731  (lane 2i even, 2i + 1 odd)
    if narrow:
        rest = np.maximum(c - 32, 0).astype(np.int32).reshape(groups, 16).view(np.int64)
        t64 = np.stack([pairs(half)[..., 0], pairs(half)[..., 1], rest, np.zeros_like(rest)], axis=1)
    else:
        t64 = np.stack([pairs(half)[..., 0], pairs(half)[..., 1], pairs(c)[..., 0], pairs(c)[..., 1]], axis=1)
    return t32.astype(np.int32).reshape(-1), t64.astype(np.int64).reshape(-1)


def split_ok(rq: np.ndarray, count: int, dtype, zero_point: int) -> bool:
    """Whether DN by the first `count` channels of `rq` of an operand of `dtype` with
    `zero_point` can take the split form (`simd.SPLIT_MIN_SHIFT`): an unsigned operand of
    at most 16 bits, zero point 0, multipliers b >= 0 and shifts c >= 17."""
    dtype = np.dtype(dtype)
    c = shifts(rq, count)
    return (dtype.kind == "u" and dtype.itemsize <= 2 and zero_point == 0
            and bool(np.all(rq[MUL, :count] >= 0)) and bool(np.all(c >= SPLIT_MIN_SHIFT)))


def split_table(rq: np.ndarray) -> np.ndarray:
    """`rq` (a `dn_table`, every shift at least 17) as the split form's int32 table, per
    group of 16 channels [b mod 2^16][b >> 16][2^(c-17)][c - 16] (`simd._dn_split`);
    channels with c > 47 (DN = 0 for every 16-bit operand) and block padding get zero
    rows, which compute 0."""
    channels = rq.shape[1]
    b, c = rq[MUL], shifts(rq)
    live = (c >= SPLIT_MIN_SHIFT) & (c <= SPLIT_MAX_SHIFT) & (b > 0)
    rows = np.zeros((4, channels), np.int64)
    rows[0] = np.where(live, b & 0xFFFF, 0)
    rows[1] = np.where(live, b >> 16, 0)
    rows[2] = np.where(live, np.left_shift(np.int64(1), np.clip(c - SPLIT_MIN_SHIFT, 0, 62)), 0)
    rows[3] = np.where(live, c - 16, 0)
    return rows.reshape(4, channels // 16, 16).transpose(1, 0, 2).astype(np.int32).reshape(-1)


def split_bound(rq: np.ndarray, count: int, dtype) -> int:
    """The largest DN by the first `count` channels of `rq` of a value of `dtype`
    (unsigned): its largest value times each multiplier, rounded as DN rounds."""
    top = np.int64(np.iinfo(np.dtype(dtype)).max)
    c = shifts(rq, count)
    return int(np.max(((top * rq[MUL, :count]) + np.left_shift(np.int64(1), c - 1)) >> c, initial=0))


@njit(cache=True, inline="always")
def _forms(sc):
    """The layer's forms from its scalars (see `store_pixel_vec`): narrow, and whether the
    residual operand's and the copy's DNs take the split form."""
    narrow = sc[10] != 0
    return narrow, not narrow and sc[11] & 1 != 0, not narrow and sc[11] & 2 != 0


@njit(cache=True, inline="always")
def _group_rows(k, sc, vt32, vt64, rvt32, rvt64, cvt32, cvt64, rsplit, csplit):
    """The table rows of the group of 16 channels from channel k (a multiple of 16): the
    layer's, then the residual operand's and the copy's in the form they take, zero where
    this mode does not read them (their tables may then be empty)."""
    t = k // 16 * 32  # the group's offset in the int32 and int64 tables (32 elements each)
    st = 2 * t  # and in a split table (64 int32 each)
    rrows, crows = vzero_rows(), vzero_rows()
    if sc[0] == RESIDUAL and rsplit:
        rrows = vsplit_rows(rvt32, st)
    elif sc[0] == RESIDUAL:
        rrows = vrows(rvt32, rvt64, t)
    if sc[5] and csplit:
        crows = vsplit_rows(cvt32, st)
    elif sc[5]:
        crows = vrows(cvt32, cvt64, t)
    return vrows(vt32, vt64, t), rrows, crows


@njit(cache=True, inline="always")
def _group_pixel(a, layer_rows, rrows, n, h, w, k, nl, out, og, sc, res, rg, narrow, rsplit):
    """The epilogue of pixel (n, h, w) for the nl <= 16 channels from k: a the accumulator
    vector, the rows from `_group_rows`. The mode's branches do not change along a loop of
    pixels, and LLVM takes them out of it."""
    o = offset(og, n, h, w) + k
    mode = sc[0]
    if mode == RAW:
        vepi_raw_rows(a, layer_rows, out, o, nl)
    elif mode == REQUANT:
        vepi_requant_rows(a, layer_rows, out, o, sc[1], sc[2], sc[3], nl, narrow)
    elif rsplit:
        r = vwiden(res, offset(rg, n, h, w) + k, nl)
        vepi_residual_split_rows(a, layer_rows, r, rrows, out, o, sc[1], sc[2], sc[3], sc[12], nl)
    else:
        r = vwiden(res, offset(rg, n, h, w) + k, nl)
        vepi_residual_rows(a, layer_rows, r, rrows, out, o, sc[1], sc[2], sc[3], nl, narrow)


@njit(cache=True, inline="always")
def _group_copy(crows, n, h, w, k, nl, out, og, sc, out2, og2, narrow, csplit):
    """The copy of pixel (n, h, w)'s nl channels from k: what `_group_pixel` stored, read
    back and requantized into out2."""
    y = vwiden(out, offset(og, n, h, w) + k, nl)
    o2 = offset(og2, n, h, w) + k
    if csplit:
        vepi_requant_split_rows(y, crows, out2, o2, sc[7], sc[8], sc[9], nl)
    else:
        vepi_requant_rows(y, crows, out2, o2, sc[7], sc[8], sc[9], nl, narrow)


@njit(cache=True, inline="always")
def store_pixel_vec(acc, t, c0, nc, n, h, w, out, og, sc, res, rg, out2, og2, vt32, vt64, rvt32, rvt64,
                    cvt32, cvt64):
    """`store_pixel` for channels c0..c0+nc (c0 a multiple of 16) of the accumulators at
    acc[t:] (padded to whole groups of 16) in zmm registers (`simd.vepi_*_rows`), 16 at a
    time, the last group masked; (vt32, vt64), (rvt32, rvt64) and (cvt32, cvt64) the tables
    of the layer, the residual operand and the copy from `vector_tables`. Every mode, with
    or without the copy, where r - z_r and y - z_y fit int32: a residual operand and a
    copied output at most 16 bits wide (or an accumulator, z = 0). The tables come as
    separate arrays, not a tuple: unpacking a tuple of arrays per pixel costs reference
    counting that outweighed the arithmetic.
    sc[10] = 1: every table is narrow (`vector_tables(narrow=True)`, `simd.NARROW_MIN_SHIFT`).
    Otherwise sc[11] says which DNs of a 16-bit unsigned operand take the split form
    (`simd.SPLIT_MIN_SHIFT`; their table then comes from `split_table` in place of the
    int32 one): 1 the residual operand's (rvt32; sc[12] bounds its DN), 2 the copy's
    (cvt32), 3 both. The lane count (16, or the rest in the last group) and the forms are
    run-time values, so that the group's code is inlined once (see `simd._for_lanes`)."""
    narrow, rsplit, csplit = _forms(sc)
    for g in range(-(-nc // 16)):
        k = c0 + 16 * g
        nl = min(16, nc - 16 * g)
        layer_rows, rrows, crows = _group_rows(k, sc, vt32, vt64, rvt32, rvt64, cvt32, cvt64, rsplit, csplit)
        _group_pixel(vload(acc, t + 16 * g), layer_rows, rrows, n, h, w, k, nl, out, og, sc, res, rg, narrow,
                     rsplit)
        if sc[5]:
            _group_copy(crows, n, h, w, k, nl, out, og, sc, out2, og2, narrow, csplit)


@njit(cache=True, inline="always")
def _tile_group(tile, tn, rows, pix, c0, j, nl, out, og, sc, res, rg, out2, og2, vt32, vt64, rvt32, rvt64, cvt32,
                cvt64, narrow, rsplit, csplit):
    """Tile channels j..j+nl (j a multiple of 16, nl <= 16), output channels c0 + j..., of
    the tile's first `rows` pixels: the group's table rows loaded once, then one loop over
    the pixels. One loop with the mode's branches inside it (they do not change along it)
    rather than a loop per mode: in a parallel kernel's body each loop costs compile time."""
    k = c0 + j
    layer_rows, rrows, crows = _group_rows(k, sc, vt32, vt64, rvt32, rvt64, cvt32, cvt64, rsplit, csplit)
    for p in range(rows):
        _group_pixel(vload(tile, p * tn + j), layer_rows, rrows, pix[p, 0], pix[p, 1], pix[p, 2], k, nl, out, og,
                     sc, res, rg, narrow, rsplit)
    if not sc[5]:
        return
    # The copy reads back what the loop above stored, in a loop of its own (so that only
    # its rows are live there).
    for p in range(rows):
        _group_copy(crows, pix[p, 0], pix[p, 1], pix[p, 2], k, nl, out, og, sc, out2, og2, narrow, csplit)


@njit(cache=True, inline="always")
def store_tile_vec(tile, tn, rows, pix, c0, nc, out, og, sc, res, rg, out2, og2, vt32, vt64, rvt32, rvt64,
                   cvt32, cvt64):
    """`store_pixel_vec` for the first `rows` pixels of a tile of tn channels (c0 and tn
    multiples of 16): pixel p's accumulators at tile[p * tn:], its position (n, h, w) at
    pix[p]. Channel group by group, each group's table rows loaded once for all the
    tile's pixels (`simd.vepi_*_rows`) rather than once per pixel; the arithmetic, and so
    every result, is `store_pixel_vec`'s. The lane count (16, or the rest in the last
    group) and the forms are run-time values, so that the group's code is inlined once
    (see `simd._for_lanes`)."""
    narrow, rsplit, csplit = _forms(sc)
    for g in range(-(-nc // 16)):
        _tile_group(tile, tn, rows, pix, c0, 16 * g, min(16, nc - 16 * g), out, og, sc, res, rg, out2, og2, vt32,
                    vt64, rvt32, rvt64, cvt32, cvt64, narrow, rsplit, csplit)
