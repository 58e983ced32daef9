"""The reference executor of integer graphs: the specification of intq's arithmetic.

It runs each integer op's numpy `run` (int64, written for clarity) in graph order and
checks every produced tensor against the range its dtype declares, so an op that leaves
its range is caught where it happens. The Numba kernels and the torch twin must produce
exactly these integers.
"""
from __future__ import annotations

import numpy as np

from .float_executor import check_feed, feed_batch
from .ir import Graph
from .ops import get_op
from .ops.integer import dtype_range
from .validate import check_run_memory


def run_integer(graph: Graph, x, trace: bool = False):
    """Integer outputs (list of int64 arrays) for float input `x`; trace=True: every tensor."""
    if not isinstance(x, dict):
        x = {graph.inputs[0]: x}
    check_run_memory(graph, feed_batch(x[graph.inputs[0]]))  # before any allocation
    env = {k: v.astype(np.int64) for k, v in graph.constants.items()}
    for name in graph.inputs:
        env[name] = check_feed(graph, name, x[name]).astype(np.float32, copy=False)
    for node in graph.nodes:
        args = [env[i] for i in node.inputs]
        for name, value in zip(node.outputs, get_op(node.op).run(node.attrs, *args)):
            lo, hi = dtype_range(graph.values[name].dtype)
            if value.dtype != np.int64:
                raise AssertionError(f"{node.name} produced {value.dtype}, not int64")
            if value.size and (value.min() < lo or value.max() > hi):
                raise AssertionError(f"{node.name} left the range of {graph.values[name].dtype}")
            env[name] = value
    return env if trace else [env[o] for o in graph.outputs]


def dequantize(q: np.ndarray, qparams: dict) -> np.ndarray:
    return (qparams["scale"] * (q.astype(np.float64) - qparams["zero_point"])).astype(np.float32)
