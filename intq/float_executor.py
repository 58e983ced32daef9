"""Run a float IR graph with numpy, op by op, for clarity rather than speed.

It is the reference that every pass is checked against (the graph must compute the same
function before and after each pass) and that onnxruntime checks in turn.
"""
from __future__ import annotations

import numpy as np

from .errors import IntqError
from .ir import Graph
from .ops import get_op
from .validate import check_run_memory


def check_feed(graph: Graph, name: str, x) -> np.ndarray:
    """The array for graph input `name`, checked against its declared shape."""
    x = np.asarray(x)
    want = graph.values[name].shape
    if x.ndim != len(want) or any(w is not None and w != d for w, d in zip(want, x.shape)):
        shown = tuple("N" if w is None else w for w in want)
        raise IntqError(f"input {name!r} has shape {x.shape}, the model expects {shown}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise IntqError(f"input {name!r} contains NaN or infinity")
    return x


def feed_batch(x) -> int:
    """The batch size of an input array (1 for a scalar; check_feed reports bad shapes)."""
    shape = np.shape(x)
    return int(shape[0]) if shape and shape[0] else 1


def batches(graph: Graph, x: np.ndarray, batch: int = 64):
    """Yield (images, n) slices of x to feed `graph`, n of them real.

    A graph exported with a fixed batch takes exactly that many images per run: the last
    slice is padded with copies of its first image, and callers drop rows n and beyond.
    """
    fixed = graph.values[graph.inputs[0]].shape[0]
    batch = fixed or batch
    for start in range(0, len(x), batch):
        xb = x[start:start + batch]
        n = len(xb)
        if fixed and n < fixed:
            xb = np.concatenate([xb, np.repeat(xb[:1], fixed - n, axis=0)])
        yield xb, n


def run_float(graph: Graph, feeds, trace: bool = False):
    """Outputs (list, in graph order) for `feeds` (an array, or a dict by input name).

    With trace=True, returns the dict of every tensor computed instead.
    """
    if not isinstance(feeds, dict):
        if len(graph.inputs) != 1:
            raise IntqError(f"model has {len(graph.inputs)} inputs; pass a dict")
        feeds = {graph.inputs[0]: feeds}
    if graph.inputs and graph.inputs[0] in feeds:
        check_run_memory(graph, feed_batch(feeds[graph.inputs[0]]))  # before any allocation
    env = dict(graph.constants)
    for name in graph.inputs:
        if name not in feeds:
            raise IntqError(f"missing input {name!r}")
        env[name] = check_feed(graph, name, feeds[name]).astype(np.float32, copy=False)
    for node in graph.nodes:
        args = [env[i] if i else None for i in node.inputs]
        outs = get_op(node.op).run(node.attrs, *args)
        env.update(zip(node.outputs, outs))
    return env if trace else [env[o] for o in graph.outputs]
