"""Flatten, Reshape (constant target shape), and the no-ops Identity and Dropout.

Reshape keeps ONNX's conventions: 0 copies the input dimension, -1 is inferred. The
dynamic batch (None) may only be carried by a 0 or absorbed by a -1.
"""
import numpy as np

from ..errors import IntqError
from .base import OpSpec, numel, same_shape


class Flatten(OpSpec):
    name = "Flatten"

    @staticmethod
    def infer(node, ins, graph):
        shape = ins[0].shape
        axis = node.attrs.get("axis", 1) % max(len(shape), 1) if len(shape) else 0
        head, tail = shape[:axis], shape[axis:]
        lead = None if None in head else numel(head)
        if None in tail:
            raise IntqError("cannot flatten the dynamic batch into the features")
        return [((lead, numel(tail)), ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        axis = attrs.get("axis", 1)
        return (x.reshape(int(np.prod(x.shape[:axis])), -1),)


def reshape_target(in_shape, target):
    """Static output shape of Reshape(in_shape -> target) under ONNX rules, batch-aware."""
    if any(t == 0 and i >= len(in_shape) for i, t in enumerate(target)):
        raise IntqError(f"reshape target {target} copies a dimension {in_shape} does not have")
    out = [in_shape[i] if t == 0 else t for i, t in enumerate(target)]
    if out.count(-1) > 1:
        raise IntqError(f"reshape target {target} has more than one -1")
    known_in = numel([d for d in in_shape if d is not None])
    known_out = numel([d for d in out if d not in (-1, None)])
    if -1 in out:
        if None in in_shape and None not in out:
            if known_in != known_out:
                raise IntqError(f"reshape {in_shape} -> {target} would mix the batch into features")
            out[out.index(-1)] = None
        else:
            if known_out == 0 or known_in % known_out:
                raise IntqError(f"cannot reshape {in_shape} to {target}")
            out[out.index(-1)] = known_in // known_out
    elif (None in in_shape) != (None in out) or known_in != known_out:
        raise IntqError(f"cannot reshape {in_shape} to {target}")
    return tuple(out)


class Reshape(OpSpec):
    name = "Reshape"

    @staticmethod
    def infer(node, ins, graph):
        return [(reshape_target(ins[0].shape, node.attrs["shape"]), ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        target = [x.shape[i] if t == 0 else t for i, t in enumerate(attrs["shape"])]
        return (x.reshape(target),)


class Identity(OpSpec):
    name = "Identity"

    infer = staticmethod(same_shape)

    @staticmethod
    def run(attrs, x):
        return (x,)


class Dropout(Identity):
    """Inference-mode dropout: the identity."""

    name = "Dropout"


SPECS = [Flatten, Reshape, Identity, Dropout]
