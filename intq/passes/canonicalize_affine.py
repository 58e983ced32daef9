"""Turn constant Mul/Add/Sub/Div (scalar or per channel) into ChannelAffine nodes.

x * a, a * x, x / a, x + a, a + x, x - a and a - x with a constant `a` that broadcasts as a
scalar or along the channel axis only (shape (C,1,1) against NCHW, (C,) against (N, C))
become y = x * scale + shift with (C,) scale and shift, so that `fold_affine` has one op to
fold. Other constants (per pixel, or along the batch) are left alone.
"""
import numpy as np

from ..ops.affine import ChannelAffine  # noqa: F401  (the op this pass emits)

AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def _per_channel(c, x_shape):
    """c as a (C,) float64 vector if it broadcasts per channel against x_shape, else None."""
    c = np.asarray(c, dtype=np.float64)
    if c.ndim > len(x_shape) or len(x_shape) < 2:
        return None
    full = (1,) * (len(x_shape) - c.ndim) + c.shape
    if c.size == 1:
        return np.full(x_shape[1], float(c.ravel()[0])) if x_shape[1] else None
    if all(d == 1 for i, d in enumerate(full) if i != 1) and full[1] == x_shape[1]:
        return c.reshape(-1)
    return None


def canonicalize_affine(graph):
    for node in list(graph.nodes):
        if node.op not in AFFINE_OPS or len(node.inputs) != 2:
            continue
        consts = [i for i in node.inputs if i in graph.constants]
        if len(consts) != 1:
            continue
        pos = node.inputs.index(consts[0])
        x = node.inputs[1 - pos]
        c = _per_channel(graph.constants[consts[0]], graph.values[x].shape)
        if c is None or node.attrs.get("act_min") is not None or node.attrs.get("act_max") is not None:
            continue
        ones, zeros = np.ones_like(c), np.zeros_like(c)
        if node.op == "Mul":
            scale, shift = c, zeros
        elif node.op == "Add":
            scale, shift = ones, c
        elif node.op == "Sub":
            scale, shift = (ones, -c) if pos == 1 else (-ones, c)
        elif pos == 1:   # x / c; c / x is not affine
            scale, shift = 1.0 / c, zeros
        else:
            continue
        node.op, node.attrs = "ChannelAffine", {}
        node.inputs = [x, graph.add_constant(f"{node.name}.scale", scale.astype(np.float32)),
                       graph.add_constant(f"{node.name}.shift", shift.astype(np.float32))]
    graph.prune()
    return graph
