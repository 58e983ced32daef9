"""Relu and Clip (ReLU6 is Clip(0, 6)): elementwise clamps.

Both are fused into their producer by `passes.fuse_activation` where possible.
"""
import numpy as np

from . import contract as k
from .base import OpSpec, same_shape


class Relu(OpSpec):
    name = "Relu"
    tags = frozenset({"keeps_qparams"})

    infer = staticmethod(same_shape)

    @staticmethod
    def run(attrs, x):
        return (np.maximum(x, 0).astype(x.dtype),)


class Clip(OpSpec):
    """Clamp to [min, max]; a bound of None is unbounded."""

    name = "Clip"
    optional = {"min": k.optional_finite, "max": k.optional_finite}
    tags = frozenset({"keeps_qparams"})

    infer = staticmethod(same_shape)

    @staticmethod
    def run(attrs, x):
        lo, hi = attrs.get("min"), attrs.get("max")
        return (np.clip(x, -np.inf if lo is None else lo,
                        np.inf if hi is None else hi).astype(x.dtype),)


SPECS = [Relu, Clip]
