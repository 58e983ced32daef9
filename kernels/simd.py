"""AVX-512 and AMX building blocks for Numba: a 16 x int32 vector type and the VNNI byte
dot product; the AMX tile instructions (below); the 16-channel zmm epilogue (below).

LLVM does not produce `vpdpbusd` from a plain Numba loop, so the fast GEMM calls it through
`numba.extending.intrinsic`. The vector type `i32x16` lives in one zmm register; the
intrinsics below load, broadcast, multiply-accumulate and store it. Only kernels chosen
when the CPU has AVX-512 VNNI (see `intq.kernels.cpu`) ever compile code that uses them.

vpdpbusd semantics (no saturation): acc[i] += sum_{j<4} uint8(a[4i+j]) * int8(w[4i+j]),
wrapping in int32. intq's accumulators are bounded below 2**31 by lowering's static
overflow check, so the wrap never happens and the result equals the exact sum.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_VEC = ir.VectorType(ir.IntType(32), 16)
_I32 = ir.IntType(32)


class I32x16(types.Type):
    """Numba type of one zmm register holding 16 int32 lanes."""

    def __init__(self):
        super().__init__(name="i32x16")


i32x16 = I32x16()


@register_model(I32x16)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _element_pointer(context, builder, arytype, ary, index):
    data = context.make_array(arytype)(context, builder, ary).data
    return builder.gep(data, [index])


@intrinsic
def vzero(typingctx):
    """A vector of 16 zeros."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_VEC, None)
    return i32x16(), codegen


@intrinsic
def vload(typingctx, ary, index):
    """The 64 bytes of the int8/uint8 1-D array `ary` starting at element `index`."""
    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(ptr, _VEC.as_pointer()), typ=_VEC, align=1)
    return i32x16(ary, types.intp), codegen


@intrinsic
def vbroadcast4(typingctx, ary, index):
    """The 4 bytes of the 1-D byte array `ary` at `index`, repeated in all 16 lanes."""
    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        word = builder.load(builder.bitcast(ptr, _I32.as_pointer()), typ=_I32, align=1)
        one = builder.insert_element(ir.Constant(_VEC, None), word, ir.Constant(_I32, 0))
        return builder.shuffle_vector(one, ir.Constant(_VEC, None), ir.Constant(_VEC, None))
    return i32x16(ary, types.intp), codegen


@intrinsic
def vdpbusd(typingctx, acc, a, w):
    """acc + the 4-byte dot products of unsigned bytes `a` and signed bytes `w`, per lane."""
    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_VEC, [_VEC, _VEC, _VEC])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, list(args))
    return i32x16(i32x16, i32x16, i32x16), codegen


@intrinsic
def vstore(typingctx, ary, index, vec):
    """Store the 16 lanes of `vec` into the int32 1-D array `ary` at `index`."""
    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _VEC.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(ary, types.intp, i32x16), codegen


# -- AMX (Advanced Matrix Extensions) ---------------------------------------------------
# Eight tile registers tmm0-7 of up to 16 rows x 64 bytes, shaped by a 64-byte
# configuration that each thread loads (`tile_config`) before using them. `tile_dpbusd`
# is TDPBUSD: C[r, n] += sum_{j<4} uint8(A[r, 4k + j]) * int8(B[k, 4n + j]) over the 16
# rows k of B, wrapping in int32 like vpdpbusd (never reached: see the module docstring).
# Tile numbers are compile-time constants (LLVM takes them as immediates), so they are
# passed as integer literals.

_I8, _I64 = ir.IntType(8), ir.IntType(64)
_BYTE_PTR = _I8.as_pointer()


def _tile_number(t) -> int:
    from numba.core.errors import RequireLiteralValue

    if not isinstance(t, types.IntegerLiteral):
        raise RequireLiteralValue("an AMX tile number must be an integer literal")
    return t.literal_value


def _byte_pointer(context, builder, arytype, ary, index):
    return builder.bitcast(_element_pointer(context, builder, arytype, ary, index), _BYTE_PTR)


def _call(builder, name, argtypes, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), argtypes), name)
    builder.call(fn, args)


@intrinsic
def tile_config(typingctx, cfg):
    """LDTILECFG from the 64-byte uint8 array `cfg` (palette 1, rows and bytes per tile)."""
    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], ir.Constant(_I64, 0))
        _call(builder, "llvm.x86.ldtilecfg", [_BYTE_PTR], [ptr])
        return context.get_dummy_value()
    return types.void(cfg), codegen


@intrinsic
def tile_release(typingctx):
    """TILERELEASE: back to the initial state (no context-switch cost for idle tiles)."""
    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilerelease", [], [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def tile_zero(typingctx, t):
    """TILEZERO tmm{t}."""
    num = _tile_number(t)

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilezero", [_I8], [ir.Constant(_I8, num)])
        return context.get_dummy_value()
    return types.void(t), codegen


def _tile_memory(llvm_name, t, ary):
    """Signature and codegen of a tile load or store: tile t, rows at `ary`[index], ...,
    `stride` bytes apart."""
    num = _tile_number(t)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[1], args[1], args[2])
        _call(builder, llvm_name, [_I8, _BYTE_PTR, _I64], [ir.Constant(_I8, num), ptr, args[3]])
        return context.get_dummy_value()
    return types.void(t, ary, types.intp, types.intp), codegen


@intrinsic
def tile_load(typingctx, t, ary, index, stride):
    """TILELOADD tmm{t}: its rows from the 1-D array `ary`, the first at element `index`,
    each `stride` bytes after the previous."""
    return _tile_memory("llvm.x86.tileloadd64", t, ary)


@intrinsic
def tile_store(typingctx, t, ary, index, stride):
    """TILESTORED tmm{t} into the 1-D array `ary` from element `index`, rows `stride`
    bytes apart."""
    return _tile_memory("llvm.x86.tilestored64", t, ary)


@intrinsic
def tile_dpbusd(typingctx, c, a, b):
    """TDPBUSD tmm{c} += tmm{a} (uint8 rows) . tmm{b} (int8, 4-byte groups)."""
    nums = [_tile_number(t) for t in (c, a, b)]

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tdpbusd", [_I8] * 3, [ir.Constant(_I8, v) for v in nums])
        return context.get_dummy_value()
    return types.void(c, a, b), codegen


# -- The vector epilogue: 16 channels of DN at once ---------------------------------------
# `epilogue.store_pixel` is plain loops that LLVM vectorises 4 int64 lanes at a time,
# reloading five int64 table rows per element. These do 16 channels per call in zmm
# registers: the INT32 value plus its bias, times its multiplier as two int64 halves
# (even and odd lanes, `vpmuldq`), rounded in one step, (p + 2^(c-1)) >> c, which is
# `epilogue.round_shift`'s ((p >> (c-1)) + 1) >> 1 (both floor(p / 2^c + 1/2); p + 2^(c-1)
# stays below 2^63 since |p| < 2^62 and c <= 62), clamped in int64 and stored at the
# output's width. Tables come from `vector_tables`: per group of 16 channels, int32
# [bias x 16][multiplier x 16] and int64 [2^(c-1) even, odd][c even, odd] (8 lanes each).

_V32 = ir.VectorType(_I32, 16)
_V64 = ir.VectorType(_I64, 8)


def _splat(builder, value, vecty):
    one = builder.insert_element(ir.Constant(vecty, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vecty, None), ir.Constant(ir.VectorType(_I32, vecty.count), None))


def _vec_load(builder, ptr, vecty):
    return builder.load(builder.bitcast(ptr, vecty.as_pointer()), typ=vecty, align=1)


def _lane_mask(builder, nlty, nl):
    """<16 x i1>: lanes below nl (an int64) on; None where nl is the literal 16 (a whole
    group: plain loads and stores, which Zen 4 runs faster than masked ones)."""
    if isinstance(nlty, types.IntegerLiteral) and nlty.literal_value == 16:
        return None
    v32 = ir.VectorType(_I32, 16)
    lanes = ir.Constant(v32, list(range(16)))
    one = builder.insert_element(ir.Constant(v32, None), builder.trunc(nl, _I32), ir.Constant(_I32, 0))
    return builder.icmp_signed("<", lanes, builder.shuffle_vector(one, ir.Constant(v32, None),
                                                                  ir.Constant(v32, None)))


def _masked_load(builder, ptr, vecty, mask):
    """The lanes of `mask` from ptr (the others 0); lanes off are not read, so a ragged
    last group never reads past its buffer."""
    if mask is None:
        return _vec_load(builder, ptr, vecty)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vecty, [ptr.type, _I32, mask.type, vecty]),
        f"llvm.masked.load.v16i{vecty.element.width}.p0")
    return builder.call(fn, [ptr, ir.Constant(_I32, 1), mask, ir.Constant(vecty, None)])


def _masked_store(builder, value, ptr, mask):
    if mask is None:
        builder.store(value, builder.bitcast(ptr, value.type.as_pointer()), align=1)
        return
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [value.type, ptr.type, _I32, mask.type]),
        f"llvm.masked.store.v16i{value.type.element.width}.p0")
    builder.call(fn, [value, ptr, ir.Constant(_I32, 1), mask])


def _widen16(context, builder, aryty, ary, index, mask):
    """The `mask` lanes of 16 elements of an integer array (8, 16 or 32 bits) as int32."""
    ptr = _element_pointer(context, builder, aryty, ary, index)
    bits = aryty.dtype.bitwidth
    v = _masked_load(builder, ptr, ir.VectorType(ir.IntType(bits), 16), mask)
    if bits == 32:
        return v
    return builder.sext(v, _V32) if aryty.dtype.signed else builder.zext(v, _V32)


def _dn_rows(builder, v, bias, mul, rows, narrow):
    """DN of v + bias given the table rows as values: bias and multiplier (16 x int32),
    rows = [2^(c-1) even, odd][c even, odd] (8 x int64 each; narrow: rows[2] the 16 int32
    shifts c - 32). The one definition of the vector DN: every vector epilogue calls it."""
    x = builder.bitcast(builder.add(v, bias), _V64)
    m = builder.bitcast(mul, _V64)
    k32 = _splat(builder, ir.Constant(_I64, 32), _V64)
    even = builder.mul(builder.ashr(builder.shl(x, k32), k32), builder.ashr(builder.shl(m, k32), k32))
    odd = builder.mul(builder.ashr(x, k32), builder.ashr(m, k32))
    even, odd = builder.add(even, rows[0]), builder.add(odd, rows[1])
    if not narrow:
        return builder.ashr(even, rows[2]), builder.ashr(odd, rows[3])
    # the high words of both products, in lane order, then the rest of the shift in int32
    high = builder.shuffle_vector(builder.bitcast(even, _V32), builder.bitcast(odd, _V32),
                                  ir.Constant(_V32, [k for i in range(8) for k in (2 * i + 1, 16 + 2 * i + 1)]))
    return builder.ashr(high, builder.bitcast(rows[2], _V32))


# The narrow form, for layers whose every shift c is at least 32 (the usual case: a
# multiplier b of 31 bits times a scale ratio below 2^-1). DN(v) = floor((v b + 2^(c-1)) /
# 2^c) is then floor(floor((v b + 2^(c-1)) / 2^32) / 2^(c-32)): the high 32-bit word of
# the rounded product, shifted right in int32 lanes, 16 at a time. |v b + 2^(c-1)| <
# 2^62 + 2^61, so |DN| < 1.5 * 2^(62-c): at c = 32 below 1.5 * 2^30, and one result plus
# a zero point below 2^16 stays inside int32, so the clamp runs in int32 lanes, one
# instruction per bound instead of two. The residual add sums two results, which needs
# c >= 33 in both tables (each then below 0.75 * 2^30). The table's third int64 row then
# holds c - 32 as 16 int32 lanes (`epilogue.vector_tables(narrow=True)`). INT4 layers,
# whose coarser scales give larger multipliers, meet c = 32 often: on MobileNetV2 at 4
# bits the narrow form covers 37 of 53 layers from c = 32 on, against 20 from c = 33 on.
NARROW_MIN_SHIFT = 32
NARROW_MIN_SHIFT_RESIDUAL = 33


def _store16_narrow(context, builder, y, zo, lo, hi, outty, out, oi, mask):
    """clamp(y + zo, lo, hi) for the `mask` lanes of the int32 vector y, stored at the
    output's width."""
    y = builder.add(y, _splat(builder, builder.trunc(zo, _I32), _V32))
    lo_v, hi_v = _splat(builder, builder.trunc(lo, _I32), _V32), _splat(builder, builder.trunc(hi, _I32), _V32)
    y = builder.select(builder.icmp_signed("<", y, lo_v), lo_v, y)
    y = builder.select(builder.icmp_signed(">", y, hi_v), hi_v, y)
    bits = outty.dtype.bitwidth
    if bits < 32:
        y = builder.trunc(y, ir.VectorType(ir.IntType(bits), 16))
    _masked_store(builder, y, _element_pointer(context, builder, outty, out, oi), mask)


def _clamp_halves(builder, even, odd, lo, hi):
    """The int64 (even, odd) halves clamped to [lo, hi] (int64 scalars inside int32) and
    put back in lane order as 16 int32 lanes."""
    lo_v, hi_v = _splat(builder, lo, _V64), _splat(builder, hi, _V64)

    def clamp(v):
        v = builder.select(builder.icmp_signed("<", v, lo_v), lo_v, v)
        return builder.select(builder.icmp_signed(">", v, hi_v), hi_v, v)
    low = _splat(builder, ir.Constant(_I64, 0xFFFFFFFF), _V64)
    k32 = _splat(builder, ir.Constant(_I64, 32), _V64)
    return builder.bitcast(builder.or_(builder.and_(clamp(even), low), builder.shl(clamp(odd), k32)), _V32)


def _store16(context, builder, even, odd, zo, lo, hi, outty, out, oi, mask):
    """clamp(v + zo, lo, hi) for the `mask` lanes of (even, odd), stored at the output's
    width."""
    both = _clamp_halves(builder, even, odd, builder.sub(lo, zo), builder.sub(hi, zo))
    y = builder.add(both, _splat(builder, builder.trunc(zo, _I32), _V32))
    bits = outty.dtype.bitwidth
    if bits < 32:
        y = builder.trunc(y, ir.VectorType(ir.IntType(bits), 16))
    _masked_store(builder, y, _element_pointer(context, builder, outty, out, oi), mask)


def _table_rows(context, builder, t32ty, t32, t64ty, t64, ti):
    """Group ti's six rows of (t32, t64): bias and multiplier (16 x int32), then the four
    int64 rows (8 lanes each)."""
    p32 = _element_pointer(context, builder, t32ty, t32, ti)
    p64 = _element_pointer(context, builder, t64ty, t64, ti)
    return ([_vec_load(builder, p32, _V32), _vec_load(builder, builder.gep(p32, [ir.Constant(_I64, 16)]), _V32)]
            + [_vec_load(builder, builder.gep(p64, [ir.Constant(_I64, 8 * i)]), _V64) for i in range(4)])


def _requant(context, builder, a, rows, zo, lo, hi, outty, out, oi, mask, narrow):
    """clamp(DN(a + bias) + zo, lo, hi) stored at out[oi] (`vepi_requant_rows`), rows as
    from `_table_rows`."""
    dn = _dn_rows(builder, a, rows[0], rows[1], rows[2:], narrow)
    if narrow:
        _store16_narrow(context, builder, dn, zo, lo, hi, outty, out, oi, mask)
    else:
        _store16(context, builder, *dn, zo, lo, hi, outty, out, oi, mask)


def _residual(context, builder, a, rows, r, rrows, zo, lo, hi, outty, out, oi, mask, narrow):
    """`vepi_residual_rows`' arithmetic on the values a and r, rows as from `_table_rows`."""
    d1 = _dn_rows(builder, a, rows[0], rows[1], rows[2:], narrow)
    d2 = _dn_rows(builder, r, rrows[0], rrows[1], rrows[2:], narrow)
    if narrow:
        _store16_narrow(context, builder, builder.add(d1, d2), zo, lo, hi, outty, out, oi, mask)
    else:
        _store16(context, builder, builder.add(d1[0], d2[0]), builder.add(d1[1], d2[1]), zo, lo, hi, outty, out,
                 oi, mask)


# -- The tables in registers ------------------------------------------------------------
# A kernel that runs many pixels through one group of 16 channels loads the group's table
# rows once and passes them as values, instead of reloading them per pixel: per pixel and
# group, a residual layer with its copy otherwise loads 14 table vectors against 16
# `vpdpbusd` of a 64-channel reduction. The rows travel as one tuple (`vrows`,
# `vsplit_rows`): six separate values per table made the kernels' Numba IR, and the
# compile time of every parallel kernel that inlines them, much larger.

rows6 = types.UniTuple(i32x16, 6)


def _tuple_rows(builder, tup, count):
    return [builder.extract_value(tup, i) for i in range(count)]


@intrinsic
def vrows(typingctx, t32, t64, ti):
    """Group ti's six rows of a `vector_tables` pair: bias and multiplier, then the four
    int64 rows (as 16-lane values); ti = 32 per group."""
    def codegen(context, builder, sig, args):
        rows = _table_rows(context, builder, sig.args[0], args[0], sig.args[1], args[1], args[2])
        return context.make_tuple(builder, rows6, rows[:2] + [builder.bitcast(r, _V32) for r in rows[2:]])
    return rows6(t32, t64, types.intp), codegen


@intrinsic
def vsplit_rows(typingctx, st, ti):
    """Group ti's four rows of a split table (`epilogue.split_table`; ti = 64 per group),
    then two zero rows: the type of `vrows`, so that one variable holds an operand's rows
    in either form and a loop keeps only the rows it reads in registers."""
    def codegen(context, builder, sig, args):
        rows = _split_rows(context, builder, sig.args[0], args[0], args[1])
        return context.make_tuple(builder, rows6, rows + [ir.Constant(_V32, None)] * 2)
    return rows6(st, types.intp), codegen


@intrinsic
def vzero_rows(typingctx):
    """Six rows of zeros: the rows of a table a mode never reads."""
    def codegen(context, builder, sig, args):
        return context.make_tuple(builder, rows6, [ir.Constant(_V32, None)] * 6)
    return rows6(), codegen


def _row_values(builder, tup):
    """A `vrows` tuple in `_table_rows`' form."""
    rows = _tuple_rows(builder, tup, 6)
    return rows[:2] + [builder.bitcast(r, _V64) for r in rows[2:]]


# Lane counts and forms known only at run time: a kernel that passes the literal 16 for
# whole groups and the remainder for the last one, or True and False for the int32 form,
# inlines its epilogue once per combination, and in a parallel kernel every copy costs
# Numba seconds of compile. These intrinsics take either; given run-time values they
# branch in the LLVM code they emit (whole group or masked, int32 or int64 form), which
# LLVM compiles in a fraction of that and hoists out of the pixel loop.

def _for_lanes(builder, nlty, nl, emit):
    """emit(mask) for the lanes below nl: unmasked (mask None) where nl is the literal 16,
    masked for another literal, and both, chosen by nl == 16, for a run-time nl. Returns
    what emit returns (for a run-time nl, the value of the branch taken, or None)."""
    if isinstance(nlty, types.IntegerLiteral):
        return emit(_lane_mask(builder, nlty, nl))
    with builder.if_else(builder.icmp_signed("==", nl, ir.Constant(nl.type, 16))) as (whole, ragged):
        with whole:
            v_whole, b_whole = emit(None), builder.block
        with ragged:
            v_ragged, b_ragged = emit(_lane_mask(builder, nlty, nl)), builder.block
    if v_whole is None:
        return None
    v = builder.phi(v_whole.type)
    v.add_incoming(v_whole, b_whole)
    v.add_incoming(v_ragged, b_ragged)
    return v


def _for_form(builder, narrowty, narrow, emit):
    """emit(is_narrow) for a literal flag, or both forms chosen by a run-time one."""
    if isinstance(narrowty, types.BooleanLiteral):
        emit(narrowty.literal_value)
        return
    with builder.if_else(builder.icmp_unsigned("!=", narrow, ir.Constant(narrow.type, 0))) as (narrow32, wide):
        with narrow32:
            emit(True)
        with wide:
            emit(False)


def _flag_type(narrow):
    if not isinstance(narrow, (types.BooleanLiteral, types.Boolean)):
        from numba.core.errors import TypingError
        raise TypingError("the epilogue's narrow flag must be a boolean")
    return narrow


@intrinsic
def vwiden(typingctx, ary, index, nl):
    """16 elements of an integer array (8, 16 or 32 bits) from `index` as int32 lanes,
    the lanes from nl on 0 and not read (nl the literal 16, or 16 at run time: all)."""
    def codegen(context, builder, sig, args):
        return _for_lanes(builder, sig.args[2], args[2],
                          lambda mask: _widen16(context, builder, sig.args[0], args[0], args[1], mask))
    return i32x16(ary, types.intp, nl), codegen


@intrinsic
def vepi_raw_rows(typingctx, a, rows, out, oi, nl):
    """out[oi:oi+nl] = a + bias (int32: a layer whose accumulator is stored), a the
    accumulator vector, bias from its group's rows (`vrows`)."""
    def codegen(context, builder, sig, args):
        bias = builder.extract_value(args[1], 0)
        ptr = _element_pointer(context, builder, sig.args[2], args[2], args[3])
        _for_lanes(builder, sig.args[4], args[4], lambda mask: _masked_store(builder, builder.add(args[0], bias), ptr,
                                                                             mask))
        return context.get_dummy_value()
    return types.void(i32x16, rows6, out, types.intp, nl), codegen


@intrinsic
def vepi_requant_rows(typingctx, a, rows, out, oi, zo, lo, hi, nl, narrow):
    """out[oi:oi+nl] = clamp(DN(a + bias) + zo, lo, hi) for the accumulator vector a (its
    first nl <= 16 lanes), its group's rows (`vrows`) already loaded; narrow: the int32
    form (`NARROW_MIN_SHIFT`). nl and narrow literals or run-time values (see above)."""
    def codegen(context, builder, sig, args):
        rows = _row_values(builder, args[1])
        _for_lanes(builder, sig.args[7], args[7], lambda mask: _for_form(builder, sig.args[8], args[8], lambda nar: (
            _requant(context, builder, args[0], rows, args[4], args[5], args[6], sig.args[2], args[2], args[3], mask,
                     nar))))
        return context.get_dummy_value()
    return types.void(i32x16, rows6, out, types.intp, types.int64, types.int64, types.int64, nl,
                      _flag_type(narrow)), codegen


@intrinsic
def vepi_residual_rows(typingctx, a, rows, r, rrows, out, oi, zo, lo, hi, nl, narrow):
    """The fused residual add for nl <= 16 channels: clamp(DN_1(a + bias) + DN_2(r - z_r)
    + zo, lo, hi) of the vectors a (accumulator) and r (residual operand, `vwiden`), both
    groups' rows (`vrows`) already loaded; the operand's bias row holds -z_r. The operand
    at most 16 bits wide, or 32 with z_r = 0 (an accumulator), so that r - z_r fits int32;
    nl and narrow as `vepi_requant_rows` (both tables then narrow)."""
    def codegen(context, builder, sig, args):
        rows, rrows = _row_values(builder, args[1]), _row_values(builder, args[3])
        _for_lanes(builder, sig.args[9], args[9], lambda mask: _for_form(builder, sig.args[10], args[10], lambda nar: (
            _residual(context, builder, args[0], rows, args[2], rrows, args[6], args[7], args[8], sig.args[4], args[4],
                      args[5], mask, nar))))
        return context.get_dummy_value()
    return types.void(i32x16, rows6, i32x16, rows6, out, types.intp, types.int64, types.int64, types.int64, nl,
                      _flag_type(narrow)), codegen


# -- The split form: DN of a 16-bit unsigned operand in 16 int32 lanes ----------------
# For 0 <= x < 2^16 (an unsigned operand of at most 16 bits with zero point 0: ResNet's
# residual stream, and the 8-bit copy made from it), 0 <= b < 2^31 and c >= 17, write
# b = bh 2^16 + bl (bl < 2^16, bh < 2^15) and 2^(c-1) = 2^(c-17) 2^16. Since
# floor(X / 2^c) = floor(floor(X / 2^16) / 2^(c-16)),
#     DN(x) = floor((x b + 2^(c-1)) / 2^c) = (x bh + 2^(c-17) + (x bl >> 16)) >> (c - 16),
# every step in unsigned 32-bit lanes: x bl < 2^32 is exact as the low half of the
# product, x bh < 2^31, and for c <= 47 the sum stays below 2^31 + 2^16 + 2^30 < 2^32. For
# c >= 48, x b < 2^47 <= 2^(c-1), so DN(x) = 0: the table gives such channels (and block
# padding) zero rows, which compute 0. 16 lanes per multiply instead of the int64 form's
# 8, and no even/odd halves to recombine. The result is below 2^30 + 1.
SPLIT_MIN_SHIFT, SPLIT_MAX_SHIFT = 17, 47


def _split_rows(context, builder, tty, t, ti):
    """The four int32 rows [bl][bh][2^(c-17)][c-16] of the split table `t` at group ti."""
    p = _element_pointer(context, builder, tty, t, ti)
    return [_vec_load(builder, builder.gep(p, [ir.Constant(_I64, 16 * i)]), _V32) for i in range(4)]


def _dn_split(builder, x, rows):
    """DN of the int32 lanes x (0 <= x < 2^16) by the split table rows (see above)."""
    t = builder.lshr(builder.mul(x, rows[0]), _splat(builder, ir.Constant(_I32, 16), _V32))
    return builder.lshr(builder.add(builder.add(builder.mul(x, rows[1]), t), rows[2]), rows[3])


def _residual_split(context, builder, a, rows, r, srows, zo, lo, hi, m, outty, out, oi, mask):
    """`vepi_residual_split_rows`' arithmetic on the values a and r: rows as from
    `_table_rows`, srows the split table's four rows."""
    even, odd = _dn_rows(builder, a, rows[0], rows[1], rows[2:], False)
    d2 = _dn_split(builder, r, srows)
    d1 = _clamp_halves(builder, even, odd, builder.sub(builder.sub(lo, zo), m), builder.sub(hi, zo))
    _store16_narrow(context, builder, builder.add(d1, d2), zo, lo, hi, outty, out, oi, mask)


@intrinsic
def vepi_requant_split_rows(typingctx, x, srows, out, oi, zo, lo, hi, nl):
    """out[oi:oi+nl] = clamp(DN(x) + zo, lo, hi) for the vector x (`vwiden`) of an unsigned
    operand of at most 16 bits with zero point 0, in the split form; its group's split
    rows (`vsplit_rows` of an `epilogue.split_table`) already loaded; nl as
    `vepi_requant_rows`."""
    def codegen(context, builder, sig, args):
        d = _dn_split(builder, args[0], _tuple_rows(builder, args[1], 4))
        _for_lanes(builder, sig.args[7], args[7], lambda mask: _store16_narrow(
            context, builder, d, args[4], args[5], args[6], sig.args[2], args[2], args[3], mask))
        return context.get_dummy_value()
    return types.void(i32x16, rows6, out, types.intp, types.int64, types.int64, types.int64, nl), codegen


@intrinsic
def vepi_residual_split_rows(typingctx, a, rows, r, srows, out, oi, zo, lo, hi, m, nl):
    """`vepi_residual_rows` (int64 form) of the vectors a (accumulator) and r, with the
    operand's DN in the split form: r unsigned, at most 16 bits, zero point 0 (`vwiden`);
    the layer's rows (`vrows`) and the operand's split rows (`vsplit_rows`) already
    loaded; nl as `vepi_requant_rows`. d2 = DN_2(r) lies in [0, m]. The accumulator's DN
    d1 is clamped in int64 to [lo - zo - m, hi - zo] and narrowed to int32; d1 + d2 + zo
    then clamps to [lo, hi] in int32 lanes. That gives the same result as clamping the
    exact sum: above hi - zo, d1 + d2 stays above it (d2 >= 0); below lo - zo - m, d1 + d2
    stays below lo - zo. The plan takes this form only where lo - zo - m, lo - m,
    hi - zo + m and hi + m fit int32 (`ConvStep.split_form`, m from
    `epilogue.split_bound`)."""
    def codegen(context, builder, sig, args):
        rows, srows = _row_values(builder, args[1]), _tuple_rows(builder, args[3], 4)
        _for_lanes(builder, sig.args[10], args[10], lambda mask: _residual_split(
            context, builder, args[0], rows, args[2], srows, args[6], args[7], args[8], args[9], sig.args[4], args[4],
            args[5], mask))
        return context.get_dummy_value()
    return types.void(i32x16, rows6, i32x16, rows6, out, types.intp, types.int64, types.int64, types.int64,
                      types.int64, nl), codegen


# -- Depthwise: 16 channels of one tap -------------------------------------------------

@intrinsic
def vmadd_taps(typingctx, acc, x, xi, w, wi, nl):
    """acc + x[xi:xi+16] * w[wi:wi+16] per lane, x unsigned bytes widened to int32, w int32
    (one tap's weights for 16 channels), nl <= 16 lanes read from x (the literal 16: all).
    The products and their running sum are partial sums of the layer's accumulator, which
    the validator bounds inside int32, so the int32 multiply-add is exact."""
    def codegen(context, builder, sig, args):
        mask = _lane_mask(builder, sig.args[5], args[5])
        a = _widen16(context, builder, sig.args[1], args[1], args[2], mask)
        wv = _vec_load(builder, _element_pointer(context, builder, sig.args[3], args[3], args[4]), _V32)
        return builder.add(args[0], builder.mul(a, wv))
    return i32x16(i32x16, x, types.intp, w, types.intp, nl), codegen


# -- Depthwise: four taps of 16 channels per vpdpbusd ------------------------------------
# Lane ch of the vpdpbusd operand holds the bytes of taps 4q..4q+3 of channel ch, so one
# instruction sums four taps of 16 channels (the weights packed to match,
# `conv_vnni.pack_depthwise_dot4`). The four 16-byte loads sit side by side in one zmm
# and one byte shuffle transposes them (LLVM: vinserti32x4, then vpermt2b on a CPU with VBMI).

_V8x16, _V8x64 = ir.VectorType(_I8, 16), ir.VectorType(_I8, 64)
# result byte 4 ch + j <- byte 16 j + ch of the four loads side by side
_TAPS_TRANSPOSE = [16 * j + ch for ch in range(16) for j in range(4)]


@intrinsic
def vtaps4(typingctx, x, i0, i1, i2, i3, k, nl):
    """The bytes x[i_j + ch] of taps j < k (a literal 1 to 4; taps from k on are 0, their
    indices ignored) for channels ch < nl (the literal 16: all; lanes past nl are 0 and
    not read), as 16 lanes of 4 bytes: lane ch holds taps 0..3 of channel ch."""
    count = _tile_number(k)

    def codegen(context, builder, sig, args):
        mask = _lane_mask(builder, sig.args[6], args[6])
        parts = [_masked_load(builder, _element_pointer(context, builder, sig.args[0], args[0], args[1 + j]),
                              _V8x16, mask) if j < count else ir.Constant(_V8x16, None) for j in range(4)]
        pairs = ir.Constant(ir.VectorType(_I32, 32), list(range(32)))
        lo, hi = builder.shuffle_vector(parts[0], parts[1], pairs), builder.shuffle_vector(parts[2], parts[3], pairs)
        side = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_I32, 64), list(range(64))))
        taps = builder.shuffle_vector(side, ir.Constant(_V8x64, None),
                                      ir.Constant(ir.VectorType(_I32, 64), _TAPS_TRANSPOSE))
        return builder.bitcast(taps, _V32)
    return i32x16(x, types.intp, types.intp, types.intp, types.intp, k, nl), codegen
