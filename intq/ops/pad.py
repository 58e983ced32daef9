"""Pad with constant zero on the spatial axes (pads as t, l, b, r). Usually folded into
the next Conv or pool by `passes.fold_pad`; the executors run it where it cannot be."""
import numpy as np

from . import contract as k
from .base import OpSpec, require_rank


class Pad(OpSpec):
    name = "Pad"
    attrs = {"pads": k.PADS}
    tags = frozenset({"keeps_qparams"})

    @staticmethod
    def precheck(node, g, p):
        k.window(p, g, node, (1, 1))

    @staticmethod
    def infer(node, ins, graph):
        require_rank(ins[0], 4)
        n, c, h, w = ins[0].shape
        t, l, b, r = node.attrs["pads"]
        return [((n, c, h + t + b, w + l + r), ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        t, l, b, r = attrs["pads"]
        return (np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=0),)


SPECS = [Pad]
