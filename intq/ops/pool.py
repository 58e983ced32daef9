"""MaxPool, AveragePool (count_include_pad both ways, ceil_mode) and GlobalAveragePool.

GlobalAveragePool carries `keepdims`: ONNX ReduceMean over H and W imports as it, so a
classifier head has one pooling op whatever the exporter wrote.
"""
import numpy as np

from .base import OpSpec, require_rank
from . import contract as k
from .window import spatial_output, windows


def _pool_infer(node, ins):
    require_rank(ins[0], 4)
    a = node.attrs
    n, c, h, w = ins[0].shape
    ho, wo = spatial_output((h, w), a["kernel_shape"], a["strides"], a["pads"],
                            a.get("dilations", (1, 1)), a.get("ceil_mode", 0))
    return [((n, c, ho, wo), ins[0].dtype)]


def kernel_window(node, g, p):
    """The precheck of a pool: its pads within the input and its kernel window."""
    k.window(p, g, node, node.attrs["kernel_shape"])


class MaxPool(OpSpec):
    name = "MaxPool"
    integer_graph = True
    attrs = k.POOL
    optional = {"dilations": k.PAIR, "ceil_mode": k.flag}
    tags = frozenset({"windowed", "keeps_qparams"})

    precheck = staticmethod(kernel_window)

    @staticmethod
    def infer(node, ins, graph):
        return _pool_infer(node, ins)

    @staticmethod
    def run(attrs, x):
        lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        v = windows(x, attrs["kernel_shape"], attrs["strides"], attrs["pads"],
                    attrs.get("dilations", (1, 1)), attrs.get("ceil_mode", 0), pad_value=lowest)
        return (v.max(axis=(4, 5)),)


class AveragePool(OpSpec):
    name = "AveragePool"
    attrs = {**k.POOL, "count_include_pad": k.flag}
    optional = {"ceil_mode": k.flag}
    tags = frozenset({"windowed"})

    precheck = staticmethod(kernel_window)

    @staticmethod
    def infer(node, ins, graph):
        return _pool_infer(node, ins)

    @staticmethod
    def divisor(attrs, hw):
        """Per-output-position count of the cells averaged (shape Ho x Wo)."""
        ones = np.ones((1, 1) + tuple(hw), dtype=np.int64)
        v = windows(ones, attrs["kernel_shape"], attrs["strides"], attrs["pads"], (1, 1),
                    attrs.get("ceil_mode", 0), pad_value=int(attrs["count_include_pad"]),
                    beyond_value=0)
        return v.sum(axis=(4, 5))[0, 0]

    @staticmethod
    def run(attrs, x):
        v = windows(x, attrs["kernel_shape"], attrs["strides"], attrs["pads"], (1, 1),
                    attrs.get("ceil_mode", 0), pad_value=0)
        div = AveragePool.divisor(attrs, x.shape[2:])
        return ((v.sum(axis=(4, 5)) / div).astype(x.dtype),)


class GlobalAveragePool(OpSpec):
    name = "GlobalAveragePool"
    optional = {"keepdims": k.flag}

    @staticmethod
    def infer(node, ins, graph):
        require_rank(ins[0], 4)
        n, c = ins[0].shape[:2]
        shape = (n, c, 1, 1) if node.attrs.get("keepdims", 1) else (n, c)
        return [(shape, ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        return (x.mean(axis=(2, 3), keepdims=bool(attrs.get("keepdims", 1))).astype(x.dtype),)


SPECS = [MaxPool, AveragePool, GlobalAveragePool]
