"""ChannelAffine: y = x * scale[c] + shift[c] along axis 1 (a per-channel or scalar affine).

Constant Mul/Add/Sub/Div and BatchNorms with no layer to fold into become this op
(`passes.canonicalize_affine`); `passes.fold_affine` folds it into the Conv/Linear that
produces its input, or at the graph input into `QuantizeInput`; what remains is lowered to
`IntAffine`. Inputs: x, scale (C,), shift (C,); a fused ReLU/Clip leaves act_min/act_max.
"""
import numpy as np

from ..errors import IntqError
from . import contract as k
from .base import OpSpec, apply_activation


def channel_view(a, ndim):
    """A (C,) array shaped to broadcast along axis 1 of an ndim-D tensor."""
    return np.asarray(a).reshape((1, -1) + (1,) * (ndim - 2))


class ChannelAffine(OpSpec):
    name = "ChannelAffine"
    optional = k.ACT
    arity = (3, 3)

    @staticmethod
    def infer(node, ins, graph):
        x, s, t = ins
        if len(x.shape) < 2 or s.shape != t.shape or s.shape not in ((x.shape[1],), (1,)):
            raise IntqError(f"per-channel affine needs (C,) scale and shift for input "
                            f"{x.shape}, got {s.shape} and {t.shape}")
        return [(x.shape, x.dtype)]

    @staticmethod
    def run(attrs, x, scale, shift):
        nd = x.ndim
        y = x.astype(np.float64) * channel_view(scale, nd) + channel_view(shift, nd)
        return (apply_activation(y.astype(x.dtype), attrs),)

    @staticmethod
    def params(node, graph):
        return 2 * graph.values[node.inputs[1]].shape[0]


SPECS = [ChannelAffine]
