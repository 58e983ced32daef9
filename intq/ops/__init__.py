"""Op registry: one small module per family of IR ops, each defining what its ops mean.

An op spec (a subclass of `OpSpec`) gives the op's contract (attributes, arity, semantic
checks: what `intq.validate` enforces), its shape rule (`infer`), its numpy semantics
(`run`: float for float ops, used by the float executor and constant folding; the integer
reference for integer ops), its cost (`macs`, `params`) and its kind (`tags`). Every set
of ops another stage needs is a query here (`ops_where`), so no stage keeps a list of op
names by hand. Adding an op: README "Adding an integer op".
"""
from __future__ import annotations

from ..errors import IntqError
from .base import OpSpec
from . import (activation, affine, conv, batchnorm, elementwise, nonlinear, pool, shape_ops, linear,
               pad, resize, integer, unsupported)

_REGISTRY: dict[str, type[OpSpec]] = {}


def register(spec: type[OpSpec]) -> type[OpSpec]:
    _REGISTRY[spec.name] = spec
    return spec


for _module in (activation, affine, conv, batchnorm, elementwise, nonlinear, pool, shape_ops, linear,
                pad, resize, integer, unsupported):
    for _spec in _module.SPECS:
        register(_spec)


def get_op(name: str) -> type[OpSpec]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise IntqError(f"no op spec for {name!r}") from None


def find_op(name: str) -> type[OpSpec] | None:
    """The spec of op `name`, or None where there is none."""
    return _REGISTRY.get(name)


def known_ops() -> list[str]:
    return sorted(_REGISTRY)


def ops_where(tag: str | None = None, *, float_graph: bool | None = None,
              integer_graph: bool | None = None) -> frozenset:
    """Names of the registered ops with kind tag `tag` (any, when None) that may appear in
    the float graph and/or the integer graph, as asked."""
    return frozenset(
        name for name, spec in _REGISTRY.items()
        if (tag is None or tag in spec.tags)
        and (float_graph is None or spec.float_graph == float_graph)
        and (integer_graph is None or spec.integer_graph == integer_graph))


def spec_arity(spec, attrs) -> tuple[int, int]:
    """(min, max) inputs of a node of `spec` with these attributes."""
    return spec.arity(attrs) if callable(spec.arity) else spec.arity


def activation_count(spec, attrs) -> int:
    """How many leading inputs of an integer op are activations."""
    n = spec.activations(attrs) if callable(spec.activations) else spec.activations
    return n if isinstance(n, int) and n >= 0 else 0


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
