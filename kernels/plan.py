"""The execution plan: an integer graph turned, once at load, into a list of kernel calls.

Built once per model (`Plan(graph)`) and bound once per batch size (`plan.bind(n)`):
* **Fusion.** A Conv/Linear whose accumulator is read only by a `Requantize` runs with
  that requantization (and its clamp, i.e. the fused ReLU) in its epilogue; one whose
  accumulator is one branch of a two-branch `IntAdd` runs with the whole add in its
  epilogue (the other branch read from memory). Otherwise the INT32 accumulator is
  stored (a concat branch, or the first of two convs feeding one add).
* **Layout.** Every 4-D tensor is an NHWC buffer with its channels padded to a multiple
  of 4 and a halo as wide as the largest padding any convolution reading it needs,
  filled with the tensor's zero point by its producer; 2-D tensors are N x 1 x 1 x F.
  The graph input is converted from NCHW at the start, the outputs back at the end.
  A Linear layer reading a flattened NCHW map becomes a convolution whose kernel covers
  the whole map, so the flatten costs nothing.
* **Staging.** An elementwise op on a tensor whose axis 1 is not its buffer's innermost
  (3-D, 5-D), with an operand broadcast onto the output, or a softmax or concat along
  another axis gathers its operands into channels-inner scratch tensors, runs the same
  kernel there and scatters the result back (`StagedStep`): no op falls back to numpy.
* **Weights** are packed once into the layout the chosen kernel path reads.
* **Buffers** are allocated once per batch size and reused across layers: a tensor takes
  a free block as its producer runs and returns it after its last reader.

Every step equals its ops' `run` in `intq.ops.integer`; the tests compare each model's
outputs with `intq.reference.run_integer` element for element.
"""
from __future__ import annotations

import numpy as np

from intq.errors import IntqError
from intq.ops import ops_where

from dataclasses import dataclass

from . import conv, conv_amx, conv_avx2, conv_vnni, cpu, elementwise, pool, softmax
from .epilogue import RAW, REQUANT, RESIDUAL, dn_table, narrow_ok, split_bound, split_ok, split_table, vector_tables
from .fuse import fuse

CONTAINERS = {"uint4": np.uint8, "uint8": np.uint8, "int4": np.int8, "int8": np.int8,
              "uint16": np.uint16, "int16": np.int16, "int32": np.int32}
# Pure reshapes: a Linear reading one reads the same NHWC buffer (see `Plan._build`).
_ALIASES = ops_where("alias", integer_graph=True)
# Ops that only move elements; `MoveStep` runs any of them exactly.
MOVEMENT = ops_where("movement", integer_graph=True)
# Elementwise ops whose kernels read channels as the NHWC layout's innermost axis: on a
# 4-D or 2-D tensor they run in place, on other ranks staged (see `StagedStep`).
CHANNELWISE = ops_where("channelwise", integer_graph=True)


class Layout:
    """How one tensor is stored: NHWC, channels padded to 4, a halo of `fill` values."""

    def __init__(self, name, shape, dtype):
        self.name = name
        self.rank = len(shape)
        self.shape = tuple(shape)
        if self.rank == 4:
            _, self.c, self.h, self.w = shape
        elif self.rank == 2:
            self.c, self.h, self.w = shape[1], 1, 1
        else:
            # Any other rank (a channel shuffle's 5-D middle) is stored as the reference
            # lays it out, flat: only data movement reads or writes such tensors.
            self.c, self.h, self.w = int(np.prod(shape[1:], dtype=np.int64)), 1, 1
        if dtype not in CONTAINERS:
            raise IntqError(f"numba backend: tensor {name} has unsupported dtype {dtype}")
        self.dtype = np.dtype(CONTAINERS[dtype])
        self.cb = -(-self.c // 4) * 4
        self.halo = [0, 0, 0, 0]  # top, left, bottom, right
        self.fill = 0

    def need_halo(self, pads, fill):
        if any(pads) and any(self.halo) and fill != self.fill:
            raise IntqError(f"numba backend: tensor {self.name} is padded with two values")
        self.halo = [max(a, b) for a, b in zip(self.halo, pads)]
        if any(pads):
            self.fill = fill

    @property
    def hb(self):
        return self.h + self.halo[0] + self.halo[2]

    @property
    def wb(self):
        return self.w + self.halo[1] + self.halo[3]

    def geometry(self, coff=0):
        return np.array([self.hb, self.wb, self.cb, self.halo[0], self.halo[1], coff], np.int64)

    def nbytes(self, n):
        return n * self.hb * self.wb * self.cb * self.dtype.itemsize

    def dims(self, n):
        return np.array([n, self.h, self.w, self.c], np.int64)

    def view4(self, flat, n):
        return flat.reshape(n, self.hb, self.wb, self.cb)

    def interior(self, flat, n):
        t, l, _, _ = self.halo
        return self.view4(flat, n)[:, t:t + self.h, l:l + self.w, :self.c]

    def fill_halo(self, flat, n):
        if not any(self.halo):
            return
        v = self.view4(flat, n)
        t, l, b, r = self.halo
        v[:, :t], v[:, v.shape[1] - b:], v[:, :, :l], v[:, :, v.shape[2] - r:] = (self.fill,) * 4

    def offsets(self, n):
        """Buffer index of every element, in the reference layout's (row-major) order."""
        nn, c, h, w = np.ix_(np.arange(n), np.arange(self.c), np.arange(self.h), np.arange(self.w))
        t, l, _, _ = self.halo
        off = ((nn * self.hb + h + t) * self.wb + w + l) * self.cb + c
        shape = (n,) + tuple(self.shape[1:]) if self.rank != 4 else (n, self.c, self.h, self.w)
        return off.reshape(shape)

    def to_reference(self, flat, n):
        """The tensor as the reference executor holds it: int64, in its own shape."""
        a = self.interior(flat, n)
        a = a.transpose(0, 3, 1, 2) if self.rank == 4 else a.reshape((n,) + self.shape[1:])
        return np.ascontiguousarray(a, dtype=np.int64)

    def from_reference(self, a, flat, n):
        a = a.reshape(n, self.c, self.h, self.w) if self.rank == 4 else a.reshape(n, self.c, 1, 1)
        self.interior(flat, n)[...] = a.transpose(0, 2, 3, 1)

    @property
    def channels_inner(self) -> bool:
        """Whether axis 1 of the tensor is the innermost axis of its buffer (4-D, 2-D)."""
        return self.rank in (2, 4)


def _scalars(*values):
    return np.array(values, np.int64)


_ABSENT = np.zeros(0, np.uint8)   # the operand a kernel is passed for a tensor it does not have


@dataclass
class Residual:
    """The other branch of a residual add fused into a layer's epilogue."""

    operand: Layout
    zero_point: int
    b: np.ndarray
    c: np.ndarray


@dataclass
class Copy:
    """A Requantize of the layer's output, written by the same epilogue."""

    out: Layout
    in_zero_point: int
    b: np.ndarray
    c: np.ndarray
    out_zero_point: int
    lo: int
    hi: int


@dataclass
class Epilogue:
    """What a layer's kernel does with its INT32 accumulator (`kernels.epilogue`): store it
    (RAW), requantize it (REQUANT, with the multipliers b, c of the layer's output or of
    its concat branch), or add the other branch of a residual add (RESIDUAL, b and c of
    this branch); optionally also write a requantized copy."""

    mode: int
    b: np.ndarray | int = 0
    c: np.ndarray | int = 0
    out_zero_point: int = 0
    lo: int = 0
    hi: int = 0
    residual: Residual | None = None
    copy: Copy | None = None

    def scalars(self):
        """The kernels' scalar vector `sc`: mode, z_out, lo, hi, z_residual, then the
        copy's flag, z_in, z_out, lo, hi (zeros without a copy)."""
        cp = self.copy
        return _scalars(self.mode, self.out_zero_point, self.lo, self.hi,
                        self.residual.zero_point if self.residual else 0,
                        *((1, cp.in_zero_point, cp.out_zero_point, cp.lo, cp.hi) if cp else (0,) * 5))


@dataclass(frozen=True)
class ConvGeometry:
    strides: tuple
    pads: tuple
    dilations: tuple
    groups: int


class Step:
    """One kernel call of the plan: tensors it reads and writes, and how to bind it."""

    reads: tuple = ()
    writes: tuple = ()
    name = ""

    def bind(self, env, n):
        """A zero-argument callable running this step on the buffers in env (flat arrays)."""
        raise NotImplementedError


class QuantizeStep(Step):
    def __init__(self, node, out: Layout, graph_input: str):
        self.name, self.out, self.writes = node.name, out, (out.name,)
        a = node.attrs
        c = out.c
        # A folded input normalisation (x * in_scale[c] + in_shift[c]); identity without.
        self.norm = (np.asarray(a.get("in_scale", np.ones(c)), np.float64).reshape(-1) * np.ones(c),
                     np.asarray(a.get("in_shift", np.zeros(c)), np.float64).reshape(-1) * np.ones(c))
        self.args = (float(a["scale"]), float(a["zero_point"]), float(a["lo"]), float(a["hi"]))
        self.input = graph_input

    def bind(self, env, n):
        out, og, args = env[self.out.name], self.out.geometry(), self.args
        feed = env["__feeds__"]
        name = self.input

        in_scale, in_shift = self.norm

        def run():
            x = feed[name]
            elementwise.quantize_input(x.reshape(x.shape + (1, 1)) if x.ndim == 2 else x,
                                       in_scale, in_shift, *args, out, og)
        return run


class FeedStep(Step):
    """An integer graph input, copied from the reference layout into its buffer."""

    def __init__(self, name, out: Layout):
        self.name, self.out, self.writes = f"feed {name}", out, (out.name,)
        self.input = name

    def bind(self, env, n):
        out, feed, name = self.out, env["__feeds__"], self.input
        return lambda: out.from_reference(np.asarray(feed[name]), env[out.name], n)


class ConvStep(Step):
    """IntConv/IntLinear with its fused consumer (see module docstring)."""

    def __init__(self, name, x: Layout, w, bias, geometry: ConvGeometry, out: Layout, coff,
                 epilogue: Epilogue, path="portable"):
        self.name, self.x, self.out, self.coff, self.epilogue = name, x, out, coff, epilogue
        residual, cp = epilogue.residual, epilogue.copy
        strides, pads, dilations, groups = (geometry.strides, geometry.pads, geometry.dilations,
                                            geometry.groups)
        self.reads = (x.name,) + ((residual.operand.name,) if residual else ())
        self.writes = (out.name,) + ((cp.out.name,) if cp else ())
        m, cg, kh, kw = w.shape
        self.kh, self.kw = kh, kw
        self.strides, self.pads, self.dil = strides, pads, dilations
        self.cout = m
        self.kind = ("dense" if groups == 1 else
                     "depthwise" if groups == m and cg == 1 and groups == x.c else "grouped")
        # The channel block of a dense kernel's tile (`conv_vnni.tile_vectors` fits it to
        # the layer); tables are padded to whole blocks and to the portable 64.
        self.vnni = self.kind == "dense" and path in ("vnni", "amx")
        # AVX2: uint8 activations only (`conv_avx2`), the weights as 16-bit pairs.
        self.avx2 = self.kind == "dense" and path == "avx2" and x.dtype == np.uint8
        self.tile_n = (16 * conv_vnni.tile_vectors(m) if self.vnni else conv_avx2.TILE_N if self.avx2
                       else conv.TILE_N)
        self.tile_m = (conv_vnni.TILE_PIXELS[self.tile_n // 16] if self.vnni else
                       conv_avx2.TILE_PIXELS if self.avx2 else conv.TILE_M)
        self.nblk = -(-m // self.tile_n)
        padded = max(self.nblk * self.tile_n, -(-m // conv.TILE_N) * conv.TILE_N)
        self.rq = dn_table(epilogue.b, epilogue.c, m, padded, bias)
        self.residual, self.copy = residual, (cp.out if cp else None)
        self.rrq = (dn_table(residual.b, residual.c, m, padded) if residual else self.rq)
        self.groups = groups
        # With dilation 1 along W, the KW taps of one kernel row are KW * Cb contiguous
        # bytes of the NHWC buffer: one reduction run per kernel row, not per tap.
        self.row_taps = self.kind == "dense" and dilations[1] == 1
        oh, ow = self.output_hw()
        # AMX needs evenly spaced virtual pixels (see `conv_amx`) and enough of them (a
        # map under 16 pixels, a classifier, would leave most of each tile empty), and
        # pays off with stride 1 and long reductions (`conv_amx.MIN_REDUCTION`).
        self.wv = conv_amx.virtual_width(x.wb, strides) if path == "amx" else None
        self.amx = (self.kind == "dense" and self.wv is not None and oh * ow >= 16
                    and tuple(strides) == (1, 1) and kh * kw * x.cb >= conv_amx.MIN_REDUCTION)
        if self.kind == "dense":
            self.kernel = conv.conv_portable
            pack = conv.pack_portable
            if self.amx:
                self.kernel, pack = conv_amx.conv_amx, conv_amx.pack_amx
                self.nblk = -(-m // conv_amx.COLS)
            elif self.vnni:
                width = self.tile_n
                self.kernel, pack = conv_vnni.conv_vnni, lambda w, cin: conv.pack_vnni(w, cin, width)
            elif self.avx2:
                self.kernel, pack = conv_avx2.conv_avx2, conv_avx2.pack_avx2_wide
            if self.row_taps:
                wr = np.zeros((m, kh, kw, x.cb), np.int64)
                wr[..., :cg] = w.transpose(0, 2, 3, 1)
                w, self.cin = wr.reshape(m, kh, kw * x.cb).transpose(0, 2, 1)[..., None], kw * x.cb
            else:
                self.cin = x.cb
            if self.avx2:
                self.w, self.w_odd = pack(w, self.cin)   # the even and odd 16-bit pairs
            else:
                self.w = pack(w, self.cin)
        elif self.kind == "depthwise":
            # 16-lane vector kernels (`conv_vnni`'s; LLVM splits them into ymm halves on AVX2)
            self.dw_vector = path in ("vnni", "amx", "avx2")
            # uint8 activations into a plain Requantize: row tasks with the tables held
            # along the row, four taps per vpdpbusd where the CPU has it
            rows = x.dtype == np.uint8 and epilogue.mode == REQUANT and epilogue.copy is None
            self.dw_dot4 = rows and path in ("vnni", "amx")
            self.dw_rows = rows and path == "avx2"
            self.w = (conv_vnni.pack_depthwise_dot4(w) if self.dw_dot4 else
                      conv_vnni.pack_depthwise(w) if self.dw_vector else
                      np.ascontiguousarray(w.reshape(m, kh * kw).T, dtype=np.int32))
            self.cin = 1
        else:
            self.w = np.ascontiguousarray(w.reshape(m, cg, kh * kw).transpose(0, 2, 1)
                                          .reshape(m, kh * kw * cg), dtype=np.int32)
            self.cin = cg
        if cp is not None:
            self.rq2 = dn_table(cp.b, cp.c, m, padded)
        # sc[10]: the vector epilogue's int32 form; sc[11], sc[12]: which DNs take the
        # split form, and the bound of the residual's (the portable epilogue ignores them)
        self.sc = np.append(epilogue.scalars(), np.array([self.narrow, *self.split_form()], np.int64))

    def vector_tables(self):
        """The tables of the vector epilogue (`epilogue.store_pixel_vec`), or six empty
        arrays where it does not apply: a residual operand or copied output wider than 16
        bits (other than an accumulator)."""
        ep = self.epilogue
        # r - z_r must fit int32: a 16-bit operand, or an accumulator (z_r = 0).
        wide = ((ep.residual is not None and ep.residual.operand.dtype.itemsize > 2
                 and ep.residual.zero_point != 0)
                or (ep.copy is not None and self.out.dtype.itemsize > 2))
        if wide:
            e32, e64 = np.zeros(0, np.int32), np.zeros(0, np.int64)
            return (e32, e64) * 3
        nar, split = self.narrow, int(self.sc[11])
        tables = vector_tables(self.rq, narrow=nar)
        # the split form's table in place of the int32 one, the int64 slot unread (`store_pixel_vec`)
        if split & 1:
            tables += (split_table(self.rrq), tables[1])
        elif ep.mode == RESIDUAL:
            tables += vector_tables(self.rrq, -ep.residual.zero_point, narrow=nar)
        else:
            tables += tables
        if split & 2:
            tables += (split_table(self.rq2), tables[1])
        elif ep.copy is not None:
            tables += vector_tables(self.rq2, -ep.copy.in_zero_point, narrow=nar)
        else:
            tables += tables[:2]
        return tables

    def split_form(self) -> tuple[int, int]:
        """(flags, bound) of the vector epilogue's split form (`simd.SPLIT_MIN_SHIFT`),
        used only outside the int32 form: flag 1 where the residual operand is unsigned,
        at most 16 bits, zero point 0 (with the bound of its DN, and lo - bound and hi +
        bound inside int32), flag 2 where the copy reads such an output."""
        ep, flags, bound = self.epilogue, 0, 0
        if self.narrow:
            return 0, 0
        sc = [int(v) for v in ep.scalars()]
        if ep.mode == RESIDUAL and split_ok(self.rrq, self.cout, ep.residual.operand.dtype, ep.residual.zero_point):
            m = split_bound(self.rrq, self.cout, ep.residual.operand.dtype)
            _, zo, lo, hi = sc[:4]
            # the clamped accumulator branch, the sum and the sum plus zo all inside int32
            if min(lo - zo - m, lo - m) >= -2**31 and max(hi - zo + m, hi + m) < 2**31:
                flags, bound = 1, m
        # the copy's DN is below 2^30 + 1, so adding its zero point stays inside int32
        if (ep.copy is not None and abs(sc[7]) < 2**30
                and split_ok(self.rq2, self.cout, self.out.dtype, ep.copy.in_zero_point)):
            flags |= 2
        return flags, bound

    @property
    def narrow(self) -> bool:
        """Whether the vector epilogue runs in its int32 form (`simd.NARROW_MIN_SHIFT`):
        every table it reads allows it (a RAW layer reads none)."""
        ep = self.epilogue
        residual = ep.mode == RESIDUAL
        tables = [self.rq] + ([self.rrq] if residual else [])
        return (ep.mode != RAW and all(narrow_ok(t, self.cout, residual) for t in tables)
                and (not ep.copy or narrow_ok(self.rq2, self.cout)))

    def output_hw(self):
        from intq.ops.window import spatial_output
        return spatial_output((self.x.h, self.x.w), (self.kh, self.kw), self.strides, self.pads,
                              self.dil)

    def bind(self, env, n):
        x = self.x
        oh, ow = self.output_hw()
        if self.row_taps:
            toff = np.array([i * self.dil[0] * x.wb * x.cb for i in range(self.kh)], np.int64)
        else:
            toff = np.array([(i * self.dil[0] * x.wb + j * self.dil[1]) * x.cb
                             for i in range(self.kh) for j in range(self.kw)], np.int64)
        import numba
        want = 16 * numba.get_num_threads()
        if self.amx:
            step = self.strides[1] * x.cb
            vpix = (oh - 1) * self.wv + ow
            pairs = -(-vpix // conv_amx.ROWS)
            blocks = n * pairs
            chunks = min(blocks, max(1, -(-want // self.nblk)))
            cp = _scalars(n, oh, ow, self.strides[0], self.strides[1], self.pads[0], self.pads[1],
                          len(toff), self.cin, self.cout, self.nblk, -(-blocks // chunks),
                          self.wv, vpix, -(-self.cin // 64), step, pairs)
        else:
            nv, tm = self.tile_n // 16, self.tile_m
            tiles = -(-n * oh * ow // tm)
            chunks = min(tiles, max(1, -(-want // self.nblk)))
            cp = _scalars(n, oh, ow, self.strides[0], self.strides[1], self.pads[0], self.pads[1],
                          len(toff), self.cin, self.cout, self.nblk, -(-tiles // chunks), nv, tm)
        xb, xg = env[x.name], x.geometry()
        out, og = env[self.out.name], self.out.geometry(self.coff)
        # A residual operand or copy the layer does not have is one shared empty uint8
        # array, never read: the kernels are compiled once per operand types, and this
        # way a layer without a copy shares its compiled kernel with the same layer with
        # a uint8 copy (and one without a residual with a uint8 residual), whatever its
        # output type, instead of passing its output in their place.
        if self.residual:
            rl = self.residual.operand
            res, rg = env[rl.name], rl.geometry()
        else:
            res, rg = _ABSENT, og
        if self.copy is not None:
            out2, og2, rq2 = env[self.copy.name], self.copy.geometry(), self.rq2
        else:
            out2, og2, rq2 = _ABSENT, og, self.rq
        w, rq, sc, rrq = self.w, self.rq, self.sc, self.rrq
        if self.kind == "dense":
            # The AMX kernel also takes its tile configuration; AMX and VNNI kernels take
            # the vector epilogue's tables.
            extra = ((conv_amx.TILE_CONFIG,) if self.amx else ()) + (
                (self.vector_tables(), self.w_odd) if self.avx2 else
                (self.vector_tables(),) if self.kernel is not conv.conv_portable else ())
            kernel = self.kernel
            return lambda: kernel(xb, xg, w, toff, cp, rq, out, og, sc, res, rg, rrq, out2, og2, rq2, *extra)
        if self.kind == "depthwise" and (self.dw_dot4 or self.dw_rows):
            vt32, vt64 = self.vector_tables()[:2]
            rows_kernel = conv_vnni.conv_depthwise_dot4 if self.dw_dot4 else conv_avx2.conv_depthwise_rows
            return lambda: rows_kernel(xb, xg, w, toff, cp, out, og, sc, vt32, vt64)
        if self.kind == "depthwise" and self.dw_vector:
            vt = self.vector_tables()
            return lambda: conv_vnni.conv_depthwise_vnni(xb, xg, w, toff, cp, rq, out, og, sc, res, rg, rrq,
                                                         out2, og2, rq2, vt)
        if self.kind == "depthwise":
            return lambda: conv.conv_depthwise(xb, xg, w, toff, cp, rq, out, og, sc, res, rg, rrq,
                                               out2, og2, rq2)
        groups = self.groups
        return lambda: conv.conv_grouped(xb, xg, w, toff, cp, groups, rq, out, og, sc, res, rg, rrq,
                                         out2, og2, rq2)


class RequantizeStep(Step):
    """Requantize, or one branch of IntConcat (written at channel offset `coff`, or at row
    or column offset `at` = (rows, cols) for a concat along the height or width: the
    output's geometry then starts that many rows or columns into its interior)."""

    def __init__(self, name, x: Layout, zin, b, c, out: Layout, coff, zo, lo, hi, at=(0, 0)):
        self.name, self.x, self.out, self.coff, self.at = name, x, out, coff, at
        self.reads, self.writes = (x.name,), (out.name,)
        self.args = (zin, dn_table(b, c, x.c, x.c), zo, lo, hi)

    def bind(self, env, n):
        zin, rq, zo, lo, hi = self.args
        xb, xg, dims = env[self.x.name], self.x.geometry(), self.x.dims(n)
        out, og = env[self.out.name], self.out.geometry(self.coff)
        og[3] += self.at[0]
        og[4] += self.at[1]
        return lambda: elementwise.requantize(xb, xg, dims, zin, rq, out, og, zo, lo, hi)


class AddStep(Step):
    """IntAdd with any number of branches, none fused: an int64 running total, each branch
    with its sign, started from the offset constant where the add has one (`offset`: an
    int64 array of shape (1,) + the output layout's shape[1:], or None)."""

    def __init__(self, node, ins, zps, bs, cs, out: Layout, signs=None, offset=None):
        self.name, self.ins, self.out = node.name, ins, out
        self.reads, self.writes = tuple(dict.fromkeys(i.name for i in ins)), (out.name,)
        self.tables = [dn_table(b, c, i.c, i.c) for i, b, c in zip(ins, bs, cs)]
        self.zps, self.signs = zps, [int(v) for v in signs] if signs else [1] * len(ins)
        self.offset = offset
        a = node.attrs
        self.end = (int(a["out_zero_point"]), int(a["lo"]), int(a["hi"]))

    def bind(self, env, n):
        dims = self.out.dims(n)
        total = np.empty(int(np.prod(dims)), np.int64)
        start = None
        if self.offset is not None:   # the total's order is the output's NHWC
            full = np.broadcast_to(self.offset, self.out.offsets(n).shape)
            start = np.ascontiguousarray(full.transpose(0, 2, 3, 1) if full.ndim == 4 else full).reshape(-1)
        calls = [(env[i.name], i.geometry(), z, s, t)
                 for i, z, s, t in zip(self.ins, self.zps, self.signs, self.tables)]
        out, og = env[self.out.name], self.out.geometry()
        zo, lo, hi = self.end

        def run():
            if start is not None:
                total[:] = start
            for k, (xb, xg, z, s, t) in enumerate(calls):
                elementwise.add_branch(xb, xg, dims, z, s, t, total, k == 0 and start is None)
            elementwise.add_finish(total, dims, out, og, zo, lo, hi)
        return run


class PoolStep(Step):
    def __init__(self, node, x: Layout, out: Layout, consts):
        self.name, self.x, self.out, self.op = node.name, x, out, node.op
        self.reads, self.writes = (x.name,), (out.name,)
        a = node.attrs
        if node.op == "IntGlobalAvgPool":
            k, s, p, d = (x.h, x.w), (1, 1), (0, 0), (1, 1)
        else:
            k, s, p = a["kernel_shape"], a["strides"], a["pads"][:2]
            d = a.get("dilations", (1, 1)) if node.op == "MaxPool" else (1, 1)
        self.geom = (k, s, p, d)
        if node.op != "MaxPool":
            b, c = consts
            positions = out.h * out.w  # one DN column per output position
            self.rq = dn_table(b, c, positions, positions)
            self.args = (int(a["in_zero_point"]), int(a["out_zero_point"]), int(a["lo"]), int(a["hi"]))

    def bind(self, env, n):
        (kh, kw), (sh, sw), (pt, pl), (dh, dw) = self.geom
        x, out = self.x, self.out
        pp = _scalars(n, x.c, x.h, x.w, out.h, out.w, kh, kw, sh, sw, pt, pl, dh, dw)
        xb, xg, ob, og = env[x.name], x.geometry(), env[out.name], out.geometry()
        if self.op == "MaxPool":
            return lambda: pool.max_pool(xb, xg, pp, ob, og)
        zin, zo, lo, hi = self.args
        rq = self.rq
        if self.op == "IntGlobalAvgPool":
            return lambda: pool.global_avg_pool(xb, xg, pp, zin, rq, ob, og, zo, lo, hi)
        return lambda: pool.avg_pool(xb, xg, pp, zin, rq, ob, og, zo, lo, hi)


class ClampStep(Step):
    def __init__(self, node, x: Layout, out: Layout):
        self.name, self.x, self.out = node.name, x, out
        self.reads, self.writes = (x.name,), (out.name,)
        self.lohi = (int(node.attrs["lo"]), int(node.attrs["hi"]))

    def bind(self, env, n):
        xb, xg, dims, ob, og = env[self.x.name], self.x.geometry(), self.x.dims(n), env[self.out.name], self.out.geometry()
        lo, hi = self.lohi
        return lambda: elementwise.clamp(xb, xg, dims, ob, og, lo, hi)


class MoveStep(Step):
    """Data movement (Flatten, Reshape, IntPad, ...): one gather kernel driven by an index
    map, out[dst[i]] = x[src[i]] (or the fill value where src[i] < 0).

    The map is the op's own reference `run` applied, once per batch size, to a tensor of
    element indices (with the fill value replaced by -1), so every movement op is exact by
    construction and needs no kernel of its own."""

    def __init__(self, node, x: Layout, outs: list):
        self.name, self.x, self.outs, self.node = node.name, x, outs, node
        self.reads, self.writes = (x.name,), tuple(o.name for o in outs)
        self.fill = int(node.attrs.get("value", 0))

    def bind(self, env, n):
        from intq.ops import get_op

        x, node = self.x, self.node
        attrs = dict(node.attrs, value=-1) if "value" in node.attrs else node.attrs
        logical = np.arange(n * x.c * x.h * x.w, dtype=np.int64).reshape(x.offsets(n).shape)
        maps = get_op(node.op).run(attrs, logical)
        src_of = x.offsets(n).reshape(-1)
        calls = []
        for out, m in zip(self.outs, maps):
            m = np.asarray(m).reshape(-1)
            src = np.where(m < 0, -1, src_of[np.maximum(m, 0)])
            dst = out.offsets(n).reshape(-1)
            calls.append((env[x.name], src, env[out.name], dst))
        fill = self.fill

        def run():
            for xb, src, ob, dst in calls:
                elementwise.gather(xb, src, ob, dst, fill)
        return run


class ResizeLinearStep(Step):
    """IntResizeLinear: `elementwise.resize_linear` over the output pixels."""

    TABLES = ("rows0", "rows1", "row_weights", "cols0", "cols1", "col_weights")

    def __init__(self, node, x: Layout, out: Layout):
        self.name, self.x, self.out = node.name, x, out
        self.reads, self.writes = (x.name,), (out.name,)
        self.tables = tuple(np.asarray(node.attrs[t], np.int64) for t in self.TABLES)
        self.frac = int(node.attrs["frac_bits"])

    def bind(self, env, n):
        xb, xg, ob, og = env[self.x.name], self.x.geometry(), env[self.out.name], self.out.geometry()
        dims, tables, frac = self.out.dims(n), self.tables, self.frac
        return lambda: elementwise.resize_linear(xb, xg, ob, og, dims, *tables, frac)


def _per_channel(v, c):
    """A constant of one value or one per channel, as int64 of length c."""
    return np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.int64).reshape(-1), (c,)))


class AffineStep(Step):
    """IntAffine: per-channel dyadic multiplier, sign and output offset."""

    def __init__(self, node, x: Layout, out: Layout, consts):
        self.name, self.x, self.out = node.name, x, out
        self.reads, self.writes = (x.name,), (out.name,)
        b, c, sign, zps = consts
        a = node.attrs
        self.args = (int(a["in_zero_point"]), dn_table(b, c, x.c, x.c), _per_channel(sign, x.c),
                     _per_channel(zps, x.c), int(a["lo"]), int(a["hi"]))

    def bind(self, env, n):
        zin, rq, sign, zps, lo, hi = self.args
        xb, xg, dims = env[self.x.name], self.x.geometry(), self.x.dims(n)
        ob, og = env[self.out.name], self.out.geometry()
        return lambda: elementwise.affine(xb, xg, dims, zin, rq, sign, zps, ob, og, lo, hi)


class KernelStep(Step):
    """A channelwise op whose kernel has the common signature of `elementwise.KERNELS`."""

    def __init__(self, node, x: Layout, out: Layout, kernel, args, consts):
        self.name, self.x, self.out, self.kernel = node.name, x, out, kernel
        self.reads, self.writes = (x.name,), (out.name,)
        self.before, self.after = args(node, consts, x.c)

    def bind(self, env, n):
        xb, xg, dims = env[self.x.name], self.x.geometry(), self.x.dims(n)
        ob, og, kernel, before, after = env[self.out.name], self.out.geometry(), self.kernel, self.before, self.after
        return lambda: kernel(xb, xg, dims, *before, ob, og, *after)


class LookupStep(Step):
    """IntLookup: one gather from the table per element."""

    def __init__(self, node, x: Layout, out: Layout, table):
        self.name, self.x, self.out = node.name, x, out
        self.reads, self.writes = (x.name,), (out.name,)
        self.table = np.ascontiguousarray(table, np.int64)
        self.first = int(node.attrs["offset"])

    def bind(self, env, n):
        xb, xg, dims = env[self.x.name], self.x.geometry(), self.x.dims(n)
        ob, og, table, first = env[self.out.name], self.out.geometry(), self.table, self.first
        return lambda: elementwise.lookup(xb, xg, dims, table, first, ob, og)


class LeakyReluStep(Step):
    """IntLeakyRelu: one dyadic slope per side (and sign of the negative one) per channel."""

    def __init__(self, node, x: Layout, out: Layout, consts):
        self.name, self.x, self.out = node.name, x, out
        self.reads, self.writes = (x.name,), (out.name,)
        bp, cp, bn, cn, sign = consts
        a = node.attrs
        self.args = (int(a["in_zero_point"]), dn_table(bp, cp, x.c, x.c), dn_table(bn, cn, x.c, x.c),
                     _per_channel(sign, x.c), int(a["out_zero_point"]), int(a["lo"]), int(a["hi"]))

    def bind(self, env, n):
        zin, pos, neg, sign, zo, lo, hi = self.args
        xb, xg, dims = env[self.x.name], self.x.geometry(), self.x.dims(n)
        ob, og = env[self.out.name], self.out.geometry()
        return lambda: elementwise.leaky_relu(xb, xg, dims, zin, pos, neg, sign, ob, og, zo, lo, hi)


class MulStep(Step):
    """IntMul of two tensors, one broadcast over H, W or C (the SE gate)."""

    def __init__(self, node, a: Layout, b: Layout, out: Layout, consts):
        self.name, self.a, self.b, self.out = node.name, a, b, out
        self.reads, self.writes = (a.name, b.name), (out.name,)
        at = node.attrs
        self.args = (int(at["a_zero_point"]), int(at["b_zero_point"]), dn_table(*consts, 1, 1),
                     int(at["out_zero_point"]), int(at["lo"]), int(at["hi"]))

    def bind(self, env, n):
        za, zb, rq, zo, lo, hi = self.args
        a, b, out = self.a, self.b, self.out
        call = (env[a.name], a.geometry(), a.dims(n), za, env[b.name], b.geometry(), b.dims(n), zb,
                rq, env[out.name], out.geometry(), out.dims(n), zo, lo, hi)
        return lambda: elementwise.multiply(*call)


class SoftmaxStep(Step):
    """IntSoftmax over the channels of each pixel, or over each sample's whole map."""

    def __init__(self, node, x: Layout, out: Layout, table, per_pixel: bool):
        self.name, self.x, self.out = node.name, x, out
        self.reads, self.writes = (x.name,), (out.name,)
        self.table = np.ascontiguousarray(table, np.int64)
        self.per_pixel = per_pixel
        self.lohi = (int(node.attrs["lo"]), int(node.attrs["hi"]))

    def bind(self, env, n):
        xb, xg, dims = env[self.x.name], self.x.geometry(), self.x.dims(n)
        ob, og, table, pp = env[self.out.name], self.out.geometry(), self.table, self.per_pixel
        lo, hi = self.lohi
        return lambda: softmax.softmax(xb, xg, dims, table, ob, og, lo, hi, pp)


class StagedStep(Step):
    """Channelwise steps on tensors the kernels cannot address in place: a 3-D or 5-D
    tensor (whose axis 1 is not its buffer's innermost), an operand broadcast onto the
    output, a softmax or a concat along another axis. Each operand is gathered into a
    scratch tensor of shape (n, C, G, 1), channels innermost (`elementwise.gather`, the
    index-map kernel of `MoveStep`), the `inner` steps run on the scratch tensors, and
    their results are scattered back. The maps come from `Layout.offsets`, once per batch
    size, so staging only moves elements and cannot change one.

    gathers: (source layout, scratch layout, map) with map(n) the source's buffer offset
    of each scratch element, in the scratch's reference order; scatters: (scratch layout,
    destination layout, map), map(n) the destination offsets; constants: (scratch layout,
    values(n)), a constant operand written into its scratch once per batch size."""

    def __init__(self, name, inner: list, gathers: list, scatters: list, constants=()):
        self.name, self.inner = name, inner
        self.gathers, self.scatters, self.constants = gathers, scatters, list(constants)
        self.reads = tuple(dict.fromkeys(src.name for src, _, _ in gathers))
        self.writes = tuple(dict.fromkeys(dst.name for _, dst, _ in scatters))

    def bind(self, env, n):
        scratch = {}
        lays = [lay for _, lay, _ in self.gathers] + [lay for lay, _, _ in self.scatters] \
            + [lay for lay, _ in self.constants]
        for lay in lays:
            if lay.name not in scratch:
                scratch[lay.name] = np.zeros(lay.nbytes(n) // lay.dtype.itemsize, lay.dtype)
        for lay, values in self.constants:
            lay.from_reference(values(n), scratch[lay.name], n)
        flat = lambda m: np.ascontiguousarray(m, np.int64).reshape(-1)
        moves_in = [(env[src.name], flat(m(n)), scratch[lay.name], flat(lay.offsets(n)))
                    for src, lay, m in self.gathers]
        moves_out = [(scratch[lay.name], flat(lay.offsets(n)), env[dst.name], flat(m(n)))
                     for lay, dst, m in self.scatters]
        calls = [s.bind(scratch, n) for s in self.inner]

        def run():
            for x, src, y, dst in moves_in:
                elementwise.gather(x, src, y, dst, 0)
            for call in calls:
                call()
            for x, src, y, dst in moves_out:
                elementwise.gather(x, src, y, dst, 0)
        return run


def _staged_shape(shape):
    """(1, C, G, 1) for a tensor (N, C, d2, d3, ...), G = d2 d3 ...: the same elements in
    the same reference order, with C as the buffer's innermost axis."""
    c = shape[1] if len(shape) > 1 else 1
    return (1, c, int(np.prod(shape[2:], dtype=np.int64)), 1)


def _scratch(plan, node, tag, shape, dtype):
    return Layout(f"{node.name}/staged/{tag}", shape, dtype)


def _broadcast_map(x: Layout, shape):
    """x's buffer offsets broadcast onto a tensor of `shape` (the batch taken from n), as
    numpy broadcasts x's reference array."""
    return lambda n: np.broadcast_to(x.offsets(n), (n,) + tuple(shape[1:]))


def _constant_map(value, shape):
    value = np.asarray(value, np.int64)
    return lambda n: np.broadcast_to(value, (n,) + tuple(shape[1:]))


class Plan:
    """An integer graph compiled to kernel calls; `run(x)` equals `run_integer(graph, x)`."""

    def __init__(self, graph, path: str | None = None, fuse_residual: bool = True):
        self.graph, self.path = graph, path or cpu.PATH
        self.fuse_residual = fuse_residual
        floats = [t for t in graph.inputs if graph.values[t].dtype == "float32"]
        if len(floats) > 1:
            raise IntqError("numba backend: models with one float input only")
        self.layouts: dict[str, Layout] = {}
        self.alias: dict[str, str] = {}
        self.steps: list[Step] = []
        self._bound: dict[int, tuple] = {}
        self._chunk: int | None = None
        self._split: int | None = None
        self._crossing: dict[int, list] = {}
        self._build()

    # -- analysis -----------------------------------------------------------------
    def layout(self, name) -> Layout:
        name = self.alias.get(name, name)
        if name not in self.layouts:
            v = self.fused.values[name]
            self.layouts[name] = Layout(name, v.shape, v.dtype)
        return self.layouts[name]

    def _build(self):
        # The backend's fusion pass says what may be fused; the plan's options decide.
        g = self.fused = fuse(self.graph, residual=self.fuse_residual)
        readers: dict[str, list] = {}
        for node in g.nodes:
            for i in node.inputs:
                readers.setdefault(i, []).append(node)
        # Flatten/Reshape feeding only Linear layers cost nothing: the Linear reads the map.
        for node in g.nodes:
            rs = readers.get(node.output, [])
            if node.op in _ALIASES and rs and node.output not in g.outputs \
                    and all(_layer(r).op == "IntLinear" for r in rs):
                self.alias[node.output] = self.alias.get(node.inputs[0], node.inputs[0])
        # Halos first (a conv reading a tensor decides its padding), then the steps.
        for node in g.nodes:
            layer = _layer(node)
            if layer.op == "IntConv":
                self.layout(layer.inputs[0]).need_halo(layer.attrs["pads"], int(layer.attrs["x_zero_point"]))
        # An integer graph input (a graph cut out of a model: a fused node tested alone)
        # is copied into its layout from the caller's array.
        self.steps += [FeedStep(t, self.layout(t)) for t in g.inputs if g.values[t].dtype != "float32"]
        for node in g.nodes:
            if node.op in _ALIASES and node.output in self.alias:
                continue
            self.steps.append(self._step(node))

    def _step(self, node):
        builder = STEPS.get(node.op)
        if builder is None:
            raise IntqError(f"numba backend: no kernel for op {node.op} (node {node.name})")
        return builder(self, node)

    def _conv_step(self, node, out_name, coff, epilogue: Epilogue):
        g = self.graph
        x = self.layout(node.inputs[0])
        w = g.constants[node.inputs[1]].astype(np.int64)
        bias = g.constants[node.inputs[2]].astype(np.int64)
        if node.op == "IntLinear":
            w = w.reshape(w.shape[0], x.c, x.h, x.w)
            geometry = ConvGeometry((1, 1), (0, 0, 0, 0), (1, 1), 1)
        else:
            a = node.attrs
            geometry = ConvGeometry(tuple(a["strides"]), tuple(a["pads"]), tuple(a["dilations"]),
                                    a["groups"])
        return ConvStep(node.name, x, w, bias, geometry, self.layout(out_name), coff, epilogue,
                        self.path)

    def _fused_step(self, node):
        """One FusedConv node (`kernels.fuse`) as one kernel call."""
        g, at = self.fused, node.attrs
        layer, consumer = at["nodes"][0], at["nodes"][1]
        const = lambda t: g.constants[t]
        a = consumer.attrs
        if at["epilogue"] == "residual":
            # IntAdd of two branches: inputs x0, x1, b0, b1, c0, c1
            k, o = at["branch"], 1 - at["branch"]
            bs, cs = consumer.inputs[2:4], consumer.inputs[4:6]
            residual = Residual(self.layout(consumer.inputs[o]), int(a["zero_points"][o]),
                                const(bs[o]), const(cs[o]))
            ep = Epilogue(RESIDUAL, const(bs[k]), const(cs[k]), int(a["out_zero_point"]),
                          int(a["lo"]), int(a["hi"]), residual)
        else:   # "requantize", or a concat branch's Requantize into its slice
            ep = Epilogue(REQUANT, const(consumer.inputs[1]), const(consumer.inputs[2]),
                          int(a["out_zero_point"]), int(a["lo"]), int(a["hi"]))
        if at["copy"]:
            cp = at["nodes"][-1]
            c = cp.attrs
            ep.copy = Copy(self.layout(cp.output), int(c["in_zero_point"]), const(cp.inputs[1]),
                           const(cp.inputs[2]), int(c["out_zero_point"]), int(c["lo"]), int(c["hi"]))
        out_name, coff = at["write_into"] or (consumer.output, 0)
        return self._conv_step(layer, out_name, coff, ep)

    # -- execution ----------------------------------------------------------------
    def chunk(self) -> int:
        """Images per sub-batch of `run`: one where some step's tensors for one image
        (what it reads and writes) outgrow 1.5 times the threads' L2 caches, else the whole
        batch. Measured on a Zen 4 (1 MB L2 per core, 2 threads), batch 8: ResNet50, whose
        16-bit residual stream makes 5.8 MB steps, takes 10% less time image by image;
        ResNet18 (steps of at most 2.0 MB) and MobileNetV2 (1.5 MB) take 0-8% more, their
        weights then being read once per image instead of once per batch."""
        if self._chunk is None:
            import numba
            per_image = max([sum(self.layouts[t].nbytes(1) for t in set(s.reads + s.writes) if t in self.layouts)
                             for s in self.steps], default=0)
            budget = 1.5 * cpu.l2_bytes() * numba.get_num_threads()
            self._chunk = 1 if per_image > budget else 1 << 30
        return self._chunk

    def split(self) -> int:
        """Where a network that runs image by image (`chunk` = 1) goes over to the whole
        batch: `run` takes steps [0, k) per image and the rest on the batch. Per image, a
        step keeps its activations in cache but reads its weights again for every image;
        on the batch it reads its weights once but streams its activations. k minimises
        sum_{i<k} weights_i + sum_{i>=k} activations_i (bytes per image). ResNet50 on a
        Zen 4, batch 8: the late layers (1-2 MB of weights, 14x14 and 7x7 maps) then run
        on the batch, 3-7% less time in four same-process comparisons. 0 (nothing per image
        before the batch) where `chunk` > 1: forcing the split on ResNet18 and MobileNetV2
        was 1-8% slower in a quiet spell (faster in noisier ones), so they keep the batch."""
        if self._split is None:
            self._split = 0
            if self.chunk() == 1:
                acts = [sum(self.layouts[t].nbytes(1) for t in set(s.reads + s.writes) if t in self.layouts)
                        for s in self.steps]
                weights = [sum(a.nbytes for a in (getattr(s, "w", None), getattr(s, "w_odd", None))
                               if isinstance(a, np.ndarray)) for s in self.steps]
                costs = [sum(weights[:k]) + sum(acts[k:]) for k in range(len(self.steps) + 1)]
                self._split = int(np.argmin(costs))
        return self._split

    def bind(self, n: int):
        """Buffers for batch n (allocated once, reused across layers) and one callable per
        step (its output halos filled first)."""
        if n in self._bound:
            return self._bound[n]
        outputs = {self.alias.get(o, o) for o in self.graph.outputs}
        last_read = {}
        for i, s in enumerate(self.steps):
            for t in s.reads:
                last_read[t] = i
        free: list[np.ndarray] = []
        blocks: dict[str, np.ndarray] = {}
        # AMX blocks read a little past their input's last pixel (results dropped): every
        # buffer gets that much slack, so the reads stay inside memory the plan owns.
        slack = max([conv_amx.slack(s.strides[1] * s.x.cb) for s in self.steps
                     if isinstance(s, ConvStep) and s.amx], default=0)
        env = {"__feeds__": {}}
        calls = []
        for i, s in enumerate(self.steps):
            halos = []
            for t in s.writes:
                if t in env:
                    continue
                lay = self.layouts[t]
                need = -(-(lay.nbytes(n) + slack) // 64) * 64
                fit = [blk for blk in free if blk.size >= need]
                blk = min(fit, key=lambda b: b.size) if fit else np.zeros(max(need, 64), np.uint8)
                free = [b for b in free if b is not blk]
                env[t], blocks[t] = blk[:lay.nbytes(n)].view(lay.dtype), blk
                if any(lay.halo):
                    halos.append((lay, env[t]))
            calls.append(_with_halos(halos, s.bind(env, n), n))
            for t in s.reads:
                if last_read.get(t) == i and t not in outputs and t in blocks:
                    free.append(blocks[t])
        self._bound[n] = (env, calls)
        return self._bound[n]

    def _run_split(self, feeds, n):
        """`run` for batch n in two parts (`split`): the first k steps image by image, each
        image's tensors that later steps read copied into the whole-batch buffers, then the
        remaining steps on the whole batch."""
        k = self.split()
        env1, calls1 = self.bind(1)
        envn, callsn = self.bind(n)
        if k not in self._crossing:   # the tensors written before the split and read after it
            written = {t for s in self.steps[:k] for t in s.writes}
            later = {t for s in self.steps[k:] for t in s.reads} | {self.alias.get(o, o) for o in self.graph.outputs}
            self._crossing[k] = sorted(written & later)
        crossing = self._crossing[k]
        for i in range(n):
            env1["__feeds__"].update({name: v[i:i + 1] for name, v in feeds.items()})
            for call in calls1[:k]:
                call()
            for t in crossing:
                size = self.layouts[t].nbytes(1) // env1[t].itemsize
                envn[t][i * size:(i + 1) * size] = env1[t][:size]
        envn["__feeds__"].update(feeds)
        for call in callsn[k:]:
            call()
        return [self.layouts[self.alias.get(o, o)].to_reference(envn[self.alias.get(o, o)], n)
                for o in self.graph.outputs]

    def run(self, x, trace=False):
        """Integer outputs (int64, reference layout) for float NCHW input x. trace=True: a
        dict of every tensor the plan stores, copied out right after the step that writes
        it (before its buffer is reused); a fused conv's accumulator never exists, so the
        trace holds its Requantize/add/concat output instead. Aliased tensors (a Flatten
        read by a Linear) are given reshaped."""
        if isinstance(x, dict):   # {input name: array}: integer inputs in the reference layout
            feeds = {k: np.ascontiguousarray(v) for k, v in x.items()}
        else:
            feeds = {self.graph.inputs[0]: np.ascontiguousarray(x, dtype=np.float32)}
        n = next(iter(feeds.values())).shape[0]
        if not trace and n > 1 and 0 < self.split() < len(self.steps):
            return self._run_split(feeds, n)
        if not trace:
            # A batch runs as sub-batches of `chunk` images (the last one shorter): each
            # image's activations then stay in cache from layer to layer.
            chunk = min(n, self.chunk())
            outs = []
            for s0 in range(0, n, chunk):
                k = min(chunk, n - s0)
                env, calls = self.bind(k)
                env["__feeds__"].update({name: v[s0:s0 + k] for name, v in feeds.items()})
                for call in calls:
                    call()
                outs.append([self.layouts[self.alias.get(o, o)].to_reference(env[self.alias.get(o, o)], k)
                             for o in self.graph.outputs])
            return [np.concatenate(parts) if len(parts) > 1 else parts[0] for parts in zip(*outs)]
        env, calls = self.bind(n)
        env["__feeds__"].update(feeds)
        seen = {}
        for step, call in zip(self.steps, calls):
            call()
            for t in step.writes:  # a concat written in parts: the last write is complete
                seen[t] = self.layouts[t].to_reference(env[t], n)
        for name, src in self.alias.items():
            seen[name] = seen[src].reshape((n,) + tuple(self.graph.values[name].shape[1:]))
        return seen


def _layer(node):
    """The IntConv/IntLinear inside a fused node, or the node itself."""
    return node.attrs["nodes"][0] if node.op == "FusedConv" else node


def _requantize_step(plan, node):
    """Requantize in place on a 4-D or 2-D tensor; on another rank staged (its per-channel
    multipliers run along axis 1, which only the staged layout keeps innermost)."""
    a, c = node.attrs, plan.fused.constants
    x, out = plan.layout(node.inputs[0]), plan.layout(node.output)
    step = lambda x, out: RequantizeStep(node.name, x, int(a["in_zero_point"]), c[node.inputs[1]],
                                         c[node.inputs[2]], out, 0, int(a["out_zero_point"]),
                                         int(a["lo"]), int(a["hi"]))
    if x.channels_inner:
        return step(x, out)
    return _staged_unary(plan, node, step)


def _staged_unary(plan, node, step):
    """A one-input channelwise op staged: `step(x, out)` built on the scratch layouts."""
    g = plan.fused
    x, out = plan.layout(node.inputs[0]), plan.layout(node.output)
    shape = _staged_shape(g.values[node.output].shape)
    xs = _scratch(plan, node, "in", shape, g.values[node.inputs[0]].dtype)
    os_ = _scratch(plan, node, "out", shape, g.values[node.output].dtype)
    return StagedStep(node.name, [step(xs, os_)], [(x, xs, x.offsets)], [(os_, out, out.offsets)])


def _add_step(plan, node):
    """IntAdd: a plain add (`fuse.plain_add`) on its tensors; one with signs or an offset
    as well, where every branch has the output's shape and a 4-D or 2-D layout; else
    (a box decode on 3-D tensors, a broadcast branch) staged, each branch broadcast onto
    the output."""
    a, c, n = node.attrs, plan.fused.constants, node.attrs["n"]
    g, out = plan.fused, plan.layout(node.output)
    xs = node.inputs[:n]
    zps = [int(z) for z in a["zero_points"]]
    bs, cs = [c[t] for t in node.inputs[n:2 * n]], [c[t] for t in node.inputs[2 * n:3 * n]]
    shape = g.values[node.output].shape
    offset = None
    if a.get("offset"):
        try:
            offset = np.broadcast_to(np.asarray(c[node.inputs[3 * n]], np.int64), (1,) + tuple(shape[1:]))
        except ValueError:
            raise IntqError(f"numba backend: {node.name}: the offset constant varies along the batch")
    in_place = out.channels_inner and all(
        g.values[t].shape == shape and plan.layout(t).channels_inner for t in xs)
    if in_place:
        return AddStep(node, [plan.layout(t) for t in xs], zps, bs, cs, out, a.get("signs"), offset)
    st = _staged_shape(shape)
    scratch, gathers = [], []
    for i, t in enumerate(xs):
        v = g.values[t].shape
        # A branch's multiplier runs along its own axis 1: per channel only where that is
        # the output's axis 1.
        if (len(v) != len(shape) or v[1] != shape[1]) and (np.size(bs[i]) > 1 or np.size(cs[i]) > 1):
            raise IntqError(f"numba backend: {node.name}: branch {t} has per-channel multipliers "
                            f"but is broadcast along the output's channels")
        lay = _scratch(plan, node, f"in{i}", st, g.values[t].dtype)
        scratch.append(lay)
        gathers.append((plan.layout(t), lay, _broadcast_map(plan.layout(t), shape)))
    os_ = _scratch(plan, node, "out", st, g.values[node.output].dtype)
    inner = AddStep(node, scratch, zps, bs, cs, os_, a.get("signs"),
                    None if offset is None else offset.reshape(st))
    return StagedStep(node.name, [inner], gathers, [(os_, out, out.offsets)])


def _concat_step(plan, node):
    """IntConcat on channels, or on the height or width of a 4-D tensor (each branch
    requantized into its rows or columns); on channels, the parts that a fused layer
    already wrote in place (`kernels.fuse`'s concat branches) are skipped. Any other axis
    or rank (a 3-D tensor's last, YOLO's anchors) is staged: each branch requantized in
    its own scratch and scattered into its slice of the output."""
    g, a, n = plan.fused, node.attrs, node.attrs["n"]
    out = plan.layout(node.output)
    axis = a["axis"] % out.rank
    requant = lambda i, x, o, coff=0, at=(0, 0): RequantizeStep(
        f"{node.name}[{i}]", x, int(a["zero_points"][i]), g.constants[node.inputs[n + i]],
        g.constants[node.inputs[2 * n + i]], o, coff, int(a["out_zero_point"]), int(a["lo"]),
        int(a["hi"]), at)
    if out.rank == 4 and axis in (2, 3):
        parts, start = [], 0
        for i in range(n):
            x = plan.layout(node.inputs[i])
            parts.append(requant(i, x, out, 0, (start, 0) if axis == 2 else (0, start)))
            start += x.h if axis == 2 else x.w
        return ConcatStep(node.name, parts, out)
    if axis != 1 or not out.channels_inner:
        inner, gathers, scatters, start = [], [], [], 0
        for i in range(n):
            t = node.inputs[i]
            x, v = plan.layout(t), g.values[t].shape
            st = _staged_shape(v)
            xs = _scratch(plan, node, f"in{i}", st, g.values[t].dtype)
            os_ = _scratch(plan, node, f"out{i}", st, g.values[node.output].dtype)
            inner.append(requant(i, xs, os_))
            gathers.append((x, xs, x.offsets))
            part = range(start, start + v[axis])
            scatters.append((os_, out, lambda n_, part=part: np.take(out.offsets(n_), part, axis=axis)))
            start += v[axis]
        return StagedStep(node.name, inner, gathers, scatters)
    coff, parts = 0, []
    for i in range(n):
        t = node.inputs[i]
        x = plan.layout(t)
        prod = g.producer(t)
        if prod is not None and prod.op == "FusedConv" and prod.attrs["write_into"] is not None:
            coff += x.c
            continue
        parts.append(requant(i, x, out, coff))
        coff += x.c
    return ConcatStep(node.name, parts, out)


def _pool_step(plan, node):
    consts = None if node.op == "MaxPool" else tuple(plan.fused.constants[t] for t in node.inputs[1:3])
    return PoolStep(node, plan.layout(node.inputs[0]), plan.layout(node.output), consts)


def _channelwise(node, x: Layout, out: Layout, consts):
    """The kernel step of a one-input channelwise op on layouts that allow one."""
    op = node.op
    if op in elementwise.KERNELS:
        return KernelStep(node, x, out, *elementwise.KERNELS[op], consts)
    if op == "IntAffine":
        return AffineStep(node, x, out, consts)
    if op == "IntLookup":
        return LookupStep(node, x, out, consts[0])
    if op == "IntLeakyRelu":
        return LeakyReluStep(node, x, out, consts)
    raise IntqError(f"numba backend: no kernel for op {op} (node {node.name})")


def _elementwise_step(plan, node):
    """A channelwise op: its kernel on the tensors where their layouts allow, else staged."""
    g = plan.fused
    x, out = plan.layout(node.inputs[0]), plan.layout(node.output)
    consts = [g.constants[t] for t in node.inputs[1:] if t in g.constants]
    if node.op == "IntSoftmax":
        return _softmax_step(plan, node, consts[0])
    if node.op == "IntMul":
        return _mul_step(plan, node, consts)
    if x.channels_inner and out.channels_inner:
        return _channelwise(node, x, out, consts)
    return _staged_unary(plan, node, lambda xs, os_: _channelwise(node, xs, os_, consts))


def _softmax_step(plan, node, table):
    """IntSoftmax over a 4-D or 2-D tensor's channels, or a 4-D one's whole map, in place;
    over any other axes staged with the reduced axes as the scratch's channels."""
    g = plan.fused
    x, out = plan.layout(node.inputs[0]), plan.layout(node.output)
    axes = sorted(a % x.rank for a in node.attrs["axes"])
    if x.channels_inner and (axes == [1] or (x.rank == 4 and axes == [1, 2, 3])):
        return SoftmaxStep(node, x, out, table, per_pixel=axes == [1])
    shape = g.values[node.inputs[0]].shape
    rest = [ax for ax in range(1, x.rank) if ax not in axes]
    perm = [0] + axes + rest
    st = (1, int(np.prod([shape[ax] for ax in axes])), int(np.prod([shape[ax] for ax in rest])), 1)
    xs = _scratch(plan, node, "in", st, g.values[node.inputs[0]].dtype)
    os_ = _scratch(plan, node, "out", st, g.values[node.output].dtype)
    moved = lambda lay: (lambda n: lay.offsets(n).transpose(perm))
    return StagedStep(node.name, [SoftmaxStep(node, xs, os_, table, per_pixel=True)],
                      [(x, xs, moved(x))], [(os_, out, moved(out))])


def _mul_step(plan, node, consts):
    """IntMul in place where both operands are 2-D or 4-D like the output, the batch not
    broadcast, and each other axis either the output's or 1 (the SE gate); otherwise (a
    constant operand of any shape, a 3-D decode, a broadcast along a leading axis) staged,
    both operands broadcast onto the output."""
    g = plan.fused
    a_name, b_name = node.inputs[:2]
    x, out = plan.layout(a_name), plan.layout(node.output)
    mult = consts[-2:]
    vo = g.values[node.output].shape
    if not node.attrs.get("b_constant"):
        b = plan.layout(b_name)
        va, vb = g.values[a_name].shape, g.values[b_name].shape
        if (x.channels_inner and b.channels_inner and out.channels_inner and len(va) == len(vb) == len(vo)
                and all(d in (1, e) for v in (va, vb) for d, e in zip(v[1:], vo[1:]))
                and va[0] == vb[0] == vo[0]):
            return MulStep(node, x, b, out, mult)
    st = _staged_shape(vo)
    xs = _scratch(plan, node, "a", st, g.values[a_name].dtype)
    os_ = _scratch(plan, node, "out", st, g.values[node.output].dtype)
    gathers, constants = [(x, xs, _broadcast_map(x, vo))], []
    if node.attrs.get("b_constant"):
        # The constant's integers fit INT32 (`IntMul.check` bounds the product by 2^31).
        bs = _scratch(plan, node, "b", st, "int32")
        constants.append((bs, _constant_map(g.constants[b_name], vo)))
    else:
        bs = _scratch(plan, node, "b", st, g.values[b_name].dtype)
        gathers.append((b, bs, _broadcast_map(b, vo)))
    return StagedStep(node.name, [MulStep(node, xs, bs, os_, mult)], gathers,
                      [(os_, out, out.offsets)], constants)


# The step of each node of the fused graph, by op (a test checks that every integer op has one).
STEPS = {
    # A layer alone stores its INT32 accumulator; one with its epilogue is a FusedConv.
    "IntConv": lambda plan, node: plan._conv_step(node, node.output, 0, Epilogue(RAW)),
    "IntLinear": lambda plan, node: plan._conv_step(node, node.output, 0, Epilogue(RAW)),
    "FusedConv": lambda plan, node: plan._fused_step(node),
    "QuantizeInput": lambda plan, node: QuantizeStep(node, plan.layout(node.output), node.inputs[0]),
    "Requantize": _requantize_step,
    "IntAdd": _add_step,
    "IntConcat": _concat_step,
    "IntAvgPool": _pool_step, "IntGlobalAvgPool": _pool_step, "MaxPool": _pool_step,
    "IntClamp": lambda plan, node: ClampStep(node, plan.layout(node.inputs[0]), plan.layout(node.output)),
    "IntResizeLinear": lambda plan, node: ResizeLinearStep(node, plan.layout(node.inputs[0]),
                                                           plan.layout(node.output)),
    **{op: (lambda plan, node: MoveStep(node, plan.layout(node.inputs[0]),
                                        [plan.layout(o) for o in node.outputs])) for op in MOVEMENT},
    **{op: _elementwise_step for op in CHANNELWISE},
}


def _with_halos(halos, call, n):
    if not halos:
        return call

    def run():
        for lay, buf in halos:
            lay.fill_halo(buf, n)
        call()
    return run


class ConcatStep(Step):
    """IntConcat on channels: each branch requantized into its slice of the output."""

    def __init__(self, name, parts, out):
        self.name, self.parts, self.out = name, parts, out
        self.reads = tuple(p.x.name for p in parts)
        self.writes = (out.name,)

    def bind(self, env, n):
        calls = [p.bind(env, n) for p in self.parts]

        def run():
            for c in calls:
                c()
        return run
