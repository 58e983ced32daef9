"""BatchNormalization (inference form). It never reaches an executed graph:
`passes.fold_batchnorm` folds it into the Conv or Linear before it."""
import numpy as np

from ..errors import IntqError
from . import contract as k
from .base import OpSpec, same_shape


class BatchNormalization(OpSpec):
    name = "BatchNormalization"
    attrs = {"epsilon": k.finite}
    arity = (5, 5)

    @staticmethod
    def infer(node, ins, graph):
        # Folding broadcasts the four parameters per channel: each must be (C,).
        c = ins[0].shape[1] if len(ins[0].shape) > 1 else None
        for v in ins[1:5]:
            if v is None or tuple(v.shape) != (c,):
                raise IntqError(f"parameters must have shape ({c},), got {None if v is None else v.shape}")
        return same_shape(node, ins, graph)

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
