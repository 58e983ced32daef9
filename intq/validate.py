"""The graph validator: everything a graph must satisfy before any executor touches it.

Lowering runs it on every integer graph it emits, and `intq.artifact` runs it on every
graph it loads, trusting nothing that was read (a file can be crafted with matching
checksums). `check_run_memory` refuses a run whose memory need exceeds the limit before
anything is allocated. Every failure is one `IntqError` line naming the node or tensor.

Guarantees of a graph that passed `validate_integer_graph` (what the reference executor,
the Numba kernels and the torch twin may rely on without checking again):

* Structure. Every node's op is a known integer op (`ops.integer.SPECS` or shared data
  movement: MaxPool, Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Slice, Split) with
  its fixed number of inputs and exactly one output (Split: one per piece). Every
  input is a graph input, a constant or the output of an *earlier* node (nodes are in
  topological order, no cycles); no tensor is produced twice or overwrites an input or a
  constant; every tensor named anywhere has a declared `Value`; graph outputs are node
  outputs. The only float tensor is the graph input, and only `QuantizeInput` reads it.
  Tensor and node names are printable strings (so every message stays one line).
* Shapes. Every declared shape is a tuple of ints >= 1 (dimension 0 may be None, the
  dynamic batch); re-inferring every node from its inputs gives exactly the declared
  output shape and dtype. Activations are 4..32-bit integer dtypes.
* Attributes. Exactly the attributes the op defines, of the right type: ints are ints,
  strides, dilations and kernel sizes >= 1, pads >= 0 and no larger than the input (or the
  kernel window), groups >= 1 and dividing both channel counts, the (dilated) kernel
  within the padded input, axes within the rank, dtypes known integer dtypes.
* Constants. Each has its declared shape, an integer numpy dtype and values inside its
  declared dtype; weights of IntConv/IntLinear are int4/int8 in the restricted symmetric
  range (|w| <= 7 or 127), biases int32 of shape (M,); multipliers 0 <= b < 2^31 and
  0 <= c <= 62, b and c of one shape, either one value or one per channel (pools: a shape
  that broadcasts onto the output without changing it). Layer inputs (activations) are
  never constants.
* Ranges. Clamp bounds satisfy lo <= hi inside the output dtype; every zero point lies
  inside the dtype of the tensor it is subtracted from or added to, and is 0 for an
  IntConv/IntLinear accumulator (its offset lives in the bias); QuantizeInput's scale
  is finite and > 0. Hence every intermediate of `dyadic.requantize` fits int64.
* Tables and products. An IntLookup table has exactly one entry per integer of its
  input dtype (at most 16 bits) with `offset` its lowest value, and entries inside the
  output dtype, so every gather is in bounds. IntMul's zero-point-corrected operands
  multiply within INT32; its multiplier is one value. IntAffine/IntLeakyRelu signs are
  +-1 and their multipliers and offsets are one value or one per channel. IntSoftmax
  reduces over distinct non-batch axes into uint8 [0, 255], its exp table is
  non-negative, ends in 0 and (elements reduced) x (largest entry) < 2^31.
* Overflow. Each IntConv/IntLinear accumulator is bounded by sum|w| * max|x| + |bias| <=
  2^31 - 1 per output channel (the lowering's static bound, recomputed), every pool's INT32
  window sum of (x - z) is bounded the same way, and an IntAdd's sum of rescaled branches
  stays below 2^62. So no integer op can leave int32/int64, and every op's output lies in
  its declared dtype.
* Metadata. `metadata["outputs"]` gives each graph output a finite scale > 0 and an
  integer zero point (what `dequantize` reads).

`validate_float_graph` checks the same structure, attributes, shapes and constants for the
float graph an artifact carries (float32 tensors, finite float constants).
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from .dyadic import MAX_B, MAX_C
from .errors import IntqError
from .ir import Graph
from .limits import check_bytes
from .ops import get_op, known_ops
from .ops.base import numel
from .ops.integer import INTEGER_DTYPES, SHARED_WITH_FLOAT, SPECS as INTEGER_SPECS, dtype_range

INT32_MAX = (1 << 31) - 1
MAX_DIM = 1 << 31            # no tensor dimension is larger; keeps shape arithmetic exact
ACTIVATION_DTYPES = INTEGER_DTYPES - {"int64"}
FLOAT_DTYPES = {"float32"}
INTEGER_OPS = {s.name for s in INTEGER_SPECS} | SHARED_WITH_FLOAT


# -- attribute kinds: each returns an error text or None ------------------------------
def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _int(lo=None, hi=None):
    def check(v):
        if not _is_int(v):
            return f"must be an integer, got {v!r}"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"must lie in [{lo}, {hi}], got {v}"
        return None
    return check


def _ints(length=None, lo=None, hi=None):
    one = _int(lo, hi)

    def check(v):
        if not isinstance(v, (list, tuple)) or (length is not None and len(v) != length):
            return f"must be a list of {length or 'some'} integers, got {v!r}"
        return next((e for e in map(one, v) if e), None)
    return check


def _flag(v):
    return None if (_is_int(v) or isinstance(v, bool)) and v in (0, 1) else f"must be 0 or 1, got {v!r}"


def _finite(v):
    ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
    return None if ok else f"must be a finite number, got {v!r}"


def _optional_finite(v):
    return None if v is None else _finite(v)


def _finites(v):
    if not isinstance(v, (list, tuple)) or not v:
        return f"must be a non-empty list of numbers, got {v!r}"
    return next((e for e in map(_finite, v) if e), None)


def _steps(v):
    err = _ints(None, -MAX_DIM, MAX_DIM)(v)
    return err or (f"must not contain a zero step, got {v!r}" if 0 in v else None)


def _dtype(v):
    return None if isinstance(v, str) and v in ACTIVATION_DTYPES else f"must be an integer dtype, got {v!r}"


def _text(v):
    return None if isinstance(v, str) or v is None else f"must be a string, got {v!r}"


PAIR = _ints(2, 1, MAX_DIM)
PADS = _ints(4, 0, MAX_DIM)
INT = _int(-(1 << 62), 1 << 62)
WINDOW = {"strides": PAIR, "pads": PADS, "dilations": PAIR}
POOL = {"kernel_shape": PAIR, "strides": PAIR, "pads": PADS}
REQUANT = {"lo": INT, "hi": INT, "out_zero_point": INT, "dtype": _dtype}
ACT = {"activation": _text, "act_min": _optional_finite, "act_max": _optional_finite}
AXES = _ints(None, -8, 8)
BOUND = _int(-MAX_DIM, MAX_DIM)

# Per op: required attributes, then optional ones (absent = the op's default).
SCHEMAS = {
    "QuantizeInput": ({"scale": _finite, "zero_point": INT, "lo": INT, "hi": INT, "dtype": _dtype},
                      {"in_scale": _finites, "in_shift": _finites}),
    "IntConv": ({"x_zero_point": INT, "groups": _int(1, MAX_DIM), **WINDOW}, {}),
    "IntLinear": ({"x_zero_point": INT}, {}),
    "Requantize": ({"in_zero_point": INT, **REQUANT}, {}),
    "IntAdd": ({"n": _int(1, 1 << 16), "zero_points": _ints(None, -(1 << 62), 1 << 62), **REQUANT}, {}),
    "IntConcat": ({"n": _int(1, 1 << 16), "zero_points": _ints(None, -(1 << 62), 1 << 62),
                   "axis": _int(-8, 8), **REQUANT}, {}),
    "IntAvgPool": ({"in_zero_point": INT, **REQUANT, **POOL}, {"ceil_mode": _flag}),
    "IntGlobalAvgPool": ({"in_zero_point": INT, **REQUANT}, {"keepdims": _flag}),
    "IntClamp": ({"lo": INT, "hi": INT}, {}),
    "IntPad": ({"pads": PADS, "value": INT}, {}),
    "IntAffine": ({"in_zero_point": INT, "lo": INT, "hi": INT, "dtype": _dtype}, {}),
    "IntLookup": ({"offset": INT, "dtype": _dtype}, {}),
    "IntLeakyRelu": ({"in_zero_point": INT, **REQUANT}, {}),
    "IntMul": ({"a_zero_point": INT, "b_zero_point": INT, **REQUANT}, {}),
    "IntSoftmax": ({"axes": AXES, "lo": INT, "hi": INT, "dtype": _dtype}, {}),
    # shared data movement
    "MaxPool": (POOL, {"dilations": PAIR, "ceil_mode": _flag}),
    "Transpose": ({"perm": _ints(None, 0, 7)}, {}),
    "Squeeze": ({"axes": AXES}, {}),
    "Unsqueeze": ({"axes": AXES}, {}),
    "Slice": ({"axes": AXES, "starts": _ints(None, -MAX_DIM - 1, MAX_DIM + 1),
               "ends": _ints(None, -MAX_DIM - 1, MAX_DIM + 1), "steps": _steps}, {}),
    "Split": ({"axis": _int(-8, 8), "split": _ints(None, 1, MAX_DIM)}, {}),
    "Flatten": ({}, {"axis": _int(-8, 8)}),
    "Reshape": ({"shape": _ints(None, -1, MAX_DIM)}, {}),
    # float ops
    "Conv": ({"groups": _int(1, MAX_DIM), **WINDOW}, ACT),
    "Linear": ({}, ACT),
    "Add": ({}, ACT),
    "Concat": ({"axis": _int(-8, 8)}, {}),
    "AveragePool": ({**POOL, "count_include_pad": _flag}, {"ceil_mode": _flag}),
    "GlobalAveragePool": ({}, {"keepdims": _flag}),
    "Relu": ({}, {}),
    "Clip": ({}, {"min": _optional_finite, "max": _optional_finite}),
    "Pad": ({"pads": PADS}, {}),
    "BatchNormalization": ({"epsilon": _finite}, {}),
    "Identity": ({}, {}),
    "Dropout": ({}, {}),
    "Gemm": ({}, {"alpha": _finite, "beta": _finite, "transA": _flag, "transB": _flag}),
    "MatMul": ({}, {}),
    "Mul": ({}, {}),
    "Sub": ({}, {}),
    "Div": ({}, {}),
    "ChannelAffine": ({}, ACT),
    "Sigmoid": ({}, {}),
    "Tanh": ({}, {}),
    "Swish": ({}, {}),
    "HardSigmoid": ({}, {"alpha": _finite, "beta": _finite}),
    "HardSwish": ({}, {"alpha": _finite, "beta": _finite}),
    "LeakyRelu": ({}, {"alpha": _finite}),
    "PRelu": ({}, {}),
    "Softmax": ({"axes": AXES}, {}),
    # `intq inspect`'s placeholder for an op without importer: never valid in a graph that
    # is compiled or loaded (_validate leaves it out of the allowed ops).
    "Unsupported": ({}, {}),
}

# Per op: (minimum, maximum) number of inputs; None = 3 * attrs["n"] (branches, b, c).
ARITY = {"QuantizeInput": (1, 1), "IntConv": (3, 3), "IntLinear": (3, 3), "Requantize": (3, 3),
         "IntAdd": None, "IntConcat": None, "IntAvgPool": (3, 3), "IntGlobalAvgPool": (3, 3),
         "IntClamp": (1, 1), "IntPad": (1, 1), "MaxPool": (1, 1), "Flatten": (1, 1),
         "Reshape": (1, 1), "Conv": (2, 3), "Linear": (2, 3), "Add": (2, 1 << 16),
         "Concat": (1, 1 << 16), "AveragePool": (1, 1), "GlobalAveragePool": (1, 1),
         "Relu": (1, 1), "Clip": (1, 1), "Pad": (1, 1), "BatchNormalization": (5, 5),
         "Identity": (1, 1), "Dropout": (1, 1), "Gemm": (2, 3), "MatMul": (2, 2),
         "IntAffine": (5, 5), "IntLookup": (2, 2), "IntLeakyRelu": (6, 6), "IntMul": (4, 4),
         "IntSoftmax": (2, 2), "Transpose": (1, 1), "Squeeze": (1, 1), "Unsqueeze": (1, 1),
         "Slice": (1, 1), "Split": (1, 1), "Mul": (2, 2), "Sub": (2, 2), "Div": (2, 2),
         "ChannelAffine": (3, 3), "Sigmoid": (1, 1), "Tanh": (1, 1), "Swish": (1, 1),
         "HardSigmoid": (1, 1), "HardSwish": (1, 1), "LeakyRelu": (1, 1), "PRelu": (2, 2),
         "Softmax": (1, 1), "Unsupported": (0, 0)}


class _Problems:
    """Raises the first problem found as one IntqError line, prefixed by what is checked."""

    def __init__(self, what: str):
        self.what = what

    def fail(self, text: str):
        raise IntqError(f"{self.what}: {text}")


# -- structure ------------------------------------------------------------------------
def _check_shape(p, name, shape):
    if not isinstance(shape, tuple) or len(shape) > 8:
        p.fail(f"tensor {name!r} has an invalid shape {shape!r}")
    for i, d in enumerate(shape):
        if d is None and i == 0:
            continue
        if not _is_int(d) or not 1 <= d <= MAX_DIM:
            p.fail(f"tensor {name!r} has an invalid shape {shape!r}")


def _check_structure(p, g: Graph, allowed_ops):
    """Names, declared values, known ops, arity, topological order, single assignment."""
    if not isinstance(g.inputs, list) or not isinstance(g.outputs, list) or not g.inputs or not g.outputs:
        p.fail("graph needs a list of inputs and a list of outputs")
    for name, v in g.values.items():
        # Names appear in one-line error messages and reports: no control characters.
        if not isinstance(name, str) or v.name != name or not name.isprintable():
            p.fail(f"value {name!r} is declared under another or an unprintable name")
        _check_shape(p, name, v.shape)
        if v.dtype not in FLOAT_DTYPES | INTEGER_DTYPES:
            p.fail(f"tensor {name!r} has unknown dtype {v.dtype!r}")
    for name in g.constants:
        if name not in g.values:
            p.fail(f"constant {name!r} has no declared shape and dtype")
    defined = set(g.constants)
    for name in g.inputs:
        if not isinstance(name, str) or name not in g.values or name in defined:
            p.fail(f"graph input {name!r} is undeclared, repeated or a constant")
        if len(g.values[name].shape) != 4:
            p.fail(f"graph input {name!r} must be 4-D (NCHW), got {g.values[name].shape}")
        defined.add(name)
    for name in set(g.values) - set(g.constants):
        if not g.values[name].shape:
            p.fail(f"tensor {name!r} is not a constant but has rank 0")
    names = set()
    for node in g.nodes:
        if not isinstance(node.name, str) or node.name in names or not node.name.isprintable():
            p.fail(f"node name {node.name!r} is not a unique printable string")
        names.add(node.name)
        where = f"node {node.name} ({node.op})"
        if node.op not in allowed_ops or node.op not in SCHEMAS:
            p.fail(f"node {node.name} has unknown op {node.op!r}")
        if not isinstance(node.attrs, dict):
            p.fail(f"{where}: attributes must be a mapping")
        if not isinstance(node.inputs, list) or not all(isinstance(i, str) for i in node.inputs):
            p.fail(f"{where}: inputs must be a list of tensor names")
        n_out = len(node.outputs) if isinstance(node.outputs, list) else 0
        if not (n_out == 1 or (node.op == "Split" and 1 <= n_out <= 1 << 16)) \
                or not all(isinstance(o, str) for o in node.outputs):
            p.fail(f"{where}: must have exactly one output (Split: one per piece)")
        arity = ARITY[node.op]
        if arity is None:
            n = node.attrs.get("n")
            arity = (3 * n, 3 * n) if _is_int(n) and n >= 1 else (-1, -1)
        if not arity[0] <= len(node.inputs) <= arity[1]:
            p.fail(f"{where}: has {len(node.inputs)} inputs")
        for i, t in enumerate(node.inputs):
            optional_bias = t == "" and i == 2 and node.op in ("Conv", "Linear", "Gemm")
            if t not in defined and not optional_bias:
                p.fail(f"{where}: reads {t!r}, which no earlier node, input or constant defines")
        for out in node.outputs:
            if out in defined or out not in g.values:
                p.fail(f"{where}: output {out!r} is already defined or undeclared")
            defined.add(out)
    produced = {o for n in g.nodes for o in n.outputs}
    for name in g.outputs:
        if name not in produced:
            p.fail(f"graph output {name!r} is not computed by any node")


def _check_attrs(p, node):
    required, optional = SCHEMAS[node.op]
    where = f"node {node.name} ({node.op})"
    for k in node.attrs:
        if k not in required and k not in optional:
            p.fail(f"{where}: unknown attribute {k!r}")
    for k, check in required.items():
        if k not in node.attrs:
            p.fail(f"{where}: missing attribute {k!r}")
    for k, v in node.attrs.items():
        err = (required.get(k) or optional[k])(v)
        if err:
            p.fail(f"{where}: attribute {k} {err}")


def _check_window(p, node, g):
    """Pads bounded by the input (or the kernel window); groups dividing the channels.
    Whether the kernel fits the padded input is the shape rule's own check."""
    a, x = node.attrs, g.values[node.inputs[0]]
    if len(x.shape) != 4:
        return  # the shape rule reports the rank
    if "pads" in a:
        if node.op in ("Conv", "IntConv"):
            w = g.values[node.inputs[1]].shape
            kernel = w[2:] if len(w) == 4 else (1, 1)
        else:
            kernel = a.get("kernel_shape", (1, 1))
        dil = a.get("dilations", (1, 1))
        for axis, (p0, p1) in enumerate(((a["pads"][0], a["pads"][2]), (a["pads"][1], a["pads"][3]))):
            bound = max(x.shape[2 + axis], (kernel[axis] - 1) * dil[axis] + 1)
            if max(p0, p1) > bound:
                p.fail(f"node {node.name} ({node.op}): pads {list(a['pads'])} exceed the input "
                       f"size {x.shape[2:]} and the kernel window")
    if "groups" in a:
        w = g.values[node.inputs[1]].shape
        if len(w) == 4 and (w[0] % a["groups"] or (x.shape[1] is not None and x.shape[1] % a["groups"])):
            p.fail(f"node {node.name} ({node.op}): groups {a['groups']} do not divide the "
                   f"channels ({x.shape[1]} in, {w[0]} out)")


def _check_axes(p, node, g):
    """Axis attributes within the input's rank, as numpy will index them at run time."""
    a, where = node.attrs, f"node {node.name} ({node.op})"
    rank = len(g.values[node.inputs[0]].shape)
    if node.op in ("Concat", "IntConcat") and not -rank <= a["axis"] < rank:
        p.fail(f"{where}: axis {a['axis']} outside rank {rank}")
    if node.op == "Flatten" and not (-rank <= a.get("axis", 1) < rank and a.get("axis", 1) % rank):
        p.fail(f"{where}: axis {a.get('axis', 1)} must split rank {rank} after the batch")


def _infer(p, node, g):
    ins = [g.values[i] if i else None for i in node.inputs]
    try:
        outs = get_op(node.op).infer(node, ins, g)
    except IntqError as e:
        p.fail(f"node {node.name} ({node.op}): {e}")
    if len(outs) != len(node.outputs):
        p.fail(f"node {node.name} ({node.op}): computes {len(outs)} outputs, declares "
               f"{len(node.outputs)}")
    for (shape, dtype), out in zip(outs, node.outputs):
        declared = g.values[out]
        if tuple(shape) != declared.shape or dtype != declared.dtype:
            p.fail(f"node {node.name} ({node.op}): output {declared.name!r} is declared "
                   f"{declared.shape} {declared.dtype} but computes {tuple(shape)} {dtype}")


def _check_constants(p, g: Graph, integer: bool):
    for name, arr in g.constants.items():
        v = g.values[name]
        if not isinstance(arr, np.ndarray) or arr.shape != v.shape:
            p.fail(f"constant {name!r} has shape {getattr(arr, 'shape', None)}, declared {v.shape}")
        if v.dtype in INTEGER_DTYPES:
            if arr.dtype.kind not in "iu":
                p.fail(f"constant {name!r} has numpy dtype {arr.dtype}, declared {v.dtype}")
            lo, hi = dtype_range(v.dtype)
            if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
                p.fail(f"constant {name!r} has values outside {v.dtype}")
        elif integer or arr.dtype.name != v.dtype or not np.isfinite(arr).all():
            p.fail(f"constant {name!r} has numpy dtype {arr.dtype}, declared {v.dtype}, "
                   f"or non-finite values")


# -- integer semantics ----------------------------------------------------------------
def check_integer_only(ig: Graph) -> None:
    """Reject any float tensor, float constant or float op after the graph input."""
    problems = []
    for node in ig.nodes:
        if node.op not in INTEGER_OPS:
            problems.append(f"node {node.name} has non-integer op {node.op}")
        if node.op == "QuantizeInput" and node.inputs[0] not in ig.inputs:
            problems.append(f"node {node.name} quantizes a tensor that is not a graph input")
        if node.op != "QuantizeInput":
            for k, v in node.attrs.items():
                if isinstance(v, float) or (isinstance(v, (list, tuple)) and any(isinstance(e, float) for e in v)):
                    problems.append(f"node {node.name} has float attribute {k}")
            for t in node.inputs:
                if t in ig.inputs:
                    problems.append(f"node {node.name} reads the float input {t}")
        for t in node.inputs + node.outputs:
            if t in ig.inputs:
                continue
            if ig.values[t].dtype not in INTEGER_DTYPES:
                problems.append(f"tensor {t} has dtype {ig.values[t].dtype}")
    for name, arr in ig.constants.items():
        if arr.dtype.kind not in "iu":
            problems.append(f"constant {name} has dtype {arr.dtype}")
    if problems:
        raise IntqError("integer graph is not integer-only: " + "; ".join(problems[:5]))


def _span(g, t, zero_point) -> int:
    """max |x - zero_point| over the range of tensor t's dtype."""
    lo, hi = dtype_range(g.values[t].dtype)
    return max(zero_point - lo, hi - zero_point)


def _in_range(p, where, what, value, dtype):
    lo, hi = dtype_range(dtype)
    if not lo <= value <= hi:
        p.fail(f"{where}: {what} {value} lies outside {dtype} [{lo}, {hi}]")


def _check_clamp(p, where, a, dtype):
    _in_range(p, where, "clamp bound lo", a["lo"], dtype)
    _in_range(p, where, "clamp bound hi", a["hi"], dtype)
    if a["lo"] > a["hi"]:
        p.fail(f"{where}: clamp bounds lo {a['lo']} > hi {a['hi']}")


def _multipliers(p, g, where, b, c, out_shape, per_channel=True):
    """b, c constants within 0 <= b < 2^31, 0 <= c <= 62, one shape, fitting the output."""
    for t in (b, c):
        if t not in g.constants:
            p.fail(f"{where}: multiplier {t!r} is not a constant")
    bv, cv = g.constants[b], g.constants[c]
    if bv.shape != cv.shape:
        p.fail(f"{where}: multipliers {b!r} and {c!r} have different shapes")
    if bv.size and (int(bv.min()) < 0 or int(bv.max()) >= MAX_B):
        p.fail(f"{where}: multiplier {b!r} outside 0 <= b < 2^31")
    if cv.size and (int(cv.min()) < 0 or int(cv.max()) > MAX_C):
        p.fail(f"{where}: shift {c!r} outside 0 <= c <= {MAX_C}")
    if bv.size == 0:
        p.fail(f"{where}: multiplier {b!r} is empty")
    if per_channel:
        if bv.size != 1 and (len(out_shape) < 2 or bv.size != out_shape[1]):
            p.fail(f"{where}: {bv.size} multipliers for {out_shape[1] if len(out_shape) > 1 else 1} channels")
    else:
        concrete = (1,) + tuple(out_shape[1:])
        try:
            fits = np.broadcast_shapes(bv.shape, concrete) == concrete
        except ValueError:
            fits = False
        if not fits:
            p.fail(f"{where}: multiplier shape {bv.shape} does not fit the output {out_shape}")
    return bv, cv


def _channel_constant(p, g, where, t, out_shape):
    """A constant of one value or one per output channel, as int64."""
    if t not in g.constants:
        p.fail(f"{where}: {t!r} is not a constant")
    v = g.constants[t]
    if v.ndim > 1 or (v.size != 1 and (len(out_shape) < 2 or v.size != out_shape[1])):
        p.fail(f"{where}: {t!r} needs one value or one per channel, has shape {v.shape}")
    return v.astype(np.int64)


def _max_rescaled(span, bv, cv) -> int:
    """An upper bound of |requantize(x, b, c)| for |x| <= span (before any clamp)."""
    return (span * int(bv.max()) >> int(cv.min())) + 1


def _check_layer(p, g, node, where):
    x, w, bias = node.inputs
    for t, role in ((w, "weight"), (bias, "bias")):
        if t not in g.constants:
            p.fail(f"{where}: {role} {t!r} is not a constant")
    wd = g.values[w].dtype
    if wd not in ("int4", "int8"):
        p.fail(f"{where}: weight dtype {wd} is not int4 or int8")
    if g.values[bias].dtype != "int32":
        p.fail(f"{where}: bias dtype {g.values[bias].dtype} is not int32")
    wv, bv = g.constants[w].astype(np.int64), g.constants[bias].astype(np.int64)
    m = wv.shape[0]
    if bv.shape != (m,):
        p.fail(f"{where}: bias shape {bv.shape} != ({m},)")
    qmax = dtype_range(wd)[1]
    if wv.size and int(np.abs(wv).max()) > qmax:
        p.fail(f"{where}: weights outside the symmetric range +-{qmax}")
    xd = g.values[x].dtype
    if dtype_range(xd)[1] - dtype_range(xd)[0] > 1 << 16:
        p.fail(f"{where}: input dtype {xd} is wider than 16 bits")
    _in_range(p, where, "x_zero_point", node.attrs["x_zero_point"], xd)
    xmax = max(abs(v) for v in dtype_range(xd))
    sums = np.abs(wv.reshape(m, -1)).sum(axis=1).tolist()
    for ch, (s, b0) in enumerate(zip(sums, bv.tolist())):
        bound = s * xmax + abs(b0)
        if bound > INT32_MAX:
            p.fail(f"{where}: accumulator may overflow INT32 (bound {bound} > {INT32_MAX} at "
                   f"output channel {ch})")


def _check_integer_node(p, g, node, producers):
    a, where = node.attrs, f"node {node.name} ({node.op})"
    out = g.values[node.outputs[0]]
    activations = {"IntAdd": a.get("n"), "IntConcat": a.get("n"), "IntMul": 2}.get(node.op, 1)
    for t in node.inputs[:activations]:
        if t in g.constants:
            p.fail(f"{where}: activation input {t!r} is a constant")
        if node.op != "QuantizeInput" and g.values[t].dtype not in ACTIVATION_DTYPES:
            p.fail(f"{where}: input {t!r} has dtype {g.values[t].dtype}")
    # An IntConv/IntLinear accumulator has no zero point (its offset is in the bias): the
    # Numba backend fuses the consumer into the layer's epilogue on that basis.
    zps = {"Requantize": [a.get("in_zero_point")], "IntAdd": a.get("zero_points"),
           "IntConcat": a.get("zero_points")}.get(node.op)
    for t, z in zip(node.inputs[:activations], zps or ()):
        prod = producers.get(t)
        if prod is not None and prod.op in ("IntConv", "IntLinear") and z != 0:
            p.fail(f"{where}: zero point {z} for the accumulator {t!r} of {prod.name} "
                   f"(accumulators have zero point 0)")
    if out.dtype not in ACTIVATION_DTYPES:
        p.fail(f"{where}: output dtype {out.dtype} is not an activation dtype")
    if node.op == "QuantizeInput":
        if not a["scale"] > 0:
            p.fail(f"{where}: scale {a['scale']} must be > 0")
        _check_clamp(p, where, a, a["dtype"])
        _in_range(p, where, "zero_point", a["zero_point"], a["dtype"])
    elif node.op in ("IntConv", "IntLinear"):
        _check_layer(p, g, node, where)
    elif node.op == "Requantize":
        _check_clamp(p, where, a, a["dtype"])
        _in_range(p, where, "out_zero_point", a["out_zero_point"], a["dtype"])
        _in_range(p, where, "in_zero_point", a["in_zero_point"], g.values[node.inputs[0]].dtype)
        _multipliers(p, g, where, node.inputs[1], node.inputs[2], out.shape)
    elif node.op in ("IntAdd", "IntConcat"):
        n = a["n"]
        if len(a["zero_points"]) != n:
            p.fail(f"{where}: {len(a['zero_points'])} zero points for {n} branches")
        _check_clamp(p, where, a, a["dtype"])
        _in_range(p, where, "out_zero_point", a["out_zero_point"], a["dtype"])
        total = abs(a["out_zero_point"])
        for x, b, c, z in zip(node.inputs[:n], node.inputs[n:2 * n], node.inputs[2 * n:], a["zero_points"]):
            _in_range(p, where, "zero point", z, g.values[x].dtype)
            bv, cv = _multipliers(p, g, where, b, c, g.values[x].shape)
            total += _max_rescaled(_span(g, x, z), bv, cv)
        if total >= 1 << 62:
            p.fail(f"{where}: the sum of rescaled branches may overflow int64")
    elif node.op in ("IntAvgPool", "IntGlobalAvgPool"):
        x = node.inputs[0]
        _check_clamp(p, where, a, a["dtype"])
        _in_range(p, where, "out_zero_point", a["out_zero_point"], a["dtype"])
        _in_range(p, where, "in_zero_point", a["in_zero_point"], g.values[x].dtype)
        shape = g.values[x].shape
        count = numel(a["kernel_shape"]) if node.op == "IntAvgPool" else numel(shape[2:])
        if count * _span(g, x, a["in_zero_point"]) > INT32_MAX:
            p.fail(f"{where}: the INT32 window sum may overflow")
        _multipliers(p, g, where, node.inputs[1], node.inputs[2], out.shape, per_channel=False)
    elif node.op == "IntClamp":
        _check_clamp(p, where, a, out.dtype)
    elif node.op == "IntPad":
        _in_range(p, where, "pad value", a["value"], out.dtype)
    elif node.op in ("IntAffine", "IntLeakyRelu"):
        x = node.inputs[0]
        _check_clamp(p, where, a, a["dtype"])
        _in_range(p, where, "in_zero_point", a["in_zero_point"], g.values[x].dtype)
        pairs = [node.inputs[1:3]] if node.op == "IntAffine" else [node.inputs[1:3], node.inputs[3:5]]
        for b, c in pairs:
            _multipliers(p, g, where, b, c, out.shape)
        sign = node.inputs[3] if node.op == "IntAffine" else node.inputs[5]
        sv = _channel_constant(p, g, where, sign, out.shape)
        if not np.isin(sv, (-1, 1)).all():
            p.fail(f"{where}: sign {sign!r} must hold only +1 and -1")
        if node.op == "IntAffine":
            zv = _channel_constant(p, g, where, node.inputs[4], out.shape)
            if np.abs(zv).max() >= 1 << 32:
                p.fail(f"{where}: zero points {node.inputs[4]!r} outside +-2^32")
        else:
            _in_range(p, where, "out_zero_point", a["out_zero_point"], a["dtype"])
    elif node.op == "IntLookup":
        # The table covers exactly the input dtype's range, so every gather is in bounds.
        x, table = node.inputs
        lo, hi = dtype_range(g.values[x].dtype)
        if hi - lo >= 1 << 16:
            p.fail(f"{where}: input dtype {g.values[x].dtype} is wider than 16 bits")
        if table not in g.constants or g.constants[table].shape != (hi - lo + 1,) or a["offset"] != lo:
            p.fail(f"{where}: table {table!r} must be a constant of {hi - lo + 1} entries with "
                   f"offset {lo} (the range of {g.values[x].dtype})")
        tv = g.constants[table]
        tlo, thi = dtype_range(a["dtype"])
        if int(tv.min()) < tlo or int(tv.max()) > thi:
            p.fail(f"{where}: table values outside the output dtype {a['dtype']}")
    elif node.op == "IntMul":
        qa, qb = node.inputs[:2]
        _check_clamp(p, where, a, a["dtype"])
        _in_range(p, where, "out_zero_point", a["out_zero_point"], a["dtype"])
        _in_range(p, where, "a_zero_point", a["a_zero_point"], g.values[qa].dtype)
        _in_range(p, where, "b_zero_point", a["b_zero_point"], g.values[qb].dtype)
        bv, _ = _multipliers(p, g, where, node.inputs[2], node.inputs[3], out.shape)
        if bv.size != 1:
            p.fail(f"{where}: the product's multiplier must be one value")
        if _span(g, qa, a["a_zero_point"]) * _span(g, qb, a["b_zero_point"]) > INT32_MAX:
            p.fail(f"{where}: the product of the inputs may overflow INT32")
    elif node.op == "IntSoftmax":
        x, table = node.inputs
        _check_clamp(p, where, a, a["dtype"])
        if a["dtype"] != "uint8" or a["lo"] != 0 or a["hi"] != 255:
            p.fail(f"{where}: output must be uint8 over [0, 255] (scale 1/256)")
        rank = len(g.values[x].shape)
        axes = {ax % rank for ax in a["axes"] if -rank <= ax < rank}
        if len(axes) != len(a["axes"]) or 0 in axes or not axes:
            p.fail(f"{where}: axes {a['axes']} must be distinct non-batch axes of rank {rank}")
        if table not in g.constants or g.constants[table].ndim != 1 or g.constants[table].size < 2:
            p.fail(f"{where}: exp table {table!r} must be a 1-D constant of at least 2 entries")
        tv = g.constants[table].astype(np.int64)
        count = numel([g.values[x].shape[ax] for ax in axes])
        # The sum of table entries must stay in [1, 2^31): the reciprocal's Q31 scaling.
        if int(tv.min()) < 0 or tv[-1] != 0 or int(tv[0]) < 1 or count * int(tv.max()) > INT32_MAX:
            p.fail(f"{where}: exp table {table!r} must be non-negative, decreasing to 0, "
                   f"with {count} x max below 2^31")


def _check_metadata(p, ig):
    md = ig.metadata
    outs = md.get("outputs") if isinstance(md, dict) else None
    if not isinstance(outs, dict):
        p.fail("metadata has no output quantization parameters")
    for name in ig.outputs:
        q = outs.get(name)
        if (not isinstance(q, dict) or _finite(q.get("scale")) or not q.get("scale") > 0
                or not _is_int(q.get("zero_point"))):
            p.fail(f"metadata: output {name!r} needs a finite scale > 0 and an integer zero point")
    if not isinstance(md.get("config", {}), dict):
        p.fail("metadata: config must be a mapping")


def _validate(g: Graph, what: str, integer: bool) -> None:
    p = _Problems(what)
    if not isinstance(g.metadata, dict):
        p.fail("metadata must be a mapping")
    # Every registered op passes here; check_integer_only then names a float op in an
    # integer graph in its own words.
    known = set(known_ops()) - {"Unsupported"}
    _check_structure(p, g, known if integer else known - INTEGER_OPS | SHARED_WITH_FLOAT)
    for name in g.inputs:
        if g.values[name].dtype not in FLOAT_DTYPES:
            p.fail(f"graph input {name!r} must be float32")
    if integer:
        check_integer_only(g)
    _check_constants(p, g, integer)
    producers = {o: node for node in g.nodes for o in node.outputs}
    for node in g.nodes:
        _check_attrs(p, node)
        _check_window(p, node, g)
        _check_axes(p, node, g)
        _infer(p, node, g)
        if integer:
            _check_integer_node(p, g, node, producers)
    if integer:
        _check_metadata(p, g)


def validate_integer_graph(ig: Graph) -> None:
    """Raise IntqError unless `ig` satisfies every guarantee in the module docstring."""
    _validate(ig, "invalid integer graph", integer=True)


def validate_float_graph(fg: Graph) -> None:
    """Raise IntqError unless the float graph is structurally sound (see module docstring)."""
    _validate(fg, "invalid float graph", integer=False)


# -- resources ------------------------------------------------------------------------
def _element_bytes(dtype: str) -> int:
    # The reference executor holds every integer tensor as int64.
    return 8 if dtype in INTEGER_DTYPES else np.dtype(dtype).itemsize


def _with_batch(shape, batch):
    return tuple(batch if d is None else d for d in shape)


def run_memory(graph: Graph, batch: int) -> int:
    """Bytes a reference run of `graph` on `batch` samples may hold at its peak, from the
    declared (validated) shapes: every constant and every tensor (the executors keep all
    of them), plus the largest temporary of one op (a convolution's padded input and its
    im2col matrix, a pool's padded input)."""
    total = sum(numel(_with_batch(v.shape, batch)) * _element_bytes(v.dtype)
                for v in graph.values.values())
    temp = 0
    for node in graph.nodes:
        if node.op in ("Conv", "IntConv", "MaxPool", "AveragePool", "IntAvgPool") and node.inputs:
            x = graph.values[node.inputs[0]]
            out = graph.values[node.outputs[0]]
            if len(x.shape) != 4 or len(out.shape) != 4:
                continue
            n, c, h, w = _with_batch(x.shape, batch)
            t, l, b, r = node.attrs.get("pads", (0, 0, 0, 0))
            kh, kw = (graph.values[node.inputs[1]].shape[2:] if node.op.endswith("Conv")
                      else node.attrs.get("kernel_shape", (1, 1)))
            padded = n * c * (h + t + b + kh) * (w + l + r + kw)
            cols = numel(_with_batch(out.shape, batch)[:1] + out.shape[2:]) * c * kh * kw
            temp = max(temp, (padded + cols) * _element_bytes(x.dtype))
    return total + temp


def check_run_memory(graph: Graph, batch: int, limit: int | None = None) -> int:
    """Refuse (one IntqError line, with the numbers) a run of `graph` on `batch` samples
    whose memory need, `run_memory`, exceeds `limit` (default: $INTQ_MEMORY_LIMIT, else half
    the machine's memory). Call it before allocating anything; returns the need in bytes."""
    if not _is_int(batch) or batch < 1:
        raise IntqError(f"batch size must be a positive integer, got {batch!r}")
    need = run_memory(graph, int(batch))
    check_bytes(need, f"a run of {graph.name!r} on a batch of {batch}", limit)
    return need
