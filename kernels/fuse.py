"""Fusion: the Numba backend's graph pass, which rewrites an integer graph into fused nodes.

The core IR stays unfused (the twin and `verify` see every rounding point); this pass runs
inside the backend, on a copy, and says what *may* be fused. Lowering already made the
decisions that change arithmetic: an IntConv/IntLinear whose accumulator is read by an
IntAdd or IntConcat hands it over unrounded (zero point 0, see `intq.validate`). The pass
reads those decisions off the graph and builds one `FusedConv` node per layer and
epilogue; the plan (`kernels.plan`) maps each fused node to one kernel call and decides,
by its options, what to fuse (`fuse_residual`).

A `FusedConv` is a small subgraph: its attribute `nodes` holds the original nodes it
replaces, in order, and its reference `run` runs them one after the other with their own
`run`s, so a fused node means exactly what its parts mean and is tested alone against the
kernel step (tests/test_fusion.py). Epilogues:

* "requantize": IntConv/IntLinear -> Requantize (the layer's output, its fused clamp).
* "residual": IntConv -> IntAdd of two branches, the other branch read from memory.
* "concat_branch": IntConv -> its branch of an IntConcat on channels. The branch's
  rescale moves into the fused node (a Requantize with the concat's output parameters),
  which writes its slice of the concat's output in place (`write_into`); the concat then
  reads that part through an identity rescale (b = 1, c = 0, zero point = the output's),
  which is exact: DN_{1,0}(v - z) + z = v.
* a "copy": a Requantize of a fused node's whole output (the 16-bit residual stream
  re-read at 8 bits by the next block) joins it as its second output.
"""
from __future__ import annotations

import numpy as np

from intq.ir import Graph, Node, Value
from intq.ops import get_op, ops_where

EPILOGUES = ("requantize", "residual", "concat_branch")
ACCUMULATING = ops_where("accumulator", integer_graph=True)


class FusedConv:
    """A layer with its epilogue (module docstring). attrs: `nodes` (the replaced nodes, in
    order), `epilogue`, `branch` (the accumulator's input position in the IntAdd or
    IntConcat), `write_into` ((tensor, channel offset) for a concat branch, else None),
    `copy` (whether the last node is a folded Requantize), `inputs` (the fused node's
    input names, for `run`)."""

    name = "FusedConv"

    @staticmethod
    def run(attrs, *xs):
        env = dict(zip(attrs["inputs"], xs))
        for node in attrs["nodes"]:
            ys = get_op(node.op).run(node.attrs, *[env[i] for i in node.inputs])
            env.update(zip(node.outputs, ys))
        return tuple(env[o] for o in attrs["outputs"])


def run_reference(graph: Graph, feeds: dict, trace: bool = False):
    """The reference run of a fused (or unfused) integer graph whose inputs are given as
    integer arrays (`feeds`), every tensor int64: what a fused graph means."""
    env = {k: v.astype(np.int64) for k, v in graph.constants.items()}
    env.update({k: np.asarray(v, np.int64) for k, v in feeds.items()})
    for node in graph.nodes:
        spec = FusedConv if node.op == FusedConv.name else get_op(node.op)
        env.update(zip(node.outputs, spec.run(node.attrs, *[env[i] for i in node.inputs])))
    return env if trace else [env[o] for o in graph.outputs]


def fuse(graph: Graph, residual: bool = True, copies: bool = True) -> Graph:
    """A copy of the integer graph with every fusable layer as one `FusedConv` node.
    residual=False keeps residual adds unfused; copies=False folds no Requantize copy."""
    g = _shallow_copy(graph)
    readers: dict[str, list[Node]] = {}
    for node in g.nodes:
        for i in node.inputs:
            readers.setdefault(i, []).append(node)

    def only_reader(t):
        r = readers.get(t, [])
        return r[0] if len(r) == 1 and t not in g.outputs else None

    # Each consumer takes at most one layer into its epilogue: of two conv branches of one
    # add, the later one (its other branch, the earlier accumulator, is then stored RAW).
    claimed: dict[str, Node] = {}
    for node in g.nodes:
        if node.op not in ACCUMULATING:
            continue
        user = only_reader(node.output)
        if user is None:
            continue
        if user.op == "Requantize" or (residual and user.op == "IntAdd" and user.attrs["n"] == 2
                                       and plain_add(g, user)):
            claimed[user.name] = node
    concat_branch: dict[str, tuple] = {}   # layer name -> (concat node, branch, channel offset)
    for node in g.nodes:
        if node.op == "IntConcat" and node.attrs["axis"] in (1, -3):
            coff = 0
            for i, t in enumerate(node.inputs[:node.attrs["n"]]):
                prod = g.producer(t)
                if prod is not None and prod.op == "IntConv" and only_reader(t) is node:
                    concat_branch[prod.name] = (node, i, coff)
                coff += g.values[t].shape[1]

    fused_layers = {c.name for c in claimed.values()}
    nodes: list[Node] = []
    for node in g.nodes:
        if node.name in fused_layers:
            continue                      # emitted where its consumer stands
        if node.name in concat_branch:
            nodes.append(_concat_branch(g, node, *concat_branch[node.name]))
        elif node.name in claimed:
            layer = claimed[node.name]
            epilogue = "requantize" if node.op == "Requantize" else "residual"
            nodes.append(_fused(g, [layer, node], epilogue,
                                branch=node.inputs.index(layer.output) if epilogue == "residual" else 0))
        else:
            nodes.append(node)
    g.nodes = nodes
    if copies:
        _fold_copies(g)
    return g


def _shallow_copy(graph: Graph) -> Graph:
    """The graph with its own node list, nodes, values and constant table (the constant
    arrays themselves shared: the pass never changes one)."""
    g = Graph(graph.name)
    g.inputs, g.outputs, g.metadata = list(graph.inputs), list(graph.outputs), graph.metadata
    g.values, g.constants = dict(graph.values), dict(graph.constants)
    g.nodes = [Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs)) for n in graph.nodes]
    return g


def plain_add(g, node) -> bool:
    """An IntAdd that the residual epilogue and `AddStep` run: every branch added (no
    sign), no offset constant, every branch of the output's shape (no broadcasting)."""
    a, out = node.attrs, g.values[node.output].shape
    return (all(s == 1 for s in a.get("signs") or ()) and not a.get("offset")
            and all(g.values[t].shape == out for t in node.inputs[:a["n"]]))


def _fused(g, parts, epilogue, branch=0, write_into=None, copy=False) -> Node:
    produced = {o for p in parts for o in p.outputs}
    inputs = []
    for p in parts:
        inputs += [i for i in p.inputs if i not in produced and i not in inputs]
    outputs = [parts[1].output] + ([parts[-1].output] if copy else [])
    attrs = {"nodes": parts, "epilogue": epilogue, "branch": branch, "write_into": write_into,
             "copy": copy, "inputs": inputs, "outputs": outputs}
    return Node("FusedConv", parts[0].name, inputs, outputs, attrs)


def _concat_branch(g, layer, cat, i, coff) -> Node:
    """The layer and its branch's rescale as one node writing its slice of the concat;
    the concat reads the slice through an exact identity rescale."""
    a, n = cat.attrs, cat.attrs["n"]
    part = g.unique_name(f"{cat.output}.part{i}")
    rq = Node("Requantize", f"{cat.name}[{i}]", [layer.output, cat.inputs[n + i], cat.inputs[2 * n + i]],
              [part], {"in_zero_point": 0, "out_zero_point": a["out_zero_point"], "lo": a["lo"],
                       "hi": a["hi"], "dtype": a["dtype"]})
    g.values[part] = Value(part, g.values[layer.output].shape, a["dtype"])
    one = g.add_constant(g.unique_name(f"{cat.output}.identity_b"), np.ones(1, np.int64))
    zero = g.add_constant(g.unique_name(f"{cat.output}.identity_c"), np.zeros(1, np.int64))
    cat.inputs = list(cat.inputs)
    cat.inputs[i], cat.inputs[n + i], cat.inputs[2 * n + i] = part, one, zero
    cat.attrs = dict(a, zero_points=[a["out_zero_point"] if j == i else z
                                     for j, z in enumerate(a["zero_points"])])
    return _fused(g, [layer, rq], "concat_branch", branch=i, write_into=(cat.output, coff))


def _fold_copies(g) -> None:
    """A Requantize of the whole output of a fused node (not a concat slice) runs in that
    node's epilogue as its second output."""
    writer = {n.outputs[0]: n for n in g.nodes
              if n.op == "FusedConv" and n.attrs["write_into"] is None and not n.attrs["copy"]}
    keep = []
    for node in g.nodes:
        w = writer.pop(node.inputs[0], None) if node.op == "Requantize" else None
        if w is None:
            keep.append(node)
            continue
        parts = w.attrs["nodes"] + [node]
        new = _fused(g, parts, w.attrs["epilogue"], w.attrs["branch"], copy=True)
        w.inputs, w.outputs, w.attrs = new.inputs, new.outputs, new.attrs
    g.nodes = keep
