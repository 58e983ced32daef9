"""The graph IR shared by every stage of intq.

A `Graph` holds named tensors (`Value`: static shape, dtype), constant tensors as numpy
arrays, and `Node`s in topological order. A shape entry of `None` is the dynamic batch
dimension. The same structure carries the float graph that the frontend builds and the
integer graph that lowering produces; only the op names and dtypes differ. What an op
means (its shape rule, its float semantics, its cost) lives in `intq.ops`, one module per
op, so the IR itself knows nothing about any particular op.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

import numpy as np

from .errors import IntqError


@dataclass
class Value:
    """A tensor's name, static shape (None marks the dynamic batch) and numpy dtype name."""

    name: str
    shape: tuple
    dtype: str = "float32"


@dataclass
class Node:
    """One op application: op type, unique name, input and output tensor names, attributes."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)

    @property
    def output(self) -> str:
        return self.outputs[0]


class Graph:
    """A dataflow graph of `Node`s over named tensors; see the module docstring."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.values: dict[str, Value] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.nodes: list[Node] = []
        self.metadata: dict = {}

    # -- construction -------------------------------------------------------------
    def add_input(self, name: str, shape, dtype: str = "float32") -> str:
        self.values[name] = Value(name, tuple(shape), dtype)
        self.inputs.append(name)
        return name

    def add_constant(self, name: str, array) -> str:
        array = np.asarray(array)
        name = self.unique_name(name)
        self.constants[name] = array
        self.values[name] = Value(name, tuple(array.shape), array.dtype.name)
        return name

    def add_node(self, op: str, inputs, outputs, attrs=None, name: str | None = None,
                 index: int | None = None) -> Node:
        node = Node(op, self.unique_node_name(name or op), list(inputs), list(outputs),
                    dict(attrs or {}))
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        return node

    def unique_name(self, base: str) -> str:
        if base not in self.values:
            return base
        for i in itertools.count(1):
            if f"{base}_{i}" not in self.values:
                return f"{base}_{i}"

    def unique_node_name(self, base: str) -> str:
        taken = {n.name for n in self.nodes}
        if base not in taken:
            return base
        for i in itertools.count(1):
            if f"{base}_{i}" not in taken:
                return f"{base}_{i}"

    def copy(self) -> "Graph":
        return copy.deepcopy(self)

    # -- queries ------------------------------------------------------------------
    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def producer(self, name: str) -> Node | None:
        for node in self.nodes:
            if name in node.outputs:
                return node
        return None

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def use_count(self, name: str) -> int:
        """How many places read `name` (node inputs and graph outputs)."""
        return sum(n.inputs.count(name) for n in self.nodes) + self.outputs.count(name)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    # -- rewriting ----------------------------------------------------------------
    def replace_uses(self, old: str, new: str) -> None:
        """Make every reader of tensor `old` read `new` instead (graph outputs too)."""
        for n in self.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]
        if old in self.outputs:
            # A graph output keeps its public name: rename the producer's output instead
            # when that is possible, so the model's interface never changes.
            prod = self.producer(new)
            if prod is not None and new not in self.inputs and self.use_count(new) == 0:
                prod.outputs = [old if o == new else o for o in prod.outputs]
                self.values[old] = Value(old, self.values[new].shape, self.values[new].dtype)
                self.values.pop(new, None)
                return
            self.outputs = [new if o == old else o for o in self.outputs]

    def remove_node(self, node: Node) -> None:
        self.nodes.remove(node)

    def prune(self) -> None:
        """Drop tensors and constants that no node or graph output refers to."""
        used = set(self.inputs) | set(self.outputs)
        for n in self.nodes:
            used.update(n.inputs)
            used.update(n.outputs)
        for name in list(self.values):
            if name not in used:
                del self.values[name]
        for name in list(self.constants):
            if name not in used:
                del self.constants[name]

    def toposort(self) -> None:
        """Order nodes so each comes after the producers of its inputs (stable)."""
        ready = set(self.inputs) | set(self.constants) | {""}
        pending = list(self.nodes)
        ordered: list[Node] = []
        while pending:
            progressed = False
            for n in list(pending):
                if all(i in ready for i in n.inputs):
                    ordered.append(n)
                    ready.update(n.outputs)
                    pending.remove(n)
                    progressed = True
            if not progressed:
                names = ", ".join(n.name for n in pending)
                raise IntqError(f"graph has a cycle or a missing tensor at nodes: {names}")
        self.nodes = ordered

    def summary(self) -> str:
        lines = [f"graph {self.name}: inputs {self.inputs} outputs {self.outputs}"]
        for n in self.nodes:
            out = self.values.get(n.output)
            lines.append(f"  {n.name}: {n.op}({', '.join(n.inputs)}) -> {n.output} "
                         f"{out.shape if out else '?'} {n.attrs}")
        return "\n".join(lines)
