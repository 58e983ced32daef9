"""Pad the spatial axes with a constant (pads as t, l, b, r), and optionally between
elements (`interior`: (ih, iw) values after every row and column but the last, XLA's
interior padding, which makes a transposed convolution a plain one; see the ConvTranspose
importer). A zero Pad with no interior is usually folded into the next Conv or pool by
`passes.fold_pad`; the executors run it where it cannot be."""
import numpy as np

from . import contract as k
from .base import OpSpec, require_rank


def padded_hw(h, w, pads, interior=(0, 0)):
    t, l, b, r = pads
    ih, iw = interior
    return h + (h - 1) * ih + t + b, w + (w - 1) * iw + l + r


def pad_nchw(x, pads, interior=(0, 0), value=0):
    """x (N, C, H, W) with `value` around it (pads) and between its elements (interior)."""
    n, c, h, w = x.shape
    t, l, b, r = pads
    ih, iw = interior
    out = np.full((n, c, *padded_hw(h, w, pads, interior)), value, dtype=x.dtype)
    out[:, :, t:t + (h - 1) * (ih + 1) + 1:ih + 1, l:l + (w - 1) * (iw + 1) + 1:iw + 1] = x
    return out


class Pad(OpSpec):
    name = "Pad"
    attrs = {"pads": k.PADS}
    optional = {"interior": k.integers(2, 0, k.MAX_DIM)}
    tags = frozenset({"keeps_qparams"})

    @staticmethod
    def precheck(node, g, p):
        k.window(p, g, node, (1, 1))

    @staticmethod
    def infer(node, ins, graph):
        require_rank(ins[0], 4)
        n, c, h, w = ins[0].shape
        return [((n, c, *padded_hw(h, w, node.attrs["pads"], node.attrs.get("interior", (0, 0)))),
                 ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        return (pad_nchw(x, attrs["pads"], attrs.get("interior", (0, 0))),)


SPECS = [Pad]
