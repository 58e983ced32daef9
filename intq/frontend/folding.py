"""Fold constants and shape arithmetic out of an ONNX graph, before any op check.

Exporters compute shapes and pads at run time (Shape, Gather, Slice, Unsqueeze, Concat,
Cast, ConstantOfShape, Reshape chains). Two rules make that arithmetic disappear:

* a node whose inputs are all constant is evaluated once, whatever its op type, with
  onnx's own reference evaluator;
* `Shape` of a tensor whose shape is known except for the batch dimension becomes a
  *symbolic* vector whose batch entry is `BATCH`. A few index ops (Gather, Slice, Squeeze,
  Unsqueeze, Concat, Cast, Identity, Reshape) propagate such vectors, and a Reshape whose
  target is one gets a constant target where BATCH becomes 0 ("copy the input's batch"):
  the `x.view(x.size(0), -1)` idiom then compiles for any batch size.

Anything the rules cannot resolve is left in place and reported by the op check.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import IntqError
from ..limits import check_bytes
from .load import onnx_opset


class _Batch:
    """The dynamic batch size inside a symbolic shape vector."""

    def __repr__(self):
        return "N"


BATCH = _Batch()


@dataclass
class OnnxView:
    """An ONNX graph after folding: remaining nodes, constants, known shapes."""

    nodes: list
    consts: dict
    shapes: dict
    dtypes: dict
    inputs: list
    outputs: list
    opset: int
    name: str = "graph"
    folded: int = 0
    symbolic: dict = field(default_factory=dict)


def _shape_of(value_info):
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def fold_onnx_constants(proto: onnx.ModelProto, rounds: int = 64) -> OnnxView:
    """Fold `proto`. While Shape nodes remain and a round made progress (fewer of them, or a
    batch-dependent Reshape got a constant target), ONNX shape inference runs again on the
    folded graph, which it could not see through before, and folding repeats (at most
    `rounds` rounds): this is how a channel split and shuffle written with x.size()
    (ShuffleNet) resolve under a dynamic batch, a few nodes further per round."""
    def shapes(v):
        return sum(n.op_type == "Shape" for n in v.nodes)

    def pending(v):   # Shape nodes, and Reshapes still waiting for their input's shape
        return shapes(v) + sum(n.op_type == "Reshape" and n.input[1] in v.symbolic for n in v.nodes)

    view, _ = _fold_once(proto)
    left = pending(view)
    while left and rounds > 1:
        nxt, resolved = _fold_once(_reinferred(proto, view), view.symbolic)
        nxt.folded += view.folded
        # Progress: a Shape folded (its Reshapes may only now wait on a symbolic target,
        # YOLOv8's chunk after chunk), a Reshape resolved, or fewer pending in all.
        progressed = resolved or shapes(nxt) < shapes(view) or pending(nxt) < left
        view, rounds = nxt, rounds - 1
        if not progressed:
            break
        left = pending(view)
    return _split_sequences(view)


def _split_sequences(view: OnnxView) -> OnnxView:
    """SplitToSequence read only by SequenceAt at constant positions (how the dynamo
    exporter writes torch's `chunk` and `split`) becomes a Split whose pieces the
    SequenceAt outputs name: a tensor sequence never reaches the importers."""
    readers: dict = {}
    for n in view.nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    replace, drop = {}, set()
    for n in view.nodes:
        if n.op_type != "SplitToSequence":
            continue
        users = readers.get(n.output[0], [])
        shape = view.shapes.get(n.input[0])
        axis = attr(n, "axis", 0)
        if not users or n.output[0] in view.outputs or shape is None or \
                any(u.op_type != "SequenceAt" or u.input[1] not in view.consts for u in users):
            continue
        axis %= len(shape)
        size = shape[axis]
        split = view.consts.get(n.input[1]) if len(n.input) > 1 and n.input[1] else None
        keep = attr(n, "keepdims", 1) or split is not None
        if split is None:
            sizes = [1] * (size or 0)
        elif np.ndim(split) == 0:
            step = int(split)
            sizes = [min(step, size - i) for i in range(0, size, step)] if size else []
        else:
            sizes = [int(v) for v in np.ravel(split)]
        if not sizes or size is None or sum(sizes) != size:
            continue
        parts = [f"{n.output[0]}.part{i}" for i in range(len(sizes))]
        split_name = f"{n.output[0]}.sizes"
        view.consts[split_name] = np.array(sizes, np.int64)
        nodes = [helper.make_node("Split", [n.input[0], split_name], parts, name=n.name or "split", axis=axis)]
        for i, (part, k) in enumerate(zip(parts, sizes)):
            view.shapes[part] = shape[:axis] + (k,) + shape[axis + 1:]
            view.dtypes[part] = view.dtypes.get(n.input[0])
        for u in users:
            pos = int(view.consts[u.input[1]]) % len(sizes)
            if keep:
                nodes.append(helper.make_node("Identity", [parts[pos]], [u.output[0]], name=u.name))
            else:
                axes_name = f"{u.output[0]}.axes"
                view.consts[axes_name] = np.array([axis], np.int64)
                nodes.append(helper.make_node("Squeeze", [parts[pos], axes_name], [u.output[0]], name=u.name))
            drop.add(id(u))
        replace[id(n)] = nodes
    if not replace:
        return view
    out = []
    for n in view.nodes:
        if id(n) in drop:
            continue
        out.extend(replace.get(id(n), [n]))
    view.nodes = out
    return view


def _reinferred(proto, view) -> onnx.ModelProto:
    """The folded graph as a model again (constants as initializers), shapes re-inferred."""
    used = {i for n in view.nodes for i in n.input} | set(view.outputs)
    inits = [numpy_helper.from_array(np.asarray(v), name) for name, v in view.consts.items()
             if name in used]
    g = proto.graph
    graph = helper.make_graph(list(view.nodes), g.name, [i for i in g.input if i.name in view.inputs],
                              list(g.output), inits)
    model = helper.make_model(graph, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:
        raise IntqError(f"shape inference failed after folding: {str(e).splitlines()[0]}") from None


def _fold_once(proto: onnx.ModelProto, symbolic=None):
    """One folding pass: (view, whether a symbolic Reshape target was made constant).
    `symbolic` carries the symbolic shape vectors of earlier rounds (their nodes are gone)."""
    g = proto.graph
    opset = onnx_opset(proto)
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    shapes, dtypes = {}, {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        shapes[vi.name] = _shape_of(vi)
        dtypes[vi.name] = vi.type.tensor_type.elem_type
    inputs = [vi.name for vi in g.input if vi.name not in consts]
    view = OnnxView([], consts, shapes, dtypes, inputs, [o.name for o in g.output], opset,
                    name=g.name or "graph")
    syms: dict[str, np.ndarray] = view.symbolic
    syms.update(symbolic or {})
    resolved = False
    for node in g.node:
        ins = [i for i in node.input if i]
        if all(i in consts for i in ins) and not _has_subgraph(node):
            _evaluate(node, consts, opset)
            view.folded += 1
            continue
        if node.op_type == "CastLike" and node.input[0] in consts and dtypes.get(node.input[1]):
            # Only the second input's element type matters, and that is static.
            target = helper.tensor_dtype_to_np_dtype(dtypes[node.input[1]])
            consts[node.output[0]] = np.asarray(consts[node.input[0]]).astype(target)
            view.folded += 1
            continue
        if node.op_type == "Shape":
            vec = _shape_vector(node, shapes.get(node.input[0]))
            if vec is not None:
                _store(node.output[0], vec, consts, syms)
                view.folded += 1
                continue
        if ins and all(i in consts or i in syms for i in ins) and any(i in syms for i in ins):
            out = _symbolic(node, consts, syms, opset)
            if out is not None:
                _store(node.output[0], out, consts, syms)
                view.folded += 1
                continue
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in syms:
            new = _resolve_reshape(node, syms[node.input[1]], shapes.get(node.input[0]), consts)
            resolved |= new is not node
            node = new
        view.nodes.append(node)
    return view, resolved


def _has_subgraph(node) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute)


def _output_elements(node, feeds):
    """How many elements a shape-making op will allocate, from its constant inputs (None
    for other ops, or inputs the evaluator will reject anyway). Shape inference misses
    these when the shape is itself computed (ConstantOfShape(Mul(s, 2)))."""
    ins = [np.asarray(feeds[i]) if i else None for i in node.input]
    op = node.op_type
    try:
        if op == "ConstantOfShape":
            return math.prod(int(d) for d in ins[0].ravel())
        if op == "Expand":
            return math.prod(np.broadcast_shapes(ins[0].shape, tuple(int(d) for d in ins[1].ravel())))
        if op == "Tile":
            return math.prod(int(d) * int(r) for d, r in zip(ins[0].shape, ins[1].ravel()))
        if op == "Range":
            start, limit, delta = (float(np.ravel(v)[0]) for v in ins[:3])
            return max(math.ceil((limit - start) / delta), 0)
        if op == "Pad" and len(ins) > 1:
            pads = [int(p) for p in ins[1].ravel()]
            rank = ins[0].ndim
            if len(pads) == 2 * rank:
                return math.prod(d + a + b for d, a, b in zip(ins[0].shape, pads[:rank], pads[rank:]))
    except (ValueError, TypeError, ZeroDivisionError, OverflowError, IndexError):
        return None
    return None


def _evaluate(node, consts, opset):
    """Run one node on constant inputs with onnx's reference evaluator at the model's opset."""
    from onnx.reference import ReferenceEvaluator

    feeds = {i: consts[i] for i in node.input if i}
    count = _output_elements(node, feeds)
    if count is not None:  # 8 bytes: the widest element the evaluator may produce
        check_bytes(count * 8, f"constant node {node.name or node.op_type} ({node.op_type})")
    inputs = [helper.make_tensor_value_info(
        i, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.shape(v)) for i, v in feeds.items()]
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    model = helper.make_model(helper.make_graph([node], "fold", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs = ReferenceEvaluator(model).run(None, feeds)
    except Exception as e:
        raise IntqError(f"cannot evaluate constant node {node.name or node.op_type} "
                        f"({node.op_type}): {e}") from None
    for name, value in zip([o for o in node.output if o], outs):
        consts[name] = np.asarray(value)


def _store(name, vec, consts, syms):
    if any(v is BATCH for v in np.asarray(vec, dtype=object).ravel()):
        syms[name] = np.asarray(vec, dtype=object)
    else:
        consts[name] = np.asarray(vec, dtype=np.int64) if np.asarray(vec).dtype == object \
            else np.asarray(vec)


def _shape_vector(node, shape):
    """Shape's output as a vector, with BATCH for a dynamic first dimension, or None."""
    if shape is None or any(d is None for d in shape[1:]):
        return None
    vec = np.array([BATCH if d is None else d for d in shape], dtype=object)
    start, end = attr(node, "start", 0), attr(node, "end", None)
    return vec[start:end]


def _ints(x):
    return [int(v) for v in np.asarray(x).ravel()]


def _symbolic(node, consts, syms, opset):
    """Evaluate an index op on vectors that may contain BATCH; None if not one we know."""
    def val(i):
        return syms[i] if i in syms else np.asarray(consts[i]).astype(object)

    op, ins = node.op_type, list(node.input)
    try:
        if op in ("Identity", "Cast"):
            return val(ins[0])
        if op == "Gather":
            return np.take(val(ins[0]), np.asarray(consts[ins[1]]).astype(np.int64),
                           axis=attr(node, "axis", 0))
        if op == "Concat":
            return np.concatenate([np.atleast_1d(val(i)) for i in ins], axis=attr(node, "axis", 0))
        if op in ("Unsqueeze", "Squeeze"):
            axes = attr(node, "axes") if opset < 13 or len(ins) < 2 else _ints(consts[ins[1]])
            x = val(ins[0])
            if op == "Unsqueeze":
                for a in sorted(a % (x.ndim + len(axes)) for a in axes):
                    x = np.expand_dims(x, a)
                return x
            return np.squeeze(x, axis=None if not axes else tuple(axes))
        if op == "Slice" and val(ins[0]).ndim == 1:
            x = val(ins[0])
            if opset < 10:
                starts, ends = attr(node, "starts"), attr(node, "ends")
                steps = [1]
            else:
                starts, ends = _ints(consts[ins[1]]), _ints(consts[ins[2]])
                steps = _ints(consts[ins[4]]) if len(ins) > 4 and ins[4] else [1]
            return x[slice(starts[0], ends[0], steps[0])]
        if op == "Reshape" and ins[1] in consts:
            return val(ins[0]).reshape(_ints(consts[ins[1]]))
    except (KeyError, IndexError, ValueError, TypeError):
        return None
    return None


def _resolve_reshape(node, target, data_shape, consts):
    """Give a Reshape with a symbolic target a constant one.

    BATCH becomes 0 ("copy the input's batch") where that is what it means; otherwise the
    target's -1 is computed from the static non-batch dimensions and BATCH becomes -1.
    """
    target = list(target.ravel())
    allowzero = attr(node, "allowzero", 0)
    if target.count(BATCH) != 1 or data_shape is None or None in data_shape[1:]:
        return node  # unresolved: the importer reports it
    i = target.index(BATCH)
    if i == 0 and data_shape[0] is None and not allowzero:
        out = [0] + [int(t) for t in target[1:]]
    else:
        features = int(np.prod(data_shape[1:]))
        known = [int(t) for t in target if t is not BATCH]
        if any(t == 0 for t in known):
            return node
        if -1 in known:
            rest = int(np.prod([t for t in known if t != -1]))
            if rest == 0 or features % rest:
                return node
            known[known.index(-1)] = features // rest
        out = [int(t) for t in known]
        out.insert(i, -1)
    name = f"{node.output[0]}__target"
    consts[name] = np.array(out, dtype=np.int64)
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[1] = name
    return new
