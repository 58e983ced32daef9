"""The integer ops that lowering emits; each `run` here is the reference semantics (the
spec that the Numba kernels and the torch twin must equal), computed in int64 numpy.

After `QuantizeInput` (the one float step, at the graph input) everything is integer
multiply, add, shift, compare and clamp. Every rescale is `intq.dyadic.requantize`,
with its (b, c) multipliers stored as int64 constants, per channel where the scale is.
Integer tensors travel as int64 arrays; the IR dtype ("uint4", "int16", ...) is their range.
"""
import numpy as np

from ..dyadic import requantize
from ..errors import IntqError
from .base import OpSpec, broadcast_shapes, require_rank, same_shape
from .conv import Conv
from .elementwise import Concat
from .linear import Linear
from .pad import Pad
from .pool import _pool_infer
from .window import conv2d, windows

INTEGER_DTYPES = {f"{s}int{b}" for s in ("", "u") for b in (4, 8, 16, 32)} | {"int64"}


def dtype_bits(dtype: str) -> int:
    """Width of an IR dtype name: "uint4" -> 4, "int32" -> 32, "float32" -> 32."""
    return int("".join(filter(str.isdigit, dtype)))


def dtype_range(dtype: str):
    bits = dtype_bits(dtype)
    if dtype.startswith("u"):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def per_channel(a, ndim, axis=1):
    """Broadcast a per-channel (C,) array along `axis` of an ndim-D tensor; scalars pass."""
    a = np.asarray(a, dtype=np.int64)
    if a.ndim == 0 or a.size == 1:
        return a.reshape(())
    shape = [1] * ndim
    shape[axis] = a.size
    return a.reshape(shape)


def _same_shape_out(node, ins):
    return [(ins[0].shape, node.attrs["dtype"])]


class QuantizeInput(OpSpec):
    """q = clamp(floor(x / scale + 1/2) + zero_point, lo, hi): the graph's only float op.

    With the optional per-channel lists `in_scale`, `in_shift` (an input normalisation
    folded in), x is first replaced by x * in_scale[c] + in_shift[c] (float64, axis 1).
    """

    name = "QuantizeInput"

    @staticmethod
    def infer(node, ins, graph):
        return _same_shape_out(node, ins)

    @staticmethod
    def run(attrs, x):
        x = x.astype(np.float64)
        if "in_scale" in attrs:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x = (x * np.reshape(attrs["in_scale"], shape).astype(np.float64)
                 + np.reshape(attrs["in_shift"], shape).astype(np.float64))
        q = np.floor(x / attrs["scale"] + 0.5) + attrs["zero_point"]
        return (np.clip(q, attrs["lo"], attrs["hi"]).astype(np.int64),)


class IntConv(OpSpec):
    """INT32 accumulator of a convolution: sum(x * w) + bias, x padded with its zero point.

    The zero point's correction (zero_point * sum(w) per output channel) is already folded
    into the bias by lowering, so padding with the zero point keeps the result exact.
    """

    name = "IntConv"

    @staticmethod
    def infer(node, ins, graph):
        (shape, _), = Conv.infer(node, ins, graph)
        return [(shape, "int32")]

    @staticmethod
    def run(attrs, x, w, b):
        acc = conv2d(x, w, attrs["strides"], attrs["pads"], attrs["dilations"], attrs["groups"],
                     pad_value=attrs["x_zero_point"], acc_dtype=np.int64)
        return (acc + b.reshape(1, -1, 1, 1),)

    macs = staticmethod(Conv.macs)
    params = staticmethod(Conv.params)


class IntLinear(OpSpec):
    """INT32 accumulator of x W^T + bias (zero-point correction folded into the bias)."""

    name = "IntLinear"

    @staticmethod
    def infer(node, ins, graph):
        (shape, _), = Linear.infer(node, ins, graph)
        return [(shape, "int32")]

    @staticmethod
    def run(attrs, x, w, b):
        return (x.astype(np.int64) @ w.astype(np.int64).T + b,)

    macs = staticmethod(Linear.macs)
    params = staticmethod(Linear.params)


class Requantize(OpSpec):
    """y = clamp(DN_b,c(x - in_zero_point) + out_zero_point, lo, hi); b, c per channel."""

    name = "Requantize"

    @staticmethod
    def infer(node, ins, graph):
        return _same_shape_out(node, ins)

    @staticmethod
    def run(attrs, x, b, c):
        nd = x.ndim
        return (requantize(x - attrs["in_zero_point"], per_channel(b, nd), per_channel(c, nd),
                           attrs["lo"], attrs["hi"], attrs["out_zero_point"]),)


def _branch_split(node_inputs, k):
    return node_inputs[:k], node_inputs[k:2 * k], node_inputs[2 * k:3 * k]


class IntAdd(OpSpec):
    """Residual add, HAWQ-V3 eq. 7: y = clamp(sum_i DN_i(x_i - z_i) + z_out, lo, hi).

    Inputs are the k branches, then their k multipliers b_i, then their k shifts c_i; each
    branch is rounded by its own multiplier before the sum.
    """

    name = "IntAdd"

    @staticmethod
    def infer(node, ins, graph):
        k = node.attrs["n"]
        shapes = {v.shape for v in ins[:k]}
        if len(shapes) != 1:
            raise IntqError(f"integer add needs equal shapes, got {shapes}")
        return [(ins[0].shape, node.attrs["dtype"])]

    @staticmethod
    def run(attrs, *args):
        k = attrs["n"]
        xs, bs, cs = _branch_split(args, k)
        big = np.iinfo(np.int64)
        total = 0
        for x, b, c, z in zip(xs, bs, cs, attrs["zero_points"]):
            total = total + requantize(x - z, per_channel(b, x.ndim), per_channel(c, x.ndim),
                                       big.min, big.max)
        return (np.clip(total + attrs["out_zero_point"], attrs["lo"], attrs["hi"]),)


class IntConcat(OpSpec):
    """Concat, HAWQ-V3 eq. 18: each branch rescaled by its own DN to the output scale."""

    name = "IntConcat"

    @staticmethod
    def infer(node, ins, graph):
        k = node.attrs["n"]
        (shape, _), = Concat.infer(node, ins[:k], graph)
        return [(shape, node.attrs["dtype"])]

    @staticmethod
    def run(attrs, *args):
        k = attrs["n"]
        xs, bs, cs = _branch_split(args, k)
        parts = [requantize(x - z, per_channel(b, x.ndim), per_channel(c, x.ndim),
                            attrs["lo"], attrs["hi"], attrs["out_zero_point"])
                 for x, b, c, z in zip(xs, bs, cs, attrs["zero_points"])]
        return (np.concatenate(parts, axis=attrs["axis"]),)


class IntAvgPool(OpSpec):
    """Average pool: an INT32 window sum of (x - z_in), then one DN whose multiplier already
    contains 1/count (per output position when padding is excluded from the count)."""

    name = "IntAvgPool"

    @staticmethod
    def infer(node, ins, graph):
        (shape, _), = _pool_infer(node, ins[:1])
        return [(shape, node.attrs["dtype"])]

    @staticmethod
    def run(attrs, x, b, c):
        v = windows(x - attrs["in_zero_point"], attrs["kernel_shape"], attrs["strides"],
                    attrs["pads"], (1, 1), attrs.get("ceil_mode", 0), pad_value=0)
        return (requantize(v.sum(axis=(4, 5)), b, c, attrs["lo"], attrs["hi"],
                           attrs["out_zero_point"]),)


class IntGlobalAvgPool(OpSpec):
    """Global average pool: INT32 sum over H x W of (x - z_in), then one DN including 1/HW."""

    name = "IntGlobalAvgPool"

    @staticmethod
    def infer(node, ins, graph):
        require_rank(ins[0], 4)
        n, c = ins[0].shape[:2]
        return [((n, c, 1, 1) if node.attrs.get("keepdims", 1) else (n, c), node.attrs["dtype"])]

    @staticmethod
    def run(attrs, x, b, c):
        s = (x - attrs["in_zero_point"]).sum(axis=(2, 3), keepdims=bool(attrs.get("keepdims", 1)))
        return (requantize(s, b, c, attrs["lo"], attrs["hi"], attrs["out_zero_point"]),)


class IntClamp(OpSpec):
    """An unfused ReLU/Clip on integers: clamp(x, lo, hi) (lo is the zero point for ReLU)."""

    name = "IntClamp"

    infer = staticmethod(same_shape)

    @staticmethod
    def run(attrs, x):
        return (np.clip(x, attrs["lo"], attrs["hi"]),)


class IntPad(OpSpec):
    """An unfused Pad on integers: pads with the tensor's zero point (a real zero)."""

    name = "IntPad"

    @staticmethod
    def infer(node, ins, graph):
        (shape, _), = Pad.infer(node, ins, graph)
        return [(shape, ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        t, l, b, r = attrs["pads"]
        return (np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=attrs["value"]),)


class IntAffine(OpSpec):
    """Per-channel affine map on integers (a constant Mul/Add/Sub/Div or a BatchNorm with no
    conv to fold into), y = a[c] x + t[c] along axis 1:
    y = clamp(DN_c(sign[c] * (x - in_zero_point)) + zero_points[c], lo, hi),
    DN_c = |a[c]| S_in / S_out, zero_points[c] = round(t[c] / S_out) + z_out.
    Inputs x, b, c, sign (+1/-1), zero_points (all per channel); attrs in_zero_point, lo,
    hi, dtype. Two roundings (the shift t and the product), so |error| <= 1 output step; a
    dead channel (a = 0, b = 0) outputs its shift alone, whatever its size."""

    name = "IntAffine"

    @staticmethod
    def infer(node, ins, graph):
        return _same_shape_out(node, ins)

    @staticmethod
    def run(attrs, x, b, c, sign, zero_points):
        nd = x.ndim
        return (requantize((x - attrs["in_zero_point"]) * per_channel(sign, nd), per_channel(b, nd),
                           per_channel(c, nd), attrs["lo"], attrs["hi"], per_channel(zero_points, nd)),)


class IntLookup(OpSpec):
    """An elementwise function as a table: y = table[x - offset].

    Inputs x and table; attrs `offset` (x's lowest integer) and `dtype`. Lowering fills the
    table at compile time with clamp(round(f(S_in (q - z_in)) / S_out) + z_out) for every
    input integer q (256 entries for 8 bits, 65,536 for 16), so the run is one gather.
    """

    name = "IntLookup"

    @staticmethod
    def infer(node, ins, graph):
        return _same_shape_out(node, ins)

    @staticmethod
    def run(attrs, x, table):
        return (table[x - attrs["offset"]],)


class IntLeakyRelu(OpSpec):
    """LeakyRelu/PRelu by dyadic slopes: with d = x - in_zero_point,
    y = clamp(DN_pos(d) + z_out, lo, hi) for d >= 0 and clamp(DN_neg(sign * d) + z_out, lo, hi)
    for d < 0. Inputs x, b_pos, c_pos, b_neg, c_neg, sign (all per channel or scalar; sign
    is +1 or -1, the slope's sign, since a dyadic multiplier is non-negative)."""

    name = "IntLeakyRelu"

    @staticmethod
    def infer(node, ins, graph):
        return _same_shape_out(node, ins)

    @staticmethod
    def run(attrs, x, b_pos, c_pos, b_neg, c_neg, sign):
        nd = x.ndim
        d = x - attrs["in_zero_point"]
        pos = requantize(d, per_channel(b_pos, nd), per_channel(c_pos, nd), attrs["lo"],
                         attrs["hi"], attrs["out_zero_point"])
        neg = requantize(d * per_channel(sign, nd), per_channel(b_neg, nd), per_channel(c_neg, nd),
                         attrs["lo"], attrs["hi"], attrs["out_zero_point"])
        return (np.where(d >= 0, pos, neg),)


class IntMul(OpSpec):
    """Elementwise product of two tensors (numpy broadcasting, e.g. the SE gate (N, C, 1, 1)
    times the feature map): y = clamp(DN((a - z_a) * (b - z_b)) + z_out, lo, hi).

    Inputs a, b, mult_b, mult_c (scalars, S_a S_b / S_out); attrs a_zero_point,
    b_zero_point, out_zero_point, lo, hi, dtype. Lowering keeps bits(a) + bits(b) <= 30 so
    the product fits INT32."""

    name = "IntMul"

    @staticmethod
    def infer(node, ins, graph):
        return [(broadcast_shapes(ins[0].shape, ins[1].shape), node.attrs["dtype"])]

    @staticmethod
    def run(attrs, a, b, mb, mc):
        prod = (a - attrs["a_zero_point"]) * (b - attrs["b_zero_point"])
        return (requantize(prod, mb, mc, attrs["lo"], attrs["hi"], attrs["out_zero_point"]),)


def _bit_length(s):
    """floor(log2(s)) + 1 for 1 <= s < 2^31, by comparisons only."""
    return sum((s >= (1 << j)).astype(np.int64) for j in range(32))


class IntSoftmax(OpSpec):
    """Integer-only softmax over `axes`; output uint8 probabilities, scale 1/256, zero point 0:
    p_i = min(round(256 * e_i / sum_j e_j), 255).

    Inputs x and exp_table (table[d] = round(2^E exp(-S_in d)) for d = 0..D, table[D] = 0,
    E = 30 - ceil(log2 n) for n reduced elements, so every sum stays below 2^31):
    1. d = max(x) - x >= 0 over the axes (the max-subtracted input), e = table[min(d, D)];
    2. s = sum(e), 2^E <= s < 2^31; k = bit length of s; m = s * 2^(31 - k) in [2^30, 2^31)
       is s / 2^k as a Q31 number in [1/2, 1);
    3. R ~ 2^29 * 2^31 / m (the reciprocal in Q29): R0 = 48/17 - 32/17 m (in Q29), then three
       Newton steps R = (R * (2^30 - ((m * R) >> 31))) >> 29 (all below 2^62);
    4. p = DN_{R, 21 + k}(e) clamped to [0, 255]: e * R / 2^(21 + k) = 256 e / s.
    Only multiply, add, shift and compare; the one rounding is `requantize`'s.
    """

    name = "IntSoftmax"

    C1 = round(48 / 17 * 2**29)
    C2 = round(32 / 17 * 2**29)

    @staticmethod
    def infer(node, ins, graph):
        return _same_shape_out(node, ins)

    @staticmethod
    def run(attrs, x, table):
        axes = tuple(attrs["axes"])
        d = x.max(axis=axes, keepdims=True) - x
        e = table[np.minimum(d, len(table) - 1)]
        s = e.sum(axis=axes, keepdims=True)
        k = _bit_length(s)
        m = s << (31 - k)
        r = IntSoftmax.C1 - ((IntSoftmax.C2 * m) >> 31)
        for _ in range(3):
            r = (r * ((2 << 29) - ((m * r) >> 31))) >> 29
        return (requantize(e, r, 21 + k, attrs["lo"], attrs["hi"]),)


SPECS = [QuantizeInput, IntConv, IntLinear, Requantize, IntAdd, IntConcat, IntAvgPool,
         IntGlobalAvgPool, IntClamp, IntPad, IntAffine, IntLookup, IntLeakyRelu, IntMul, IntSoftmax]
# Ops shared with the float graph that run unchanged on integers (data movement).
SHARED_WITH_FLOAT = {"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                     "Slice", "Split"}
