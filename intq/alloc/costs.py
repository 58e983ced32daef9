"""The inputs of the ILP that come from the graph alone: which layers there are, their size
and BOPS at each bit width (the same arithmetic as `intq report`: weights at b bits plus
INT32 biases, MB = 2^20 bytes; BOPS = b_w * b_a * MACs, with a layer's input at its own
width), the layers that must share a width, and the first and last layer.
"""
from __future__ import annotations

import numpy as np

from ..ops import get_op
from ..quant.lower import LAYERS, PASS_THROUGH, Lowering
from ..quant.scheme import QuantConfig


def layer_nodes(fg):
    return [n for n in fg.nodes if n.op in LAYERS]


def size_bops(fg, bits=(4, 8)) -> dict:
    """{layer: {b: {"size_mb", "bops_g", "macs"}}} for the Conv/Linear layers of a float graph."""
    out = {}
    for node in layer_nodes(fg):
        w = fg.constants[node.inputs[1]]
        n_b = w.shape[0]
        macs = get_op(node.op).macs(node, fg)
        out[node.name] = {b: {"size_mb": (int(np.prod(w.shape)) * b / 8 + n_b * 4) / 2**20,
                              "bops_g": b * b * macs / 1e9, "macs": macs} for b in bits}
    return out


def ties(fg) -> list[list[str]]:
    """Layers that read the same quantized tensor (looking through max pools, reshapes and
    the other ops that keep their input's parameters): a downsampling shortcut and the
    main branch's first conv, or an Inception block's 1x1 branches. Giving them one width
    lets the tensor be stored once at that width (HAWQ-V3 Appendix I's footnote); found
    from the graph, so any architecture gets its ties."""
    readers = Lowering(fg, None, QuantConfig()).readers  # the lowering's own look-through
    order = {n.name: i for i, n in enumerate(fg.nodes)}
    groups = []
    for t in list(fg.inputs) + [o for n in fg.nodes if n.op not in PASS_THROUGH for o in n.outputs]:
        layers = sorted({n.name for n in readers(t) if n is not None and n.op in LAYERS},
                        key=order.get)
        if len(layers) > 1:
            groups.append(layers)
    return groups


def ends(fg) -> list[str]:
    """The first and the last layer (kept at 8 bits by default, as `intq compile` does)."""
    names = [n.name for n in layer_nodes(fg)]
    return [names[0], names[-1]] if names else []
