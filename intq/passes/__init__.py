"""Graph passes on the float IR, one small module each, run in the order of `PIPELINE`.

Each pass takes a Graph, rewrites it in place and returns it; each must leave the function
the graph computes unchanged (tests check this against the float executor). After the
pipeline no BatchNormalization, Identity, Dropout, Gemm or MatMul remains, constant
Mul/Add/Sub/Div are folded (only an input normalisation stays, as a ChannelAffine), ReLU/ReLU6 sit on
their producers as clamps, and the classifier reads a Flatten or a keepdims=0 pool.
"""
from __future__ import annotations

from ..ops import infer_shapes
from .constant_fold import constant_fold
from .dead_nodes import remove_dead_nodes
from .remove_identity import remove_identity
from .canonicalize_linear import canonicalize_linear
from .fuse_gated_activation import fuse_gated_activation
from .canonicalize_affine import canonicalize_affine
from .fold_batchnorm import fold_batchnorm
from .fold_affine import fold_affine
from .fold_pad import fold_pad
from .fuse_activation import fuse_activation
from .canonicalize_flatten import canonicalize_flatten

PIPELINE = [
    constant_fold,
    remove_identity,
    remove_dead_nodes,
    canonicalize_linear,
    fuse_gated_activation,
    canonicalize_affine,
    fold_batchnorm,
    fold_affine,
    fold_pad,
    fuse_activation,
    canonicalize_flatten,
    remove_dead_nodes,
]


def run_passes(graph, passes=None):
    """Run `passes` (default: the whole PIPELINE) in order; shapes are re-checked after each."""
    for p in passes or PIPELINE:
        graph = p(graph)
        graph.toposort()
        infer_shapes(graph)
    return graph


__all__ = ["PIPELINE", "run_passes", "constant_fold", "remove_dead_nodes", "remove_identity",
           "canonicalize_linear", "fuse_gated_activation", "canonicalize_affine", "fold_batchnorm", "fold_affine", "fold_pad", "fuse_activation",
           "canonicalize_flatten"]
