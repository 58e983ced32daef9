"""ChannelAffine: y = x * scale[c] + shift[c] along axis 1 (a per-channel or scalar affine).

Constant Mul/Add/Sub/Div and BatchNorms with no layer to fold into become this op
(`passes.canonicalize_affine`); `passes.fold_affine` folds it into the Conv/Linear that
produces its input, or at the graph input into `QuantizeInput`, and otherwise rewrites it as
a depthwise 1x1 convolution (rank 4) or a diagonal Linear (rank 2), so it never reaches the
integer lowering. Inputs: x, scale (C,), shift (C,).
"""
import numpy as np

from ..errors import IntqError
from .base import OpSpec


def channel_view(a, ndim):
    """A (C,) array shaped to broadcast along axis 1 of an ndim-D tensor."""
    return np.asarray(a).reshape((1, -1) + (1,) * (ndim - 2))


class ChannelAffine(OpSpec):
    name = "ChannelAffine"

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
        return (y.astype(x.dtype),)

    @staticmethod
    def params(node, graph):
        return 2 * graph.values[node.inputs[1]].shape[0]


SPECS = [ChannelAffine]
