"""AVX2 building blocks for Numba: an 8 x int32 vector type in one ymm register and the
byte dot product the AVX2 convolution (`conv_avx2`) is made of.

AVX2 has no `vpdpbusd`. Each int32 lane must still get the sum of 4 products x . w of
unsigned activations x in [0, 255] (uint8 containers; a signed int8 container never
reaches these kernels, see `conv_avx2`) and int8 weights w, exactly.

* **Why not `vpmaddubsw`.** It multiplies unsigned by signed bytes and adds adjacent
  pairs into int16 *with saturation*: x0 w0 + x1 w1 reaches 2 * 255 * 128 = 65280, past
  32767, for INT8 weights (it is exact only for |w| <= 64). Splitting each weight into
  two halves that cannot saturate, as intq once did, doubles the multiplies.
* **`dot4_wide`: no byte step at all.** The 4 activation bytes of a lane are taken as two
  16-bit halves: masked with 0x00ff00ff they are (x0, x2), shifted right by 8 per 16-bit
  half they are (x1, x3), zero-extended either way. The weights are packed as 16-bit
  pairs (w0, w2) and (w1, w3) (`conv_avx2.pack_avx2_wide`), and `vpmaddwd` multiplies
  16-bit pairs into an int32 sum, exactly: |x w| <= 255 * 128, and its only overflow
  (both products -2^15 * -2^15) needs x = -2^15. Two `vpmaddwd` per 8 lanes of 4
  products: as many multiplies as `vpmaddubsw` + `vpmaddwd`, and no saturation.

The int32 sums are partial sums of the layer's accumulator, bounded inside int32 by the
validator. Only kernels chosen on the "avx2" path (see `intq.kernels.cpu`) compile code
using these.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_I16, _I32 = ir.IntType(16), ir.IntType(32)
_V8 = ir.VectorType(_I32, 8)
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


def _maddwd(builder, a, b):
    """vpmaddwd: int32 lanes of a0 b0 + a1 b1 over adjacent int16 pairs of `a` and `b`."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_W16, _W16]),
                                        "llvm.x86.avx2.pmadd.wd")
    return builder.call(fn, [builder.bitcast(a, _W16), builder.bitcast(b, _W16)])


_LOW_BYTES = ir.Constant(_V8, [0x00FF00FF] * 8)


@intrinsic
def dot4_wide(typingctx, acc, a, we, wo):
    """acc + the 4-byte dot products of unsigned bytes `a` with int8 weights per lane,
    given as the 16-bit pairs `we` = (w0, w2) and `wo` = (w1, w3) (see the module
    docstring): exact for every uint8 activation and int8 weight."""
    def codegen(context, builder, sig, args):
        acc, a, we, wo = args
        even = builder.and_(a, _LOW_BYTES)                                          # (x0, x2)
        odd = builder.lshr(builder.bitcast(a, _W16), ir.Constant(_W16, [8] * 16))  # (x1, x3)
        return builder.add(acc, builder.add(_maddwd(builder, even, we), _maddwd(builder, odd, wo)))
    return i32x8(i32x8, i32x8, i32x8, i32x8), codegen


@intrinsic
def madd_acc(typingctx, acc, a, w):
    """acc + `vpmaddwd`(a, w): per int32 lane a0 w0 + a1 w1 over its two int16 pairs,
    exact unless both pairs are -2^15 * -2^15 (a uint8 activation zero-extended never is)."""
    def codegen(context, builder, sig, args):
        return builder.add(args[0], _maddwd(builder, args[1], args[2]))
    return i32x8(i32x8, i32x8, i32x8), codegen


@intrinsic
def ystore(typingctx, ary, index, vec):
    """Store the 8 lanes of `vec` into the int32 1-D array `ary` at `index`."""
    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _V8.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(ary, types.intp, i32x8), codegen
