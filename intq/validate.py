"""The graph validator: everything a graph must satisfy before any executor touches it.

Lowering runs it on every integer graph it emits, and `intq.artifact` runs it on every
graph it loads, trusting nothing that was read (a file can be crafted with matching
checksums). `check_run_memory` refuses a run whose memory need exceeds the limit before
anything is allocated. Every failure is one `IntqError` line naming the node or tensor.

Guarantees of a graph that passed `validate_integer_graph` (what the reference executor,
the Numba kernels and the torch twin may rely on without checking again):

This module knows no op by name: it is the generic driver of the contracts that each op
states on its spec (`intq.ops`: attributes, arity, outputs, `precheck`, `check`). The
op-specific guarantees below are those contracts' sum.

* Structure. Every node's op is a known integer op (`ops_where(integer_graph=True)`:
  the integer ops and the data movement shared with the float graph) with its number
  of inputs and outputs (one, but Split: one per piece). Every
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

import numpy as np

from .errors import IntqError
from .ir import Graph
from .limits import check_bytes
from .ops import activation_count, get_op, known_ops, ops_where, spec_arity
from .ops.base import numel
from .ops.contract import (ACTIVATION_DTYPES, INTEGER_DTYPES, MAX_DIM, dtype_range, finite,
                           is_int)

FLOAT_DTYPES = {"float32"}
# Every op's contract is on its spec; these two are views of it (by op name).
SCHEMAS = {name: (get_op(name).attrs, get_op(name).optional) for name in known_ops()}
ARITY = {name: get_op(name).arity for name in known_ops()}


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
        if not is_int(d) or not 1 <= d <= MAX_DIM:
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
        if node.op not in allowed_ops:
            p.fail(f"node {node.name} has unknown op {node.op!r}")
        spec = get_op(node.op)
        if not isinstance(node.attrs, dict):
            p.fail(f"{where}: attributes must be a mapping")
        if not isinstance(node.inputs, list) or not all(isinstance(i, str) for i in node.inputs):
            p.fail(f"{where}: inputs must be a list of tensor names")
        n_out = len(node.outputs) if isinstance(node.outputs, list) else 0
        if not spec.outputs[0] <= n_out <= spec.outputs[1] \
                or not all(isinstance(o, str) for o in node.outputs):
            p.fail(f"{where}: must have exactly one output (Split: one per piece)")
        arity = spec_arity(spec, node.attrs)
        if not arity[0] <= len(node.inputs) <= arity[1]:
            p.fail(f"{where}: has {len(node.inputs)} inputs")
        for i, t in enumerate(node.inputs):
            if t not in defined and not (t == "" and i in spec.optional_inputs):
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
    spec = get_op(node.op)
    required, optional = spec.attrs, spec.optional
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
    integer_ops = ops_where(integer_graph=True)
    for node in ig.nodes:
        if node.op not in integer_ops:
            problems.append(f"node {node.name} has non-integer op {node.op}")
        reads_float = node.op in integer_ops and get_op(node.op).reads_float_input
        if reads_float and node.inputs[0] not in ig.inputs:
            problems.append(f"node {node.name} quantizes a tensor that is not a graph input")
        if not reads_float:
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


def _check_integer_node(p, g, node, producers):
    """What every integer op guarantees (activation inputs, output dtype, accumulators
    without zero point), then the op's own contract (`OpSpec.check`)."""
    spec, where = get_op(node.op), f"node {node.name} ({node.op})"
    out = g.values[node.outputs[0]]
    activations = node.inputs[:activation_count(spec, node.attrs)]
    for t in activations:
        if t in g.constants:
            p.fail(f"{where}: activation input {t!r} is a constant")
        if not spec.reads_float_input and g.values[t].dtype not in ACTIVATION_DTYPES:
            p.fail(f"{where}: input {t!r} has dtype {g.values[t].dtype}")
    # An accumulator (IntConv/IntLinear) has no zero point (its offset is in the bias):
    # fused epilogues (`kernels.fuse`) read it on that basis.
    for t, z in zip(activations, spec.input_zero_points(node.attrs)):
        prod = producers.get(t)
        if prod is not None and "accumulator" in get_op(prod.op).tags and z != 0:
            p.fail(f"{where}: zero point {z} for the accumulator {t!r} of {prod.name} "
                   f"(accumulators have zero point 0)")
    if out.dtype not in ACTIVATION_DTYPES:
        p.fail(f"{where}: output dtype {out.dtype} is not an activation dtype")
    spec.check(node, g, p)


def _check_metadata(p, ig):
    md = ig.metadata
    outs = md.get("outputs") if isinstance(md, dict) else None
    if not isinstance(outs, dict):
        p.fail("metadata has no output quantization parameters")
    for name in ig.outputs:
        q = outs.get(name)
        if (not isinstance(q, dict) or finite(q.get("scale")) or not q.get("scale") > 0
                or not is_int(q.get("zero_point"))):
            p.fail(f"metadata: output {name!r} needs a finite scale > 0 and an integer zero point")
    if not isinstance(md.get("config", {}), dict):
        p.fail("metadata: config must be a mapping")


def _validate(g: Graph, what: str, integer: bool) -> None:
    p = _Problems(what)
    if not isinstance(g.metadata, dict):
        p.fail("metadata must be a mapping")
    # Every registered op passes here; check_integer_only then names a float op in an
    # integer graph in its own words.
    allowed = ops_where(float_graph=True) | ops_where(integer_graph=True)
    _check_structure(p, g, allowed if integer else ops_where(float_graph=True))
    for name in g.inputs:
        if g.values[name].dtype not in FLOAT_DTYPES:
            p.fail(f"graph input {name!r} must be float32")
    if integer:
        check_integer_only(g)
    _check_constants(p, g, integer)
    producers = {o: node for node in g.nodes for o in node.outputs}
    for node in g.nodes:
        _check_attrs(p, node)
        get_op(node.op).precheck(node, g, p)
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
    windowed = ops_where("windowed")
    for node in graph.nodes:
        if node.op in windowed and node.inputs:
            x = graph.values[node.inputs[0]]
            out = graph.values[node.outputs[0]]
            if len(x.shape) != 4 or len(out.shape) != 4:
                continue
            n, c, h, w = _with_batch(x.shape, batch)
            t, l, b, r = node.attrs.get("pads", (0, 0, 0, 0))
            kh, kw = get_op(node.op).window_kernel(node, graph)
            padded = n * c * (h + t + b + kh) * (w + l + r + kw)
            cols = numel(_with_batch(out.shape, batch)[:1] + out.shape[2:]) * c * kh * kw
            temp = max(temp, (padded + cols) * _element_bytes(x.dtype))
    return total + temp


def check_run_memory(graph: Graph, batch: int, limit: int | None = None) -> int:
    """Refuse (one IntqError line, with the numbers) a run of `graph` on `batch` samples
    whose memory need, `run_memory`, exceeds `limit` (default: $INTQ_MEMORY_LIMIT, else half
    the machine's memory). Call it before allocating anything; returns the need in bytes."""
    if not is_int(batch) or batch < 1:
        raise IntqError(f"batch size must be a positive integer, got {batch!r}")
    need = run_memory(graph, int(batch))
    check_bytes(need, f"a run of {graph.name!r} on a batch of {batch}", limit)
    return need
