"""Linear (the canonical classifier op: y = x W^T + b, with an optional fused clamp), and
the ONNX forms it is canonicalised from: Gemm and MatMul (+ Add)."""
import numpy as np

from ..errors import IntqError
from . import contract as k
from .base import OpSpec, apply_activation, require_rank


def _weight_macs(node, graph):
    """One MAC per weight element and sample, whichever way round the weight is stored."""
    return int(np.prod(graph.values[node.inputs[1]].shape))


def _weight_and_bias_params(node, graph):
    return sum(int(np.prod(graph.values[i].shape)) for i in node.inputs[1:] if i)


class Linear(OpSpec):
    """x (N, K), weight (M, K), bias (M,)."""

    name = "Linear"
    optional = k.ACT
    arity = (2, 3)
    optional_inputs = (2,)
    tags = frozenset({"layer"})

    @staticmethod
    def infer(node, ins, graph):
        require_rank(ins[0], 2)
        require_rank(ins[1], 2, "weight")
        m, k = ins[1].shape
        if ins[0].shape[1] != k:
            raise IntqError(f"input features {ins[0].shape[1]} != weight features {k}")
        return [((ins[0].shape[0], m), ins[0].dtype)]

    @staticmethod
    def run(attrs, x, w, b=None):
        y = x @ w.T
        if b is not None:
            y = y + b
        return (apply_activation(y.astype(x.dtype, copy=False), attrs),)

    macs = staticmethod(_weight_macs)
    params = staticmethod(_weight_and_bias_params)


class Gemm(OpSpec):
    """ONNX Gemm: alpha * A' B' + beta * C."""

    name = "Gemm"
    optional = {"alpha": k.finite, "beta": k.finite, "transA": k.flag, "transB": k.flag}
    arity = (2, 3)
    optional_inputs = (2,)

    @staticmethod
    def infer(node, ins, graph):
        a, b = ins[0], ins[1]
        require_rank(a, 2)
        require_rank(b, 2, "B")
        at, bt = node.attrs.get("transA", 0), node.attrs.get("transB", 0)
        m = a.shape[1] if at else a.shape[0]
        ka = a.shape[0] if at else a.shape[1]
        kb, n = (b.shape[1], b.shape[0]) if bt else b.shape
        if ka != kb:
            raise IntqError(f"Gemm inner dimensions {ka} and {kb} differ")
        return [((m, n), a.dtype)]

    @staticmethod
    def run(attrs, a, b, c=None):
        a = a.T if attrs.get("transA", 0) else a
        b = b.T if attrs.get("transB", 0) else b
        y = attrs.get("alpha", 1.0) * (a @ b)
        if c is not None:
            y = y + attrs.get("beta", 1.0) * c
        return (y.astype(a.dtype),)

    macs = staticmethod(_weight_macs)
    params = staticmethod(_weight_and_bias_params)


class MatMul(OpSpec):
    name = "MatMul"
    arity = (2, 2)

    @staticmethod
    def infer(node, ins, graph):
        a, b = ins[0].shape, ins[1].shape
        if len(a) != 2 or len(b) != 2 or a[1] != b[0]:
            raise IntqError(f"only 2-D MatMul is supported, got {a} x {b}")
        return [((a[0], b[1]), ins[0].dtype)]

    @staticmethod
    def run(attrs, a, b):
        return ((a @ b).astype(a.dtype),)

    macs = staticmethod(_weight_macs)
    params = staticmethod(_weight_and_bias_params)


SPECS = [Linear, Gemm, MatMul]
