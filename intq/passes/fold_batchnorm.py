"""Fold inference BatchNormalization into the Conv or Linear that produces its input.

With s = gamma / sqrt(var + eps) per output channel: W' = W * s, b' = (b - mean) * s + beta
(HAWQ-V3 App. D). Folding happens in float64 so the folded layer matches the unfolded pair
to float32 rounding. A BatchNorm with no such producer (DenseNet's pre-activation BN after
a concat) becomes a ChannelAffine y = x * s + (beta - mean * s), which `fold_affine` folds
where it can and lowering otherwise turns into `IntAffine`: no BatchNorm op of its own.
"""
import numpy as np

from ..errors import IntqError
from .fold_affine import fold_into_layer, foldable_layer


def fold_batchnorm(graph):
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        gamma, beta, mean, var = (graph.constants[i].astype(np.float64) for i in bn.inputs[1:5])
        if not np.all(var + bn.attrs["epsilon"] > 0):  # NaN fails too
            raise IntqError(f"BatchNormalization {bn.name}: variance + epsilon must be positive")
        scale = gamma / np.sqrt(var + bn.attrs["epsilon"])
        shift = beta - mean * scale
        prod = foldable_layer(graph, bn.inputs[0])
        if prod is None:
            bn.op, bn.attrs = "ChannelAffine", {}
            bn.inputs = [bn.inputs[0], graph.add_constant(f"{bn.name}.scale", scale.astype(np.float32)),
                         graph.add_constant(f"{bn.name}.shift", shift.astype(np.float32))]
            continue
        # (b - mean) * s + beta = b * s + (beta - mean * s)
        fold_into_layer(graph, prod, scale, shift)
        graph.remove_node(bn)
        graph.replace_uses(bn.output, prod.output)
    graph.prune()
    return graph
