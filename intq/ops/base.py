"""The `OpSpec` base class every op module subclasses, and shared shape helpers."""
from __future__ import annotations

import math

import numpy as np

from ..errors import IntqError


class OpSpec:
    """What one op means, all in one place: its contract (attributes, arity, semantic
    checks), shape rule, numpy semantics (`run`: float for float ops, the integer
    reference for integer ops), cost and kind. Stateless.

    `intq.validate` applies the contract to every node; every list of ops that other
    stages need (what is data movement, what keeps its input's quantization, ...) is a
    query over these fields (`intq.ops.ops_where`), never a list kept by hand.
    """

    name = ""
    # Graphs the op may appear in: the float graph (after the passes), the integer graph.
    float_graph = True
    integer_graph = False
    # Attributes: name -> checker (`intq.ops.contract`), required and optional.
    attrs: dict = {}
    optional: dict = {}
    # (min, max) number of inputs; a callable(attrs) -> (min, max) where it depends on them.
    arity = (1, 1)
    # Input positions that may be "" (an absent optional input, e.g. a bias).
    optional_inputs: tuple = ()
    # (min, max) number of outputs.
    outputs = (1, 1)
    # Integer ops: how many leading inputs are activations (the rest are constants); a
    # callable(attrs) where it depends on them.
    activations = 1
    # Kind tags: "movement" (only moves elements), "alias" (a pure reshape of the same
    # elements), "channelwise" (elementwise with per-channel constants), "windowed"
    # (reads a kernel window of its input), "layer" (Conv/Linear), "accumulator" (outputs
    # an INT32 accumulator with zero point 0), "keeps_qparams" (lowering gives the output
    # the input's quantization), "join" (adds or concatenates branches).
    tags: frozenset = frozenset()
    # The one op that reads the float graph input in an integer graph.
    reads_float_input = False
    # ONNX ops that import as this op one to one (inputs as they are, the attributes in
    # `onnx_attrs` with their ONNX defaults, as floats): `intq.frontend` registers their
    # importer from here; an op needing more (constant inputs, opset differences) has its
    # own importer in `frontend/importers.py`.
    onnx_ops: tuple = ()
    onnx_attrs: dict = {}

    @staticmethod
    def precheck(node, graph, problems):
        """Checks of attributes against input shapes (pads within the input, groups
        dividing the channels, axes within the rank), run before the shape rule."""

    @staticmethod
    def check(node, graph, problems):
        """Semantic checks beyond attribute kinds and the shape rule; report with
        problems.fail(text). The graph's structure, attributes and shapes are already
        checked when this runs; for integer ops, so are its activation dtypes."""

    @staticmethod
    def input_zero_points(attrs):
        """Integer ops: the zero point subtracted from each activation input, in order,
        where it is an attribute (an accumulator input must have zero point 0)."""
        return ()

    @staticmethod
    def window_kernel(node, graph):
        """Ops tagged "windowed": the (kh, kw) kernel window."""
        return tuple(node.attrs.get("kernel_shape", (1, 1)))

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
