"""Ending a model at chosen tensors (`--outputs`), as NPU toolchains cut a detector before
its float decode and NMS (RKNN, Hailo and Vela take the same list of tensor names).

`cut_at_outputs` makes the named tensors the graph's outputs and drops every node that
none of them depends on, before import: ops past the cut are never imported, so an op intq
cannot lower there (NonMaxSuppression, TopK, a float decode) no longer stops the compile.
"""
from __future__ import annotations

import onnx

from ..errors import IntqError


def parse_outputs(text) -> list | None:
    """`"a,b"` or `["a", "b,c"]` -> ["a", "b", "c"]; None for no text."""
    if not text:
        return None
    parts = [text] if isinstance(text, str) else list(text)
    names = [n.strip() for p in parts for n in str(p).split(",") if n.strip()]
    if not names:
        raise IntqError("--outputs: give at least one tensor name")
    seen = set()
    for n in names:
        if n in seen:
            raise IntqError(f"--outputs names {n!r} twice")
        seen.add(n)
    return names


def _node_inputs(node) -> set:
    """Every tensor a node reads, its subgraphs' outer-scope reads included."""
    names = {i for i in node.input if i}
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in g.node:
                names |= _node_inputs(n)
    return names


def cut_at_outputs(proto: onnx.ModelProto, names: list) -> onnx.ModelProto:
    """A copy of `proto` whose outputs are the tensors `names`, with the nodes, initializers
    and inputs none of them needs removed."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output if o}
    inits = {t.name for t in graph.initializer}
    inputs = {vi.name for vi in graph.input if vi.name not in inits}
    for name in names:
        if name in inputs:
            raise IntqError(f"--outputs names {name!r}, an input of the model")
        if name not in producer:
            if name in inits:
                raise IntqError(f"--outputs names {name!r}, a constant")
            near = [t for t in producer if name.lower() in t.lower()][:5]
            hint = f" (tensors with similar names: {', '.join(near)})" if near else \
                " (`intq inspect --json` lists the tensors)"
            raise IntqError(f"--outputs names {name!r}, which no node of the model computes{hint}")
    needed, stack, keep = set(), list(names), set()
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        node = producer.get(t)
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            stack.extend(_node_inputs(node))
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    kept = [n for n, orig in zip(g.node, graph.node) if id(orig) in keep]
    del g.node[:]
    g.node.extend(kept)
    used = set().union(*(_node_inputs(n) for n in kept)) | set(names)
    for field in (g.initializer, g.input):
        items = [t for t in field if t.name in used]
        del field[:]
        field.extend(items)
    declared = {vi.name: vi for vi in list(graph.value_info) + list(graph.output)}
    if any(n not in declared for n in names):   # each new output needs its type and shape
        try:
            inferred = onnx.shape_inference.infer_shapes(proto).graph
        except Exception:   # a broken model: load_onnx reports it when it reads the cut
            inferred = graph
        declared.update({vi.name: vi for vi in inferred.value_info})
    del g.output[:]
    for name in names:
        if name not in declared or not declared[name].type.tensor_type.HasField("shape"):
            raise IntqError(f"--outputs {name!r}: its shape cannot be inferred")
        g.output.add().CopyFrom(declared[name])
    return out


def with_outputs(model, names):
    """`model` (a path or ModelProto) ended at the tensors `names` (a list, or the
    `--outputs` text), as a checked, shape-inferred ModelProto; `model` itself for none."""
    names = parse_outputs(names)
    if not names:
        return model
    from .load import load_onnx

    # Read and checked first: each new output takes its tensor's inferred type and shape.
    return load_onnx(cut_at_outputs(load_onnx(model), names))
