"""Fold ChannelAffine nodes (y = x * s + t per channel) wherever exact algebra allows.

In order of preference:
1. into the next ChannelAffine that alone reads it: s2 * (s1 x + t1) + t2;
2. into the Conv/Linear that produces its input (alone, no fused clamp):
   W' = W * s per output channel, b' = b * s + t (as BatchNorm folding, HAWQ-V3 App. D);
3. at the graph input (the input normalisation): kept, and lowering folds it into
   `QuantizeInput`'s float step (see `is_input_affine`);
4. otherwise kept, and lowered to `IntAffine` (a dyadic multiplier and an offset per
   channel): DenseNet's pre-activation BatchNorms, which read a concat.
"""
import numpy as np


def foldable_layer(graph, t):
    """The Conv/Linear producing t if an affine map of t can be folded into it, else None."""
    prod = graph.producer(t)
    if prod is None or prod.op not in ("Conv", "Linear") or graph.use_count(t) != 1 \
            or prod.attrs.get("act_min") is not None or prod.attrs.get("act_max") is not None:
        return None
    return prod


def fold_into_layer(graph, prod, scale, shift):
    """W' = W * scale per output channel, b' = b * scale + shift, in float64; the folded
    constants are new (the originals may be shared with other layers)."""
    w = graph.constants[prod.inputs[1]].astype(np.float64)
    b = (graph.constants[prod.inputs[2]].astype(np.float64)
         if len(prod.inputs) > 2 and prod.inputs[2] else np.zeros(w.shape[0]))
    w = w * np.asarray(scale, np.float64).reshape((-1,) + (1,) * (w.ndim - 1))
    b = b * scale + shift
    prod.inputs = [prod.inputs[0],
                   graph.add_constant(f"{prod.name}.weight_folded", w.astype(np.float32)),
                   graph.add_constant(f"{prod.name}.bias_folded", b.astype(np.float32))]


def is_input_affine(graph, node) -> bool:
    """A ChannelAffine that is the only reader of a 4-D graph input: the input
    normalisation, which lowering folds into QuantizeInput."""
    return (node.op == "ChannelAffine" and node.inputs[0] in graph.inputs
            and graph.use_count(node.inputs[0]) == 1 and node.output not in graph.outputs
            and node.attrs.get("act_min") is None and node.attrs.get("act_max") is None)


def _params(graph, node):
    c = graph.values[node.inputs[0]].shape[1]
    s, t = (np.broadcast_to(graph.constants[i].astype(np.float64), (c,)) for i in node.inputs[1:3])
    return s, t


def fold_affine(graph):
    for node in [n for n in graph.nodes if n.op == "ChannelAffine"]:
        scale, shift = _params(graph, node)
        prev = graph.producer(node.inputs[0])
        if prev is not None and prev.op == "ChannelAffine" and graph.use_count(prev.output) == 1:
            s1, t1 = _params(graph, prev)
            scale, shift = scale * s1, scale * t1 + shift
            node.inputs[0] = prev.inputs[0]
            graph.remove_node(prev)
            node.inputs[1:3] = [graph.add_constant(f"{node.name}.scale", scale.astype(np.float32)),
                                graph.add_constant(f"{node.name}.shift", shift.astype(np.float32))]
        layer = foldable_layer(graph, node.inputs[0])
        if layer is not None:
            fold_into_layer(graph, layer, scale, shift)
            graph.remove_node(node)
            graph.replace_uses(node.output, layer.output)
    graph.prune()
    return graph
