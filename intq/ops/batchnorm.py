"""BatchNormalization (inference form). It never reaches an executed graph:
`passes.fold_batchnorm` folds it into the Conv or Linear before it."""
import numpy as np

from .base import OpSpec


class BatchNormalization(OpSpec):
    name = "BatchNormalization"

    @staticmethod
    def infer(node, ins, graph):
        return [(ins[0].shape, ins[0].dtype)]

    @staticmethod
    def run(attrs, x, scale, bias, mean, var):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        inv = scale / np.sqrt(var + attrs["epsilon"])
        y = (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)
        return (y.astype(x.dtype),)

    @staticmethod
    def params(node, graph):
        return sum(int(np.prod(graph.values[i].shape)) for i in node.inputs[1:])


SPECS = [BatchNormalization]
