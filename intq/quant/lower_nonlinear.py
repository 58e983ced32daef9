"""Lowering rules for the ops of modern mobile nets, used by `lower.Lowering`:

* an elementwise function of one tensor (Sigmoid, Tanh, HardSigmoid, HardSwish, Swish)
  becomes `IntLookup`, a table of output integers computed here from the input's and the
  output's quantization (8-bit input: 256 entries; 16-bit: 65,536; a 32-bit input is
  first requantized to 16 bits);
* LeakyRelu/PRelu become `IntLeakyRelu`, exact up to one rounding: a dyadic slope per side;
* a product of two tensors becomes `IntMul`: INT32 product of the zero-point-corrected
  operands, then one DN to the output scale (an operand is narrowed to 8 bits first when
  the two widths add up to more than 30, so the product fits INT32);
* Softmax becomes `IntSoftmax` with unsigned 8-bit probabilities at scale 1/256;
* a per-channel affine map that no pass could fold (ChannelAffine) becomes `IntAffine`:
  a dyadic multiplier and an integer offset per channel, the input kept at its width.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import IntqError
from ..ops.nonlinear import LOOKUP_OPS
from .scheme import QParams

TABLE_MAX_BITS = 16
SOFTMAX_OUT = QParams(8, False, 1.0 / 256, 0)


def fake_quantized_as(kind: str):
    """Tag a lowering rule with how quantization-aware training mirrors it (`twin.qat`):
    "table", "rescale" (input as stored, output at its stored parameters), "product",
    "softmax", ... so a new rule states it where it is written."""
    def tag(rule):
        rule.fake_quant = kind
        return rule
    return tag


def _table_input(lw, node):
    """The op's input at 16 bits or fewer (a table over 2^32 integers is not an option)."""
    t = node.inputs[0]
    x, q = lw.env[t]
    if q.bits <= TABLE_MAX_BITS:
        return x, q
    return lw.requantized_copy(t, "w16", lambda: lw.act_qparams(t, 16, narrow=False))


def _table_dtype(q: QParams):
    return np.dtype(f"{'int' if q.signed else 'uint'}{max(q.bits, 8)}")


@fake_quantized_as("table")
def lower_lookup(lw, node):
    x, q = _table_input(lw, node)
    q_out = lw.stored_qparams(node.output)
    ints = np.arange(q.qmin, q.qmax + 1, dtype=np.int64)
    real = LOOKUP_OPS[node.op].fn(node.attrs, q.scale * (ints - q.zero_point).astype(np.float64))
    table = np.clip(np.floor(real / q_out.scale + 0.5) + q_out.zero_point, q_out.qmin, q_out.qmax)
    tname = lw.const(f"{node.output}.table", table.astype(_table_dtype(q_out)))
    lw.ig.add_node("IntLookup", [x, tname], [node.output],
                   {"offset": q.qmin, "dtype": q_out.dtype}, name=node.name)
    lw.bind(node.output, node.output, q_out)


@fake_quantized_as("rescale")
def lower_leaky_relu(lw, node):
    x, q = lw.env[node.inputs[0]]
    q_out = lw.stored_qparams(node.output)
    if node.op == "PRelu":
        slope = lw.fg.constants[node.inputs[1]].astype(np.float64)
    else:
        slope = np.array([node.attrs.get("alpha", 0.01)])
    pos = lw.multipliers(f"{node.output}.pos", np.array(q.scale / q_out.scale))
    neg = lw.multipliers(f"{node.output}.neg", np.abs(slope) * q.scale / q_out.scale)
    sign = lw.const(f"{node.output}.sign", np.where(slope < 0, -1, 1).astype(np.int64))
    lw.ig.add_node("IntLeakyRelu", [x, *pos, *neg, sign], [node.output],
                   {"in_zero_point": q.zero_point, "out_zero_point": q_out.zero_point,
                    "lo": q_out.qmin, "hi": q_out.qmax, "dtype": q_out.dtype}, name=node.name)
    lw.bind(node.output, node.output, q_out)


@fake_quantized_as("product")
def lower_mul(lw, node):
    consts = [t for t in node.inputs if t in lw.fg.constants]
    if len(consts) == 2:
        raise IntqError(f"node {node.name}: Mul of two constants was not folded")
    if consts:
        lower_mul_by_constant(lw, node, consts[0])
        return
    (a, qa), (b, qb) = (lw.env[t] for t in node.inputs)
    if qa.bits + qb.bits > 30:
        # Narrow the operand with fewer elements (the SE gate): it costs least precision.
        sizes = [np.prod([d or 1 for d in lw.fg.values[t].shape]) for t in node.inputs]
        i = 0 if sizes[0] < sizes[1] else 1
        t = node.inputs[i]
        narrowed = lw.requantized_copy(t, "s8", lambda: lw.act_qparams(t, 8, narrow=False))
        (a, qa), (b, qb) = (narrowed, (b, qb)) if i == 0 else ((a, qa), narrowed)
    q_out = lw.stored_qparams(node.output)
    mb, mc = lw.multipliers(node.output, np.array(qa.scale * qb.scale / q_out.scale))
    lo, hi = q_out.clamp_bounds(node.attrs.get("act_min"), node.attrs.get("act_max"))
    lw.ig.add_node("IntMul", [a, b, mb, mc], [node.output],
                   {"a_zero_point": qa.zero_point, "b_zero_point": qb.zero_point,
                    "out_zero_point": q_out.zero_point, "lo": lo, "hi": hi, "dtype": q_out.dtype},
                   name=node.name)
    lw.bind(node.output, node.output, q_out)


def lower_mul_by_constant(lw, node, const):
    """x times a constant of any broadcastable shape (one per channel or a scalar became a
    ChannelAffine first): the constant quantized symmetric with as many bits as the product
    leaves, 30 - bits(x) up to 16, so (x - z) * b_q fits INT32; one rounding at the end."""
    x_name = next(t for t in node.inputs if t != const)
    x, q = lw.env[x_name]
    c = np.asarray(lw.fg.constants[const], np.float64)
    bits = min(16, 30 - q.bits)
    peak = float(np.abs(c).max())
    s_c = peak / ((1 << (bits - 1)) - 1) if peak > 0 else 1.0
    c_q = np.floor(c / s_c + 0.5).astype(np.int64)
    q_out = lw.stored_qparams(node.output)
    mb, mc = lw.multipliers(node.output, np.array(q.scale * s_c / q_out.scale))
    lo, hi = q_out.clamp_bounds(node.attrs.get("act_min"), node.attrs.get("act_max"))
    lw.ig.add_node("IntMul", [x, lw.const(f"{node.output}.constant", c_q), mb, mc], [node.output],
                   {"a_zero_point": q.zero_point, "b_zero_point": 0, "b_constant": 1,
                    "out_zero_point": q_out.zero_point, "lo": lo, "hi": hi, "dtype": q_out.dtype},
                   name=node.name)
    lw.bind(node.output, node.output, q_out)


@fake_quantized_as("softmax")
def lower_softmax(lw, node):
    x, q = _table_input(lw, node)
    shape = lw.fg.values[node.inputs[0]].shape
    n = int(np.prod([shape[a] for a in node.attrs["axes"]]))
    exp_bits = 30 - max(1, math.ceil(math.log2(max(n, 2))))
    # exp(-S d) * 2^E rounds to 0 once S d > (E + 1) ln 2: the table stops there.
    length = min(q.qmax - q.qmin + 1, math.ceil((exp_bits + 1) * math.log(2) / q.scale) + 1)
    table = np.floor(2.0**exp_bits * np.exp(-q.scale * np.arange(length)) + 0.5).astype(np.int64)
    table[-1] = 0
    tname = lw.const(f"{node.output}.exp_table", table.astype(np.int32))
    lw.ig.add_node("IntSoftmax", [x, tname], [node.output],
                   {"axes": list(node.attrs["axes"]), "lo": 0, "hi": 255,
                    "dtype": SOFTMAX_OUT.dtype}, name=node.name)
    lw.bind(node.output, node.output, SOFTMAX_OUT)


@fake_quantized_as("rescale")
def lower_affine(lw, node):
    x, q = lw.env[node.inputs[0]]
    q_out = lw.stored_qparams(node.output)
    c = lw.fg.values[node.inputs[0]].shape[1]
    scale, shift = (np.broadcast_to(lw.fg.constants[i].astype(np.float64), (c,)) for i in node.inputs[1:3])
    b, cc = lw.multipliers(node.output, np.abs(scale) * q.scale / q_out.scale)
    sign = lw.const(f"{node.output}.sign", np.where(scale < 0, -1, 1).astype(np.int64))
    # The shift in output steps; beyond the output range it only saturates, so clip it there.
    zp = np.clip(np.floor(shift / q_out.scale + 0.5), q_out.qmin - q_out.qmax, q_out.qmax - q_out.qmin)
    zps = lw.const(f"{node.output}.zero_points", (zp + q_out.zero_point).astype(np.int64))
    lo, hi = q_out.clamp_bounds(node.attrs.get("act_min"), node.attrs.get("act_max"))
    lw.ig.add_node("IntAffine", [x, b, cc, sign, zps], [node.output],
                   {"in_zero_point": q.zero_point, "lo": lo, "hi": hi, "dtype": q_out.dtype},
                   name=node.name)
    lw.bind(node.output, node.output, q_out)


@fake_quantized_as("rescale")
def lower_abs(lw, node):
    """|x| as `IntAbs`: one dyadic multiplier S_in / S_out after the absolute value."""
    x, q = lw.env[node.inputs[0]]
    q_out = lw.stored_qparams(node.output)
    b, c = lw.multipliers(node.output, np.array(q.scale / q_out.scale))
    lw.ig.add_node("IntAbs", [x, b, c], [node.output],
                   {"in_zero_point": q.zero_point, "out_zero_point": q_out.zero_point,
                    "lo": q_out.qmin, "hi": q_out.qmax, "dtype": q_out.dtype}, name=node.name)
    lw.bind(node.output, node.output, q_out)


LOWERINGS = {**{op: lower_lookup for op in LOOKUP_OPS}, "LeakyRelu": lower_leaky_relu, "Abs": lower_abs,
             "PRelu": lower_leaky_relu, "Mul": lower_mul, "Softmax": lower_softmax,
             "ChannelAffine": lower_affine}
