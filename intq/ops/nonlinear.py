"""Elementwise nonlinearities of one tensor: Sigmoid, Tanh, HardSigmoid, HardSwish, Swish
(SiLU, x * sigmoid(x)), LeakyRelu and PRelu.

Each op's `fn` is its float function; the float `run` applies it and integer lowering
evaluates it once per possible input integer to build a lookup table (LeakyRelu and PRelu
get an exact dyadic form instead). `passes.fuse_gated_activation` turns x * sigmoid(x) and
x * hardsigmoid(x) into Swish and HardSwish so each is one table.
"""
import numpy as np

from ..dyadic import requantize
from ..errors import IntqError
from . import contract as k
from .base import OpSpec, same_shape
from .integer import Requantize, per_channel


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))   # no overflow warning for large |x|


class Elementwise(OpSpec):
    """An elementwise function of one tensor, attributes under their ONNX names."""

    infer = staticmethod(same_shape)

    @staticmethod
    def fn(attrs, x):
        raise NotImplementedError

    @classmethod
    def run(cls, attrs, x):
        return (cls.fn(attrs, x.astype(np.float64)).astype(x.dtype),)


class Sigmoid(Elementwise):
    name = "Sigmoid"
    onnx_ops = ("Sigmoid",)

    @staticmethod
    def fn(attrs, x):
        return _sigmoid(x)


class Tanh(Elementwise):
    name = "Tanh"
    onnx_ops = ("Tanh",)

    @staticmethod
    def fn(attrs, x):
        return np.tanh(x)


class HardSigmoid(Elementwise):
    """max(0, min(1, alpha * x + beta)); ONNX defaults alpha 0.2, beta 0.5 (torch: 1/6, 1/2)."""

    name = "HardSigmoid"
    onnx_ops = ("HardSigmoid",)
    onnx_attrs = {"alpha": 0.2, "beta": 0.5}
    optional = {"alpha": k.finite, "beta": k.finite}

    @staticmethod
    def fn(attrs, x):
        return np.clip(attrs.get("alpha", 0.2) * x + attrs.get("beta", 0.5), 0.0, 1.0)


class HardSwish(Elementwise):
    """x * max(0, min(1, alpha * x + beta)), alpha 1/6 and beta 1/2 for ONNX HardSwish."""

    name = "HardSwish"
    onnx_ops = ("HardSwish",)
    optional = {"alpha": k.finite, "beta": k.finite}

    @staticmethod
    def fn(attrs, x):
        return x * np.clip(attrs.get("alpha", 1 / 6) * x + attrs.get("beta", 0.5), 0.0, 1.0)


class Swish(Elementwise):
    """SiLU: x * sigmoid(x)."""

    name = "Swish"

    @staticmethod
    def fn(attrs, x):
        return x * _sigmoid(x)


class LeakyRelu(Elementwise):
    name = "LeakyRelu"
    onnx_ops = ("LeakyRelu",)
    onnx_attrs = {"alpha": 0.01}
    optional = {"alpha": k.finite}

    @staticmethod
    def fn(attrs, x):
        return np.where(x >= 0, x, attrs.get("alpha", 0.01) * x)


class PRelu(OpSpec):
    """x for x >= 0, slope[c] * x otherwise; the slope is a constant per channel or scalar."""

    name = "PRelu"
    arity = (2, 2)

    @staticmethod
    def infer(node, ins, graph):
        x, s = ins
        if s.shape not in ((x.shape[1],), (1,)):
            raise IntqError(f"PRelu slope must be one per channel or one scalar, got {s.shape}")
        return [(x.shape, x.dtype)]

    @staticmethod
    def run(attrs, x, slope):
        s = np.asarray(slope).reshape((1, -1) + (1,) * (x.ndim - 2))
        return (np.where(x >= 0, x, x * s).astype(x.dtype),)

    @staticmethod
    def params(node, graph):
        return graph.values[node.inputs[1]].shape[0]


class Softmax(OpSpec):
    """exp(x - max) / sum exp(x - max) over `axes` (opset < 13: every axis from `axis` on)."""

    name = "Softmax"
    attrs = {"axes": k.AXES}

    infer = staticmethod(same_shape)

    @staticmethod
    def run(attrs, x):
        axes = tuple(attrs["axes"])
        e = np.exp(x.astype(np.float64) - x.max(axis=axes, keepdims=True))
        return ((e / e.sum(axis=axes, keepdims=True)).astype(x.dtype),)


LOOKUP_OPS = {s.name: s for s in (Sigmoid, Tanh, HardSigmoid, HardSwish, Swish)}
class Abs(Elementwise):
    """|x| (ONNX Abs), lowered to `IntAbs`: exact up to its one rounding."""

    name = "Abs"
    onnx_ops = ("Abs",)

    @staticmethod
    def fn(attrs, x):
        return np.abs(x)


class IntAbs(Requantize):
    """y = clamp(DN_b,c(|x - in_zero_point|) + out_zero_point, lo, hi); b, c one value or
    one per channel (S_in / S_out). One rounding, so |error| <= 1/2 output step. Its
    contract (attributes, inputs, checks) is Requantize's."""

    name = "IntAbs"
    tags = frozenset({"channelwise"})

    @staticmethod
    def run(attrs, x, b, c):
        nd = x.ndim
        return (requantize(np.abs(x - attrs["in_zero_point"]), per_channel(b, nd), per_channel(c, nd),
                           attrs["lo"], attrs["hi"], attrs["out_zero_point"]),)


SPECS = [Sigmoid, Tanh, HardSigmoid, HardSwish, Swish, LeakyRelu, PRelu, Softmax, Abs, IntAbs]
