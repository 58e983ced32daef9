"""One interface over the integer executors: `make_executor(graph, backend).run(x)`.

* "reference": `intq.reference.run_integer`, the numpy specification (int64, slow, clear).
* "numba": the execution plan of `intq.kernels` (INT8/INT4 kernels, INT32 accumulation),
  built once per graph; it returns exactly the reference's integers.

Both take float32 NCHW input and return the graph's outputs as int64 arrays in the
reference layout; `run(x, trace=True)` returns a dict of every integer tensor the executor
stores instead (what `intq verify` compares). `intq run`, `eval` and `bench` and the Python API all go through here.
"""
from __future__ import annotations

import numpy as np

from .errors import IntqError
from .float_executor import check_feed, feed_batch
from .ir import Graph
from .reference import dequantize, run_integer  # noqa: F401  (re-exported)
from .validate import check_run_memory

BACKENDS = ("numba", "reference")
DEFAULT_BACKEND = "numba"


class ReferenceExecutor:
    backend = "reference"

    def __init__(self, graph: Graph):
        self.graph = graph

    def run(self, x, trace: bool = False):
        if not trace:
            return run_integer(self.graph, x)
        env = run_integer(self.graph, x, trace=True)
        return {o: env[o] for node in self.graph.nodes for o in node.outputs}


class NumbaExecutor:
    backend = "numba"

    def __init__(self, graph: Graph):
        from .kernels import cpu
        from .kernels.plan import Plan

        self.graph = graph
        self.plan = Plan(graph)
        self.path = cpu.PATH
        self._checked: set[int] = set()  # batch sizes whose memory need passed the limit

    def run(self, x, trace: bool = False):
        x = check_feed(self.graph, self.graph.inputs[0], x)
        n = feed_batch(x)
        if n not in self._checked:  # once per batch size, before the plan binds its buffers
            check_run_memory(self.graph, n)
            self._checked.add(n)
        return self.plan.run(x.astype(np.float32, copy=False), trace=trace)


def make_executor(graph: Graph, backend: str = DEFAULT_BACKEND):
    if backend not in BACKENDS:
        raise IntqError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return NumbaExecutor(graph) if backend == "numba" else ReferenceExecutor(graph)

