"""Fuse ReLU, ReLU6 and other Clips into the Conv, Linear, Add or ChannelAffine that produces
their input.

The producer gets `activation` ("relu", "relu6" or "clip") and the clamp bounds `act_min`,
`act_max`; integer lowering turns them into the bounds of the requantization clamp.
Producers whose output has other readers keep a separate Relu/Clip.
"""

FUSABLE = ("Conv", "Linear", "Add", "ChannelAffine")


def _bounds(node):
    if node.op == "Relu":
        return 0.0, None
    return node.attrs.get("min"), node.attrs.get("max")


def _name(lo, hi):
    if lo == 0.0 and hi is None:
        return "relu"
    if lo == 0.0 and hi == 6.0:
        return "relu6"
    return "clip"


def fuse_activation(graph):
    for act in [n for n in graph.nodes if n.op in ("Relu", "Clip")]:
        prod = graph.producer(act.inputs[0])
        if prod is None or prod.op not in FUSABLE or graph.use_count(act.inputs[0]) != 1:
            continue
        lo, hi = _bounds(act)
        old_lo, old_hi = prod.attrs.get("act_min"), prod.attrs.get("act_max")
        # Two clamps in a row are one clamp with the tighter bounds.
        lo = old_lo if lo is None else lo if old_lo is None else max(lo, old_lo)
        hi = old_hi if hi is None else hi if old_hi is None else min(hi, old_hi)
        prod.attrs.update(activation=_name(lo, hi), act_min=lo, act_max=hi)
        graph.remove_node(act)
        graph.replace_uses(act.output, prod.output)
    graph.prune()
    return graph
