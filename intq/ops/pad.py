"""Pad with constant zero on the spatial axes (pads as t, l, b, r). Usually folded into
the next Conv or pool by `passes.fold_pad`; the executors run it where it cannot be."""
import numpy as np

from .base import OpSpec, require_rank


class Pad(OpSpec):
    name = "Pad"

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
