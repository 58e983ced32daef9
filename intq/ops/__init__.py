"""Op registry: one small module per IR op, each defining what the op means.

An op spec (a subclass of `OpSpec`) gives the op's shape rule (`infer`, which also
validates inputs), its float semantics in numpy (`run`, used by the float executor and by
constant folding) and its cost (`macs`, `params`). Adding an op means adding a module here
and registering it below, plus an importer in `intq.frontend.importers` if ONNX has it.
"""
from __future__ import annotations

from ..errors import IntqError
from .base import OpSpec
from . import (activation, affine, conv, batchnorm, elementwise, nonlinear, pool, shape_ops, linear,
               pad, integer, unsupported)

_REGISTRY: dict[str, type[OpSpec]] = {}


def register(spec: type[OpSpec]) -> type[OpSpec]:
    _REGISTRY[spec.name] = spec
    return spec


for _module in (activation, affine, conv, batchnorm, elementwise, nonlinear, pool, shape_ops, linear,
                pad, integer, unsupported):
    for _spec in _module.SPECS:
        register(_spec)


def get_op(name: str) -> type[OpSpec]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise IntqError(f"no op spec for {name!r}") from None


def known_ops() -> list[str]:
    return sorted(_REGISTRY)


def infer_shapes(graph) -> None:
    """Recompute every node output's shape and dtype from the op specs, in graph order.

    This is also the IR's validator: a spec raises IntqError on inputs it cannot accept,
    and the message names the node.
    """
    from ..ir import Value

    for node in graph.nodes:
        spec = get_op(node.op)
        missing = [i for i in node.inputs if i and i not in graph.values]
        if missing:
            raise IntqError(f"node {node.name} ({node.op}): input {missing[0]!r} is not computed "
                            f"by any node (batch-dependent shape arithmetic intq cannot resolve?)")
        ins = [graph.values[i] if i else None for i in node.inputs]
        try:
            outs = spec.infer(node, ins, graph)
        except IntqError as e:
            raise IntqError(f"node {node.name} ({node.op}): {e}") from None
        for name, (shape, dtype) in zip(node.outputs, outs):
            graph.values[name] = Value(name, tuple(shape), dtype)
