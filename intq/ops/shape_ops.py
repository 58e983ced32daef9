"""Data movement: Flatten, Reshape (constant target shape), Transpose, Squeeze, Unsqueeze,
Slice and Split off the batch axis, and the no-ops Identity and Dropout (nearest
resize, a gather too, lives with linear resize in `ops.resize`). None of them
computes, so on integers they run unchanged and keep their input's quantization.

Reshape keeps ONNX's conventions: 0 copies the input dimension, -1 is inferred. The
dynamic batch (None) may only be carried by a 0 or absorbed by a -1.
"""
import numpy as np

from ..errors import IntqError
from . import contract as k
from .base import OpSpec, numel, same_shape


class Flatten(OpSpec):
    name = "Flatten"
    integer_graph = True
    optional = {"axis": k.AXIS}
    tags = frozenset({"movement", "alias", "keeps_qparams"})

    @staticmethod
    def precheck(node, g, p):
        rank = len(g.values[node.inputs[0]].shape)
        axis = node.attrs.get("axis", 1)
        if not (-rank <= axis < rank and axis % rank):
            p.fail(f"{k.where(node)}: axis {axis} must split rank {rank} after the batch")

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
    integer_graph = True
    attrs = {"shape": k.integers(None, -1, k.MAX_DIM)}
    tags = frozenset({"movement", "alias", "keeps_qparams"})

    @staticmethod
    def infer(node, ins, graph):
        return [(reshape_target(ins[0].shape, node.attrs["shape"]), ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        target = [x.shape[i] if t == 0 else t for i, t in enumerate(attrs["shape"])]
        return (x.reshape(target),)


def _off_batch(axes, rank, what):
    axes = [int(a) % rank for a in axes]
    if 0 in axes:
        raise IntqError(f"{what} along the batch axis is not supported")
    return axes


class Transpose(OpSpec):
    name = "Transpose"
    integer_graph = True
    tags = frozenset({"movement", "keeps_qparams"})
    attrs = {"perm": k.integers(None, 0, 7)}

    @staticmethod
    def infer(node, ins, graph):
        perm = list(node.attrs["perm"])
        if sorted(perm) != list(range(len(ins[0].shape))) or perm[0] != 0:
            raise IntqError(f"Transpose perm {perm} must keep the batch axis first")
        return [(tuple(ins[0].shape[p] for p in perm), ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        return (np.ascontiguousarray(x.transpose(attrs["perm"])),)


class Squeeze(OpSpec):
    name = "Squeeze"
    integer_graph = True
    tags = frozenset({"movement", "keeps_qparams"})
    attrs = {"axes": k.AXES}

    @staticmethod
    def infer(node, ins, graph):
        shape = ins[0].shape
        axes = _off_batch(node.attrs["axes"], len(shape), "Squeeze")
        if any(shape[a] != 1 for a in axes):
            raise IntqError(f"cannot squeeze axes {axes} of shape {shape}")
        return [(tuple(d for i, d in enumerate(shape) if i not in axes), ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        return (np.squeeze(x, axis=tuple(int(a) % x.ndim for a in attrs["axes"])),)


class Unsqueeze(OpSpec):
    name = "Unsqueeze"
    integer_graph = True
    tags = frozenset({"movement", "keeps_qparams"})
    attrs = {"axes": k.AXES}

    @staticmethod
    def infer(node, ins, graph):
        rank = len(ins[0].shape) + len(node.attrs["axes"])
        axes = _off_batch(node.attrs["axes"], rank, "Unsqueeze")
        it = iter(ins[0].shape)
        return [(tuple(1 if i in axes else next(it) for i in range(rank)), ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        rank = x.ndim + len(attrs["axes"])
        return (np.expand_dims(x, tuple(sorted(int(a) % rank for a in attrs["axes"]))),)


class Slice(OpSpec):
    """Constant starts, ends, axes and steps (ONNX clamping rules), off the batch axis."""

    name = "Slice"
    integer_graph = True
    tags = frozenset({"movement", "keeps_qparams"})
    attrs = {"axes": k.AXES, "starts": k.integers(None, -k.MAX_DIM - 1, k.MAX_DIM + 1),
             "ends": k.integers(None, -k.MAX_DIM - 1, k.MAX_DIM + 1), "steps": k.steps}

    @staticmethod
    def _slices(attrs, shape):
        out = [slice(None)] * len(shape)
        for a, s, e, st in zip(attrs["axes"], attrs["starts"], attrs["ends"], attrs["steps"]):
            out[int(a) % len(shape)] = slice(int(s), int(e), int(st))
        return tuple(out)

    @staticmethod
    def infer(node, ins, graph):
        shape = ins[0].shape
        _off_batch(node.attrs["axes"], len(shape), "Slice")
        sl = Slice._slices(node.attrs, shape)
        return [(tuple(d if d is None else len(range(d)[sl[i]]) for i, d in enumerate(shape)),
                 ins[0].dtype)]

    @staticmethod
    def run(attrs, x):
        return (x[Slice._slices(attrs, x.shape)],)


class Split(OpSpec):
    """Split along `axis` into pieces of the sizes in `split`."""

    name = "Split"
    integer_graph = True
    tags = frozenset({"movement", "keeps_qparams"})
    attrs = {"axis": k.AXIS, "split": k.integers(None, 1, k.MAX_DIM)}
    outputs = (1, 1 << 16)

    @staticmethod
    def infer(node, ins, graph):
        shape = ins[0].shape
        axis, = _off_batch([node.attrs["axis"]], len(shape), "Split")
        sizes = node.attrs["split"]
        if sum(sizes) != shape[axis]:
            raise IntqError(f"split sizes {sizes} do not add up to {shape[axis]}")
        return [(shape[:axis] + (k,) + shape[axis + 1:], ins[0].dtype) for k in sizes]

    @staticmethod
    def run(attrs, x):
        cuts = np.cumsum(attrs["split"])[:-1]
        return tuple(np.split(x, cuts, axis=attrs["axis"]))


class Identity(OpSpec):
    name = "Identity"

    infer = staticmethod(same_shape)

    @staticmethod
    def run(attrs, x):
        return (x,)


class Dropout(Identity):
    """Inference-mode dropout: the identity."""

    name = "Dropout"


SPECS = [Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Slice, Split, Identity, Dropout]
