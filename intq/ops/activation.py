"""Relu and Clip (ReLU6 is Clip(0, 6)): elementwise clamps.

Both are fused into their producer by `passes.fuse_activation` where possible.
"""
import numpy as np

from .base import OpSpec


class Relu(OpSpec):
    name = "Relu"

    @staticmethod
    def infer(node, ins, graph):
        return [(ins[0].shape, ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        return (np.maximum(x, 0).astype(x.dtype),)


class Clip(OpSpec):
    """Clamp to [min, max]; a bound of None is unbounded."""

    name = "Clip"

    @staticmethod
    def infer(node, ins, graph):
        return [(ins[0].shape, ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        lo, hi = attrs.get("min"), attrs.get("max")
        return (np.clip(x, -np.inf if lo is None else lo,
                        np.inf if hi is None else hi).astype(x.dtype),)


SPECS = [Relu, Clip]
