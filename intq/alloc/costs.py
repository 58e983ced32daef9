"""The inputs of the ILP that come from the graph alone: which layers there are, their size
and BOPS at each bit-width choice (the same arithmetic as `intq report`: weights at w_bits
plus INT32 biases, MB = 2^20 bytes; BOPS = w_bits * a_bits * MACs, the layer's input at
a_bits), the layers that must share a choice, and the first and last layer.
"""
from __future__ import annotations

import numpy as np

from ..ops import get_op
from ..quant.lower import LAYERS, PASS_THROUGH, Lowering
from ..quant.scheme import CHOICES, QuantConfig, normalise_choice, parse_choice


def layer_nodes(fg):
    return [n for n in fg.nodes if n.op in LAYERS]


def size_bops(fg, choices=CHOICES) -> dict:
    """{layer: {choice: {"size_mb", "bops_g", "macs"}}} for the Conv/Linear layers of a
    float graph, per choice ("w8a8", "w4a8", "w4a4"; 8 and 4 are read as w8a8 and w4a4)."""
    out = {}
    pairs = {normalise_choice(c, "choice"): parse_choice(c, "choice") for c in choices}
    for node in layer_nodes(fg):
        w = fg.constants[node.inputs[1]]
        n_b = w.shape[0]
        macs = get_op(node.op).macs(node, fg)
        out[node.name] = {c: {"size_mb": (int(np.prod(w.shape)) * wb / 8 + n_b * 4) / 2**20,
                              "bops_g": wb * ab * macs / 1e9, "macs": macs}
                          for c, (wb, ab) in pairs.items()}
    return out


def ties(fg) -> list[list[str]]:
    """Layers that read the same quantized tensor (looking through max pools, reshapes and
    the other ops that keep their input's parameters): a downsampling shortcut and the
    main branch's first conv, or an Inception block's 1x1 branches. Giving them one width
    lets the tensor be stored once at that width (HAWQ-V3 Appendix I's footnote); found
    from the graph, so any architecture gets its ties. The ILP ties the whole choice
    (w_bits and a_bits), which is more than storing the tensor once needs (a_bits alone)."""
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
    """The first and the last layer (kept at W8A8 by default, as `intq compile` does)."""
    names = [n.name for n in layer_nodes(fg)]
    return [names[0], names[-1]] if names else []
