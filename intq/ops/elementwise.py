"""Add (n-ary, numpy broadcasting, optional fused clamp), Mul, Sub, Div and Concat.

ONNX Sum imports as an n-ary Add. A Mul/Add/Sub/Div with one per-channel constant operand
becomes a ChannelAffine (`passes.canonicalize_affine`); an Add or Sub of tensors, or with a
constant of another shape (an anchor grid), is an IntAdd with per-branch signs and an
offset; a Mul of two tensors (the SE gate) is lowered to an integer product. Residual adds and Inception concats are what the integer
lowering later rescales branch by branch (HAWQ-V3 eq. 7 and 18).
"""
from functools import reduce

from ..errors import IntqError
from . import contract as k
from .base import OpSpec, apply_activation, broadcast_shapes


class Add(OpSpec):
    name = "Add"
    optional = k.ACT
    arity = (2, 1 << 16)
    tags = frozenset({"join"})

    @staticmethod
    def infer(node, ins, graph):
        return [(broadcast_shapes(*[v.shape for v in ins]), ins[0].dtype)]

    @staticmethod
    def run(attrs, *xs):
        y = reduce(lambda a, b: a + b, xs)
        return (apply_activation(y.astype(xs[0].dtype, copy=False), attrs),)


def _binary(fn):
    class Binary(OpSpec):
        @staticmethod
        def infer(node, ins, graph):
            return [(broadcast_shapes(*[v.shape for v in ins]), ins[0].dtype)]

        @staticmethod
        def run(attrs, a, b):
            return (fn(a, b).astype(a.dtype, copy=False),)
    return Binary


class Mul(_binary(lambda a, b: a * b)):
    name = "Mul"
    arity = (2, 2)


class Sub(_binary(lambda a, b: a - b)):
    """a - b: of two tensors, or of a tensor and a constant of any broadcastable shape
    (one per channel or a scalar becomes a ChannelAffine first); lowered as an IntAdd
    whose second branch has sign -1 (`quant.lower.lower_join`)."""

    name = "Sub"
    arity = (2, 2)
    tags = frozenset({"join"})


class Div(_binary(lambda a, b: a / b)):
    name = "Div"
    arity = (2, 2)


class Concat(OpSpec):
    name = "Concat"
    attrs = {"axis": k.AXIS}
    arity = (1, 1 << 16)
    tags = frozenset({"join"})

    @staticmethod
    def precheck(node, g, p):
        k.axis_within_rank(p, g, node)

    @staticmethod
    def infer(node, ins, graph):
        rank = len(ins[0].shape)
        axis = node.attrs["axis"] % rank
        if axis == 0:
            raise IntqError("concatenation along the batch axis is not supported")
        out = list(ins[0].shape)
        for v in ins[1:]:
            if len(v.shape) != rank or any(a != b for i, (a, b) in enumerate(zip(v.shape, out))
                                           if i != axis):
                raise IntqError(f"concat inputs {[v.shape for v in ins]} disagree off axis {axis}")
            out[axis] += v.shape[axis]
        return [(tuple(out), ins[0].dtype)]

    @staticmethod
    def run(attrs, *xs):
        import numpy as np
        return (np.concatenate(xs, axis=attrs["axis"]),)


SPECS = [Add, Mul, Sub, Div, Concat]
