"""The integer ops that lowering emits; each `run` here is the reference semantics (the
spec that the Numba kernels and the torch twin must equal), computed in int64 numpy.

After `QuantizeInput` (the one float step, at the graph input) everything is integer
multiply, add, shift, compare and clamp. Every rescale is `intq.dyadic.requantize`,
with its (b, c) multipliers stored as int64 constants, per channel where the scale is.
Integer tensors travel as int64 arrays; the IR dtype ("uint4", "int16", ...) is their range.

Each spec also states its contract (attributes, arity, the semantic checks of
`intq.validate`'s guarantees), in the vocabulary of `intq.ops.contract`.
"""
import numpy as np

from ..dyadic import requantize
from ..errors import IntqError
from . import contract as k
from .base import OpSpec, broadcast_shapes, numel, require_rank, same_shape
from .contract import INTEGER_DTYPES, dtype_bits, dtype_range  # noqa: F401  (re-exported)
from .conv import Conv
from .elementwise import Concat
from .linear import Linear
from .pad import Pad, pad_nchw
from .pool import _pool_infer, kernel_window
from .window import conv2d, windows


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
    float_graph, integer_graph = False, True
    attrs = {"scale": k.finite, "zero_point": k.INT, "lo": k.INT, "hi": k.INT,
             "dtype": k.activation_dtype}
    optional = {"in_scale": k.finites, "in_shift": k.finites}
    reads_float_input = True

    @staticmethod
    def check(node, g, p):
        a = node.attrs
        if not a["scale"] > 0:
            p.fail(f"{k.where(node)}: scale {a['scale']} must be > 0")
        k.clamp_bounds(p, node)
        k.in_range(p, node, "zero_point", a["zero_point"], a["dtype"])

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
    float_graph, integer_graph = False, True
    attrs = {"x_zero_point": k.INT, "groups": k.GROUPS, **k.WINDOW}
    arity = (3, 3)
    tags = frozenset({"windowed", "accumulator"})

    window_kernel = staticmethod(Conv.window_kernel)
    precheck = staticmethod(Conv.precheck)

    @staticmethod
    def check(node, g, p):
        k.accumulator_layer(p, g, node)

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
    float_graph, integer_graph = False, True
    attrs = {"x_zero_point": k.INT}
    arity = (3, 3)
    tags = frozenset({"accumulator"})

    @staticmethod
    def check(node, g, p):
        k.accumulator_layer(p, g, node)

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
    float_graph, integer_graph = False, True
    attrs = {"in_zero_point": k.INT, **k.REQUANT}
    arity = (3, 3)

    @staticmethod
    def input_zero_points(attrs):
        return [attrs.get("in_zero_point")]

    @staticmethod
    def check(node, g, p):
        k.requant_output(p, node)
        k.in_range(p, node, "in_zero_point", node.attrs["in_zero_point"], g.values[node.inputs[0]].dtype)
        k.multipliers(p, g, node, node.inputs[1], node.inputs[2], g.values[node.output].shape)

    @staticmethod
    def infer(node, ins, graph):
        return _same_shape_out(node, ins)

    @staticmethod
    def run(attrs, x, b, c):
        nd = x.ndim
        return (requantize(x - attrs["in_zero_point"], per_channel(b, nd), per_channel(c, nd),
                           attrs["lo"], attrs["hi"], attrs["out_zero_point"]),)


def _branch_split(node_inputs, n):
    return node_inputs[:n], node_inputs[n:2 * n], node_inputs[2 * n:3 * n]


def _branches(attrs, per_branch):
    """(min, max) inputs of an op with `per_branch` inputs for each of its n branches (and
    IntAdd's offset constant after them, where its `offset` flag says so)."""
    n = attrs.get("n")
    extra = 1 if attrs.get("offset") else 0
    return (per_branch * n + extra,) * 2 if k.is_int(n) and n >= 1 else (-1, -1)


def check_branches(node, g, p):
    """IntAdd/IntConcat: one zero point per branch inside its dtype, per-channel
    multipliers, and a sum of rescaled branches below 2^62."""
    a, n = node.attrs, node.attrs["n"]
    if len(a["zero_points"]) != n:
        p.fail(f"{k.where(node)}: {len(a['zero_points'])} zero points for {n} branches")
    k.requant_output(p, node)
    total = abs(a["out_zero_point"])
    xs, bs, cs = _branch_split(node.inputs, n)
    for x, b, c, z in zip(xs, bs, cs, a["zero_points"]):
        k.in_range(p, node, "zero point", z, g.values[x].dtype)
        bv, cv = k.multipliers(p, g, node, b, c, g.values[x].shape)
        total += k.max_rescaled(k.span(g, x, z), bv, cv)
    signs = a.get("signs")
    if signs is not None and (len(signs) != n or any(v not in (1, -1) for v in signs)):
        p.fail(f"{k.where(node)}: signs {signs} must be one +1 or -1 per branch")
    if a.get("offset"):
        t = node.inputs[3 * n]
        if t not in g.constants:
            p.fail(f"{k.where(node)}: offset {t!r} is not a constant")
        else:
            off = np.asarray(g.constants[t])
            try:
                broadcast_shapes(g.values[node.output].shape, off.shape)
            except IntqError:
                p.fail(f"{k.where(node)}: offset of shape {off.shape} does not broadcast onto "
                       f"{g.values[node.output].shape}")
            total += int(np.abs(off.astype(np.int64)).max(initial=0))
    if total >= 1 << 62:
        p.fail(f"{k.where(node)}: the sum of rescaled branches may overflow int64")


class _Join(OpSpec):
    """The contract IntAdd and IntConcat share: n branches, each with its zero point and
    its own multiplier (inputs: the n branches, their n b's, their n c's)."""

    float_graph, integer_graph = False, True
    arity = staticmethod(lambda a: _branches(a, 3))
    activations = staticmethod(lambda a: a.get("n"))
    tags = frozenset({"join"})

    @staticmethod
    def input_zero_points(attrs):
        return attrs.get("zero_points") or ()

    @staticmethod
    def check(node, g, p):
        check_branches(node, g, p)


def check_pool(node, g, p, count):
    """An average pool: output requantization, an INT32 window sum of `count` cells, and
    multipliers that broadcast onto the output (one per output position at most)."""
    k.requant_output(p, node)
    k.in_range(p, node, "in_zero_point", node.attrs["in_zero_point"], g.values[node.inputs[0]].dtype)
    k.window_sum(p, g, node, count)
    k.multipliers(p, g, node, node.inputs[1], node.inputs[2], g.values[node.output].shape,
                  per_channel=False)


class IntAdd(_Join):
    """Residual add, HAWQ-V3 eq. 7, and tensor arithmetic (a detector's box decode):
    y = clamp(sum_i DN_i(s_i (x_i - z_i)) + offset + z_out, lo, hi).

    Inputs are the k branches, then their k multipliers b_i, then their k shifts c_i; each
    branch is rounded by its own multiplier before the sum. Optional: `signs` s_i = +1 or
    -1 per branch (a Sub; the sign applies before the rounding, so a tie of a subtracted
    branch also goes toward +infinity), and with `offset` = 1 one more input, an integer
    constant at the output scale (a float constant operand, rounded once when compiled).
    Branches and offset broadcast as numpy does."""

    name = "IntAdd"
    attrs = {"n": k.BRANCHES, "zero_points": k.ZERO_POINTS, **k.REQUANT}
    optional = {"signs": k.integers(None, -1, 1), "offset": k.flag}

    @staticmethod
    def infer(node, ins, graph):
        n = node.attrs["n"]
        shapes = [v.shape for v in ins[:n]] + ([ins[3 * n].shape] if node.attrs.get("offset") else [])
        return [(broadcast_shapes(*shapes), node.attrs["dtype"])]

    @staticmethod
    def run(attrs, *args):
        n = attrs["n"]
        xs, bs, cs = _branch_split(args, n)
        signs = attrs.get("signs") or [1] * n
        big = np.iinfo(np.int64)
        total = 0
        for x, b, c, z, s in zip(xs, bs, cs, attrs["zero_points"], signs):
            total = total + requantize(s * (x - z), per_channel(b, x.ndim), per_channel(c, x.ndim),
                                       big.min, big.max)
        if attrs.get("offset"):
            total = total + np.asarray(args[3 * n], np.int64)
        return (np.clip(total + attrs["out_zero_point"], attrs["lo"], attrs["hi"]),)


class IntConcat(_Join):
    """Concat, HAWQ-V3 eq. 18: each branch rescaled by its own DN to the output scale."""

    name = "IntConcat"
    attrs = {"n": k.BRANCHES, "zero_points": k.ZERO_POINTS, "axis": k.AXIS, **k.REQUANT}

    @staticmethod
    def precheck(node, g, p):
        k.axis_within_rank(p, g, node)

    @staticmethod
    def infer(node, ins, graph):
        (shape, _), = Concat.infer(node, ins[:node.attrs["n"]], graph)
        return [(shape, node.attrs["dtype"])]

    @staticmethod
    def run(attrs, *args):
        xs, bs, cs = _branch_split(args, attrs["n"])
        parts = [requantize(x - z, per_channel(b, x.ndim), per_channel(c, x.ndim),
                            attrs["lo"], attrs["hi"], attrs["out_zero_point"])
                 for x, b, c, z in zip(xs, bs, cs, attrs["zero_points"])]
        return (np.concatenate(parts, axis=attrs["axis"]),)


class IntAvgPool(OpSpec):
    """Average pool: an INT32 window sum of (x - z_in), then one DN whose multiplier already
    contains 1/count (per output position when padding is excluded from the count)."""

    name = "IntAvgPool"
    float_graph, integer_graph = False, True
    attrs = {"in_zero_point": k.INT, **k.REQUANT, **k.POOL}
    optional = {"ceil_mode": k.flag}
    arity = (3, 3)
    tags = frozenset({"windowed"})
    precheck = staticmethod(kernel_window)

    @staticmethod
    def check(node, g, p):
        check_pool(node, g, p, numel(node.attrs["kernel_shape"]))

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
    float_graph, integer_graph = False, True
    attrs = {"in_zero_point": k.INT, **k.REQUANT}
    optional = {"keepdims": k.flag}
    arity = (3, 3)

    @staticmethod
    def check(node, g, p):
        check_pool(node, g, p, numel(g.values[node.inputs[0]].shape[2:]))

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
    float_graph, integer_graph = False, True
    attrs = {"lo": k.INT, "hi": k.INT}

    @staticmethod
    def check(node, g, p):
        k.clamp_bounds(p, node, g.values[node.output].dtype)

    infer = staticmethod(same_shape)

    @staticmethod
    def run(attrs, x):
        return (np.clip(x, attrs["lo"], attrs["hi"]),)


class IntPad(OpSpec):
    """An unfused Pad on integers: pads with the tensor's zero point (a real zero)."""

    name = "IntPad"
    float_graph, integer_graph = False, True
    attrs = {"pads": k.PADS, "value": k.INT}
    optional = Pad.optional
    tags = frozenset({"movement"})
    precheck = staticmethod(Pad.precheck)

    @staticmethod
    def check(node, g, p):
        k.in_range(p, node, "pad value", node.attrs["value"], g.values[node.output].dtype)

    @staticmethod
    def infer(node, ins, graph):
        (shape, _), = Pad.infer(node, ins, graph)
        return [(shape, ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        return (pad_nchw(x, attrs["pads"], attrs.get("interior", (0, 0)), attrs["value"]),)


class IntAffine(OpSpec):
    """Per-channel affine map on integers (a constant Mul/Add/Sub/Div or a BatchNorm with no
    conv to fold into), y = a[c] x + t[c] along axis 1:
    y = clamp(DN_c(sign[c] * (x - in_zero_point)) + zero_points[c], lo, hi),
    DN_c = |a[c]| S_in / S_out, zero_points[c] = round(t[c] / S_out) + z_out.
    Inputs x, b, c, sign (+1/-1), zero_points (all per channel); attrs in_zero_point, lo,
    hi, dtype. Two roundings (the shift t and the product), so |error| <= 1 output step; a
    dead channel (a = 0, b = 0) outputs its shift alone, whatever its size."""

    name = "IntAffine"
    float_graph, integer_graph = False, True
    attrs = {"in_zero_point": k.INT, "lo": k.INT, "hi": k.INT, "dtype": k.activation_dtype}
    arity = (5, 5)
    tags = frozenset({"channelwise"})

    @staticmethod
    def check(node, g, p):
        x, b, c, sign, zps = node.inputs
        out = g.values[node.output].shape
        k.clamp_bounds(p, node)
        k.in_range(p, node, "in_zero_point", node.attrs["in_zero_point"], g.values[x].dtype)
        k.multipliers(p, g, node, b, c, out)
        k.signs(p, g, node, sign, out)
        if np.abs(k.channel_constant(p, g, node, zps, out)).max() >= 1 << 32:
            p.fail(f"{k.where(node)}: zero points {zps!r} outside +-2^32")

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
    float_graph, integer_graph = False, True
    attrs = {"offset": k.INT, "dtype": k.activation_dtype}
    arity = (2, 2)
    tags = frozenset({"channelwise"})

    @staticmethod
    def check(node, g, p):
        # The table covers exactly the input dtype's range, so every gather is in bounds.
        x, table = node.inputs
        lo, hi = dtype_range(g.values[x].dtype)
        if hi - lo >= 1 << 16:
            p.fail(f"{k.where(node)}: input dtype {g.values[x].dtype} is wider than 16 bits")
        if table not in g.constants or g.constants[table].shape != (hi - lo + 1,) \
                or node.attrs["offset"] != lo:
            p.fail(f"{k.where(node)}: table {table!r} must be a constant of {hi - lo + 1} entries "
                   f"with offset {lo} (the range of {g.values[x].dtype})")
        tv = g.constants[table]
        tlo, thi = dtype_range(node.attrs["dtype"])
        if int(tv.min()) < tlo or int(tv.max()) > thi:
            p.fail(f"{k.where(node)}: table values outside the output dtype {node.attrs['dtype']}")

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
    float_graph, integer_graph = False, True
    attrs = {"in_zero_point": k.INT, **k.REQUANT}
    arity = (6, 6)
    tags = frozenset({"channelwise"})

    @staticmethod
    def check(node, g, p):
        x, bp, cp, bn, cn, sign = node.inputs
        out = g.values[node.output].shape
        k.requant_output(p, node)
        k.in_range(p, node, "in_zero_point", node.attrs["in_zero_point"], g.values[x].dtype)
        k.multipliers(p, g, node, bp, cp, out)
        k.multipliers(p, g, node, bn, cn, out)
        k.signs(p, g, node, sign, out)

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
    the product fits INT32. With `b_constant` = 1, b is an integer constant of any shape
    that broadcasts onto a (a Mul by a float constant that is not one per channel, such as
    a detector's strides, quantized symmetric when compiled), not an activation."""

    name = "IntMul"
    float_graph, integer_graph = False, True
    attrs = {"a_zero_point": k.INT, "b_zero_point": k.INT, **k.REQUANT}
    optional = {"b_constant": k.flag}
    arity = (4, 4)
    activations = staticmethod(lambda a: 1 if a.get("b_constant") else 2)
    tags = frozenset({"channelwise"})

    @staticmethod
    def check(node, g, p):
        qa, qb, mb, mc = node.inputs
        a = node.attrs
        k.requant_output(p, node)
        k.in_range(p, node, "a_zero_point", a["a_zero_point"], g.values[qa].dtype)
        if a.get("b_constant"):
            if qb not in g.constants:
                p.fail(f"{k.where(node)}: b {qb!r} is not a constant")
                return
            span_b = int(np.abs(np.asarray(g.constants[qb], np.int64) - a["b_zero_point"]).max(initial=0))
        else:
            k.in_range(p, node, "b_zero_point", a["b_zero_point"], g.values[qb].dtype)
            span_b = k.span(g, qb, a["b_zero_point"])
        bv, _ = k.multipliers(p, g, node, mb, mc, g.values[node.output].shape)
        if bv.size != 1:
            p.fail(f"{k.where(node)}: the product's multiplier must be one value")
        if k.span(g, qa, a["a_zero_point"]) * span_b > k.INT32_MAX:
            p.fail(f"{k.where(node)}: the product of the inputs may overflow INT32")

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
    float_graph, integer_graph = False, True
    attrs = {"axes": k.AXES, "lo": k.INT, "hi": k.INT, "dtype": k.activation_dtype}
    arity = (2, 2)
    tags = frozenset({"channelwise"})

    @staticmethod
    def check(node, g, p):
        x, table = node.inputs
        a, w = node.attrs, k.where(node)
        k.clamp_bounds(p, node)
        if a["dtype"] != "uint8" or a["lo"] != 0 or a["hi"] != 255:
            p.fail(f"{w}: output must be uint8 over [0, 255] (scale 1/256)")
        rank = len(g.values[x].shape)
        axes = {ax % rank for ax in a["axes"] if -rank <= ax < rank}
        if len(axes) != len(a["axes"]) or 0 in axes or not axes:
            p.fail(f"{w}: axes {a['axes']} must be distinct non-batch axes of rank {rank}")
        if table not in g.constants or g.constants[table].ndim != 1 or g.constants[table].size < 2:
            p.fail(f"{w}: exp table {table!r} must be a 1-D constant of at least 2 entries")
        tv = g.constants[table].astype(np.int64)
        count = numel([g.values[x].shape[ax] for ax in axes])
        # The sum of table entries must stay in [1, 2^31): the reciprocal's Q31 scaling.
        if int(tv.min()) < 0 or tv[-1] != 0 or int(tv[0]) < 1 or count * int(tv.max()) > k.INT32_MAX:
            p.fail(f"{w}: exp table {table!r} must be non-negative, decreasing to 0, "
                   f"with {count} x max below 2^31")

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
        kb = _bit_length(s)
        m = s << (31 - kb)
        r = IntSoftmax.C1 - ((IntSoftmax.C2 * m) >> 31)
        for _ in range(3):
            r = (r * ((2 << 29) - ((m * r) >> 31))) >> 29
        return (requantize(e, r, 21 + kb, attrs["lo"], attrs["hi"]),)


SPECS = [QuantizeInput, IntConv, IntLinear, Requantize, IntAdd, IntConcat, IntAvgPool,
         IntGlobalAvgPool, IntClamp, IntPad, IntAffine, IntLookup, IntLeakyRelu, IntMul, IntSoftmax]
