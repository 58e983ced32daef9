"""BatchNormalization (inference form). It never reaches an executed graph:
`passes.fold_batchnorm` folds it into the Conv or Linear before it."""
import numpy as np

from .base import OpSpec, same_shape


class BatchNormalization(OpSpec):
    name = "BatchNormalization"

    infer = staticmethod(same_shape)

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
