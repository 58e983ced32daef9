"""AVX2 building blocks for Numba: an 8 x int32 vector type in one ymm register and the
byte dot products the AVX2 convolution (`conv_avx2`) is made of.

AVX2 has no `vpdpbusd`. Its byte multiply-add, `vpmaddubsw`, multiplies unsigned bytes
by signed bytes and adds adjacent pairs into int16 *with saturation*; `vpmaddwd` then
adds adjacent int16 pairs into int32 (exactly: its only overflow, both pairs
-2^15 * -2^15, cannot arise from the values below). So one int32 lane gets the sum of
4 products, as with VNNI, provided no int16 pair sum saturates:

* **No-saturation argument.** A pair sum is x0 w0 + x1 w1 with activations x in
  [0, 255] (uint8 containers; a signed int8 container never reaches these kernels, see
  `conv_avx2`) and weights w. With |w| <= 64 it is at most 2 * 255 * 64 = 32640 <= 32767
  in absolute value: exact. INT4 weights (|w| <= 8) always qualify (`dot4`).
* **INT8 weights** (|w| up to 128) are split per weight into w = 64 h + l with
  h = floor((w + 32) / 64) in [-2, 2] and l = w - 64 h in [-32, 31]; both halves meet
  the bound above, and the lane gets 64 * (x . h) + (x . l) = x . w, each int16 pair sum
  widened by `vpmaddwd` with 64 or 1 before the int32 add (`dot4_split`). The int32 sums
  are partial sums of the layer's accumulator, bounded inside int32 by the validator.

Only kernels chosen on the "avx2" path (see `intq.kernels.cpu`) compile code using these.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_V8 = ir.VectorType(_I32, 8)
_B32 = ir.VectorType(_I8, 32)
_W16 = ir.VectorType(_I16, 16)


class I32x8(types.Type):
    """Numba type of one ymm register holding 8 int32 lanes."""

    def __init__(self):
        super().__init__(name="i32x8")


i32x8 = I32x8()


@register_model(I32x8)
class _I32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8)


def _pointer(context, builder, arytype, ary, index):
    data = context.make_array(arytype)(context, builder, ary).data
    return builder.gep(data, [index])


def _load(builder, ptr, vecty):
    return builder.load(builder.bitcast(ptr, vecty.as_pointer()), typ=vecty, align=1)


@intrinsic
def yzero(typingctx):
    """A vector of 8 zeros."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_V8, None)
    return i32x8(), codegen


@intrinsic
def yload(typingctx, ary, index):
    """The 32 bytes of the byte array `ary` from element `index`."""
    def codegen(context, builder, sig, args):
        return _load(builder, _pointer(context, builder, sig.args[0], args[0], args[1]), _V8)
    return i32x8(ary, types.intp), codegen


@intrinsic
def ybroadcast4(typingctx, ary, index):
    """The 4 bytes of the byte array `ary` at `index`, repeated in all 8 lanes."""
    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1])
        word = builder.load(builder.bitcast(ptr, _I32.as_pointer()), typ=_I32, align=1)
        one = builder.insert_element(ir.Constant(_V8, None), word, ir.Constant(_I32, 0))
        return builder.shuffle_vector(one, ir.Constant(_V8, None), ir.Constant(_V8, None))
    return i32x8(ary, types.intp), codegen


def _maddubs(builder, a, w):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_W16, [_B32, _B32]),
                                        "llvm.x86.avx2.pmadd.ub.sw")
    return builder.call(fn, [builder.bitcast(a, _B32), builder.bitcast(w, _B32)])


def _maddwd(builder, a, factor):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_W16, _W16]),
                                        "llvm.x86.avx2.pmadd.wd")
    return builder.call(fn, [a, ir.Constant(_W16, [factor] * 16)])


@intrinsic
def dot4(typingctx, acc, a, w):
    """acc + the 4-byte dot products of unsigned bytes `a` and signed bytes `w` per lane,
    exact when every |w| <= 64 (see the module docstring)."""
    def codegen(context, builder, sig, args):
        return builder.add(args[0], _maddwd(builder, _maddubs(builder, args[1], args[2]), 1))
    return i32x8(i32x8, i32x8, i32x8), codegen


@intrinsic
def dot4_split(typingctx, acc, a, wh, wl):
    """acc + the 4-byte dot products of `a` with w = 64 wh + wl per lane (INT8 weights
    split as in the module docstring)."""
    def codegen(context, builder, sig, args):
        hi = _maddwd(builder, _maddubs(builder, args[1], args[2]), 64)
        lo = _maddwd(builder, _maddubs(builder, args[1], args[3]), 1)
        return builder.add(args[0], builder.add(hi, lo))
    return i32x8(i32x8, i32x8, i32x8, i32x8), codegen


@intrinsic
def ystore(typingctx, ary, index, vec):
    """Store the 8 lanes of `vec` into the int32 1-D array `ary` at `index`."""
    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _V8.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(ary, types.intp, i32x8), codegen
