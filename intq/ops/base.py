"""The `OpSpec` base class every op module subclasses, and shared shape helpers."""
from __future__ import annotations

import math

import numpy as np

from ..errors import IntqError


class OpSpec:
    """What one op means: shape rule, float numpy semantics, cost. Stateless."""

    name = ""

    @staticmethod
    def infer(node, ins, graph):
        """Return [(shape, dtype)] per output; raise IntqError on bad inputs."""
        raise NotImplementedError

    @staticmethod
    def run(attrs, *xs):
        """Float semantics: numpy arrays in, a tuple of numpy arrays out."""
        raise NotImplementedError

    @staticmethod
    def macs(node, graph) -> int:
        """Multiply-accumulates per sample (batch 1)."""
        return 0

    @staticmethod
    def params(node, graph) -> int:
        """Learned parameters (weights and biases) this node owns."""
        return 0


def same_shape(node, ins, graph):
    """The shape rule of elementwise ops: output shape and dtype are the first input's."""
    return [(ins[0].shape, ins[0].dtype)]


def require_rank(value, rank: int, what: str = "input") -> None:
    if value is None or len(value.shape) != rank:
        got = None if value is None else len(value.shape)
        raise IntqError(f"{what} must have rank {rank}, got rank {got}")


def numel(shape) -> int:
    # Python integers: an int64 product wraps around, and a crafted shape can make it wrap
    # onto the right count.
    return math.prod(int(d) for d in shape)


def broadcast_shapes(*shapes):
    """numpy broadcasting on static shapes; None (dynamic batch) broadcasts like a size > 1."""
    rank = max(len(s) for s in shapes)
    out = []
    for dims in zip(*[(1,) * (rank - len(s)) + tuple(s) for s in shapes]):
        if any(d is None for d in dims):
            if any(d not in (None, 1) for d in dims):
                raise IntqError(f"cannot broadcast shapes {shapes}")
            out.append(None)
            continue
        big = {d for d in dims if d != 1}
        if len(big) > 1:
            raise IntqError(f"cannot broadcast shapes {shapes}")
        out.append(big.pop() if big else 1)
    return tuple(out)


def apply_activation(y, attrs):
    """The clamp a fused ReLU/ReLU6/Clip leaves on its producer (`act_min`, `act_max`)."""
    lo, hi = attrs.get("act_min"), attrs.get("act_max")
    if lo is None and hi is None:
        return y
    return np.clip(y, -np.inf if lo is None else lo, np.inf if hi is None else hi).astype(y.dtype)
