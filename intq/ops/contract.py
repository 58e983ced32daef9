"""The vocabulary an op's contract is written in: attribute kinds, and the checks that
several ops share (clamp bounds, zero points, dyadic multipliers, window geometry, the
INT32 bound of an accumulator).

Each op states its own contract on its spec (`OpSpec.attrs`, `optional`, `arity`,
`outputs`, `check`, ...); `intq.validate` is the generic driver that applies every spec's
contract to every node and knows no op by name. A check reports a problem by calling
`problems.fail(text)`, which raises one `IntqError` line prefixed by what is validated.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from ..dyadic import MAX_B, MAX_C

INT32_MAX = (1 << 31) - 1
MAX_DIM = 1 << 31            # no tensor dimension is larger; keeps shape arithmetic exact
INTEGER_DTYPES = {f"{s}int{b}" for s in ("", "u") for b in (4, 8, 16, 32)} | {"int64"}
ACTIVATION_DTYPES = INTEGER_DTYPES - {"int64"}


def dtype_bits(dtype: str) -> int:
    """Width of an IR dtype name: "uint4" -> 4, "int32" -> 32, "float32" -> 32."""
    return int("".join(filter(str.isdigit, dtype)))


def dtype_range(dtype: str):
    bits = dtype_bits(dtype)
    if dtype.startswith("u"):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


# -- attribute kinds: each returns an error text or None ------------------------------
def is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def integer(lo=None, hi=None):
    def check(v):
        if not is_int(v):
            return f"must be an integer, got {v!r}"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"must lie in [{lo}, {hi}], got {v}"
        return None
    return check


def integers(length=None, lo=None, hi=None):
    one = integer(lo, hi)

    def check(v):
        if not isinstance(v, (list, tuple)) or (length is not None and len(v) != length):
            return f"must be a list of {length or 'some'} integers, got {v!r}"
        return next((e for e in map(one, v) if e), None)
    return check


def flag(v):
    return None if (is_int(v) or isinstance(v, bool)) and v in (0, 1) else f"must be 0 or 1, got {v!r}"


def finite(v):
    ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
    return None if ok else f"must be a finite number, got {v!r}"


def optional_finite(v):
    return None if v is None else finite(v)


def finites(v):
    if not isinstance(v, (list, tuple)) or not v:
        return f"must be a non-empty list of numbers, got {v!r}"
    return next((e for e in map(finite, v) if e), None)


def steps(v):
    err = integers(None, -MAX_DIM, MAX_DIM)(v)
    return err or (f"must not contain a zero step, got {v!r}" if 0 in v else None)


def activation_dtype(v):
    return None if isinstance(v, str) and v in ACTIVATION_DTYPES else f"must be an integer dtype, got {v!r}"


def text(v):
    return None if isinstance(v, str) or v is None else f"must be a string, got {v!r}"


PAIR = integers(2, 1, MAX_DIM)
PADS = integers(4, 0, MAX_DIM)
INT = integer(-(1 << 62), 1 << 62)
ZERO_POINTS = integers(None, -(1 << 62), 1 << 62)
BRANCHES = integer(1, 1 << 16)
AXIS = integer(-8, 8)
AXES = integers(None, -8, 8)
GROUPS = integer(1, MAX_DIM)
WINDOW = {"strides": PAIR, "pads": PADS, "dilations": PAIR}
POOL = {"kernel_shape": PAIR, "strides": PAIR, "pads": PADS}
REQUANT = {"lo": INT, "hi": INT, "out_zero_point": INT, "dtype": activation_dtype}
ACT = {"activation": text, "act_min": optional_finite, "act_max": optional_finite}


# -- shared checks (p: the validator's problem reporter, g: the graph) ----------------
def where(node) -> str:
    return f"node {node.name} ({node.op})"


def span(g, t, zero_point) -> int:
    """max |x - zero_point| over the range of tensor t's dtype."""
    lo, hi = dtype_range(g.values[t].dtype)
    return max(zero_point - lo, hi - zero_point)


def in_range(p, node, what, value, dtype):
    lo, hi = dtype_range(dtype)
    if not lo <= value <= hi:
        p.fail(f"{where(node)}: {what} {value} lies outside {dtype} [{lo}, {hi}]")


def clamp_bounds(p, node, dtype=None):
    """lo <= hi, both inside `dtype` (default: the node's `dtype` attribute)."""
    a = node.attrs
    dtype = dtype or a["dtype"]
    in_range(p, node, "clamp bound lo", a["lo"], dtype)
    in_range(p, node, "clamp bound hi", a["hi"], dtype)
    if a["lo"] > a["hi"]:
        p.fail(f"{where(node)}: clamp bounds lo {a['lo']} > hi {a['hi']}")


def requant_output(p, node):
    """The clamp bounds and output zero point of an op that ends in a requantization."""
    clamp_bounds(p, node)
    in_range(p, node, "out_zero_point", node.attrs["out_zero_point"], node.attrs["dtype"])


def multipliers(p, g, node, b, c, out_shape, per_channel=True):
    """b, c constants within 0 <= b < 2^31, 0 <= c <= 62, one shape, fitting the output."""
    w = where(node)
    for t in (b, c):
        if t not in g.constants:
            p.fail(f"{w}: multiplier {t!r} is not a constant")
    bv, cv = g.constants[b], g.constants[c]
    if bv.shape != cv.shape:
        p.fail(f"{w}: multipliers {b!r} and {c!r} have different shapes")
    if bv.size and (int(bv.min()) < 0 or int(bv.max()) >= MAX_B):
        p.fail(f"{w}: multiplier {b!r} outside 0 <= b < 2^31")
    if cv.size and (int(cv.min()) < 0 or int(cv.max()) > MAX_C):
        p.fail(f"{w}: shift {c!r} outside 0 <= c <= {MAX_C}")
    if bv.size == 0:
        p.fail(f"{w}: multiplier {b!r} is empty")
    if per_channel:
        if bv.size != 1 and (len(out_shape) < 2 or bv.size != out_shape[1]):
            p.fail(f"{w}: {bv.size} multipliers for {out_shape[1] if len(out_shape) > 1 else 1} channels")
    else:
        concrete = (1,) + tuple(out_shape[1:])
        try:
            fits = np.broadcast_shapes(bv.shape, concrete) == concrete
        except ValueError:
            fits = False
        if not fits:
            p.fail(f"{w}: multiplier shape {bv.shape} does not fit the output {out_shape}")
    return bv, cv


def channel_constant(p, g, node, t, out_shape):
    """A constant of one value or one per output channel, as int64."""
    if t not in g.constants:
        p.fail(f"{where(node)}: {t!r} is not a constant")
    v = g.constants[t]
    if v.ndim > 1 or (v.size != 1 and (len(out_shape) < 2 or v.size != out_shape[1])):
        p.fail(f"{where(node)}: {t!r} needs one value or one per channel, has shape {v.shape}")
    return v.astype(np.int64)


def signs(p, g, node, t, out_shape):
    sv = channel_constant(p, g, node, t, out_shape)
    if not np.isin(sv, (-1, 1)).all():
        p.fail(f"{where(node)}: sign {t!r} must hold only +1 and -1")


def max_rescaled(span_, bv, cv) -> int:
    """An upper bound of |requantize(x, b, c)| for |x| <= span (before any clamp)."""
    return (span_ * int(bv.max()) >> int(cv.min())) + 1


def accumulator_layer(p, g, node):
    """An IntConv/IntLinear: int4/int8 weights in the restricted range, an INT32 bias per
    output channel, an input of at most 16 bits, and an accumulator that cannot leave
    INT32 (sum |w| * max |x| + |bias| per output channel)."""
    x, w, bias = node.inputs
    for t, role in ((w, "weight"), (bias, "bias")):
        if t not in g.constants:
            p.fail(f"{where(node)}: {role} {t!r} is not a constant")
    wd = g.values[w].dtype
    if wd not in ("int4", "int8"):
        p.fail(f"{where(node)}: weight dtype {wd} is not int4 or int8")
    if g.values[bias].dtype != "int32":
        p.fail(f"{where(node)}: bias dtype {g.values[bias].dtype} is not int32")
    wv, bv = g.constants[w].astype(np.int64), g.constants[bias].astype(np.int64)
    m = wv.shape[0]
    if bv.shape != (m,):
        p.fail(f"{where(node)}: bias shape {bv.shape} != ({m},)")
    qmax = dtype_range(wd)[1]
    if wv.size and int(np.abs(wv).max()) > qmax:
        p.fail(f"{where(node)}: weights outside the symmetric range +-{qmax}")
    xd = g.values[x].dtype
    if dtype_range(xd)[1] - dtype_range(xd)[0] > 1 << 16:
        p.fail(f"{where(node)}: input dtype {xd} is wider than 16 bits")
    in_range(p, node, "x_zero_point", node.attrs["x_zero_point"], xd)
    xmax = max(abs(v) for v in dtype_range(xd))
    sums = np.abs(wv.reshape(m, -1)).sum(axis=1).tolist()
    for ch, (s, b0) in enumerate(zip(sums, bv.tolist())):
        bound = s * xmax + abs(b0)
        if bound > INT32_MAX:
            p.fail(f"{where(node)}: accumulator may overflow INT32 (bound {bound} > {INT32_MAX} at "
                   f"output channel {ch})")


def window(p, g, node, kernel):
    """Pads bounded by the input (or the kernel window), for a window op with kernel
    (kh, kw); whether the kernel fits the padded input is the shape rule's own check."""
    a, x = node.attrs, g.values[node.inputs[0]]
    if len(x.shape) != 4:
        return  # the shape rule reports the rank
    dil = a.get("dilations", (1, 1))
    for axis, (p0, p1) in enumerate(((a["pads"][0], a["pads"][2]), (a["pads"][1], a["pads"][3]))):
        bound = max(x.shape[2 + axis], (kernel[axis] - 1) * dil[axis] + 1)
        if max(p0, p1) > bound:
            p.fail(f"{where(node)}: pads {list(a['pads'])} exceed the input "
                   f"size {x.shape[2:]} and the kernel window")


def groups_divide(p, g, node):
    """groups divides the weight's output channels and the input's channels."""
    x, w = g.values[node.inputs[0]].shape, g.values[node.inputs[1]].shape
    groups = node.attrs["groups"]
    if len(x) == 4 and len(w) == 4 and (w[0] % groups or (x[1] is not None and x[1] % groups)):
        p.fail(f"{where(node)}: groups {groups} do not divide the "
               f"channels ({x[1]} in, {w[0]} out)")


def axis_within_rank(p, g, node):
    rank = len(g.values[node.inputs[0]].shape)
    if not -rank <= node.attrs["axis"] < rank:
        p.fail(f"{where(node)}: axis {node.attrs['axis']} outside rank {rank}")


def window_sum(p, g, node, count):
    """An INT32 sum of `count` values of (x - in_zero_point) cannot overflow."""
    if count * span(g, node.inputs[0], node.attrs["in_zero_point"]) > INT32_MAX:
        p.fail(f"{where(node)}: the INT32 window sum may overflow")
