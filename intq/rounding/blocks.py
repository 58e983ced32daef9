"""The float graph cut into blocks for block-wise reconstruction (BRECQ, QDrop).

A *cut* is a point in the node order where exactly one computed tensor is still needed
later: everything after it depends on the graph only through that tensor, so a block that
starts and ends at cuts can be optimized alone on cached inputs and targets. Consecutive
cut-to-cut segments are grouped into blocks the way BRECQ groups a network: a block ends
at a join (the add of a residual or inverted-residual block, a concat), at a layer with no
activation after it (the linear bottleneck that ends an inverted-residual block), at a
graph output, or once it holds `max_layers` layers (a plain VGG-like chain).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..quant.lower import LAYERS


@dataclass
class Block:
    nodes: list      # float-graph nodes, in graph order
    input: str       # the one tensor they read from before the block
    outputs: list    # what is read after it: the cut tensor (the graph's outputs, last)

    @property
    def layers(self) -> list:
        return [n for n in self.nodes if n.op in LAYERS]


def cuts(fg) -> list[int]:
    """Node indices i after which exactly one computed tensor is live (read by a later node
    or a graph output), and that tensor is node i's output."""
    last = {}
    for i, node in enumerate(fg.nodes):
        for t in node.inputs:
            if t and t not in fg.constants:
                last[t] = i
    for t in fg.outputs:
        last[t] = len(fg.nodes)
    live = {t for t in fg.inputs if last.get(t, -1) >= 0}
    out = []
    for i, node in enumerate(fg.nodes):
        for t in node.inputs:
            if last.get(t) == i:
                live.discard(t)
        live.update(t for t in node.outputs if last.get(t, -1) > i)
        if len(live) == 1 and next(iter(live)) in node.outputs:
            out.append(i)
    return out


def _closes(fg, node) -> bool:
    if node.op in ("Add", "Sub", "Concat", "Mul") or node.output in fg.outputs:
        return True
    return (node.op in LAYERS and node.attrs.get("act_min") is None
            and node.attrs.get("act_max") is None)


def blocks(fg, max_layers: int = 4) -> list[Block]:
    """The graph as consecutive blocks (see the module doc); each holds at least one layer
    except when the graph's tail after its last layer has none to hold."""
    out: list[Block] = []
    start, src, nlayers, joined = 0, fg.inputs[0], 0, False
    ends = cuts(fg)
    prev = -1
    for i in ends:
        seg = fg.nodes[prev + 1:i + 1]
        prev = i
        nlayers += sum(n.op in LAYERS for n in seg)
        joined = joined or any(_closes(fg, n) and n.op not in LAYERS for n in seg)
        last = fg.nodes[i]
        if nlayers and (joined or _closes(fg, last) or nlayers >= max_layers):
            out.append(Block(list(fg.nodes[start:i + 1]), src,
                             list(fg.outputs) if i == len(fg.nodes) - 1 else [last.outputs[0]]))
            start, src, nlayers, joined = i + 1, last.outputs[0], 0, False
    if start < len(fg.nodes):
        rest = list(fg.nodes[start:])
        if out and not any(n.op in LAYERS for n in rest):
            out[-1] = Block(out[-1].nodes + rest, out[-1].input, list(fg.outputs))
        else:
            out.append(Block(rest, src, list(fg.outputs)))
    return out
