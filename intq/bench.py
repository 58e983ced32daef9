"""Latency of integer models on this machine: `intq bench` and the per-layer latency table
that the bit-allocation ILP reads.

Timings exclude warm-up and JIT compilation, which are reported apart (`compile_s`: the
executor's construction plus its first call, i.e. Numba compiling or loading its cache).
Each figure is the median (with min and max) over `repeat` runs on random input of the
model's input shape; input values do not change the work done.
"""
from __future__ import annotations

import resource
import time

import numpy as np

from .errors import IntqError
from .executor import DEFAULT_BACKEND, make_executor
from .ir import Graph
from .ops import get_op


def cpu_info() -> dict:
    from .kernels.cpu import PATH, cpu_name
    import os
    import numba

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": numba.get_num_threads(),
            "kernel_path": PATH}


def _input(graph: Graph, batch: int, seed: int = 0) -> np.ndarray:
    shape = graph.values[graph.inputs[0]].shape
    fixed = shape[0]
    if fixed is not None and fixed != batch:
        raise IntqError(f"the model was exported with a fixed batch of {fixed}; use --batch {fixed}")
    return np.random.default_rng(seed).standard_normal((batch,) + tuple(shape[1:])).astype(np.float32)


def _stats(times_s) -> dict:
    ms = np.asarray(times_s) * 1e3
    return {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def _layer_macs(graph: Graph) -> dict:
    return {n.name: get_op(n.op).macs(n, graph) for n in graph.nodes if n.op in ("IntConv", "IntLinear")}


def _check_counts(batch, repeat) -> None:
    if repeat < 1 or batch < 1:
        raise IntqError("--repeat and --batch must be at least 1")


def bench(graph: Graph, batch: int = 1, repeat: int = 20, backend: str = DEFAULT_BACKEND,
          per_layer: bool = False, warmup: int = 2) -> dict:
    """Whole-network latency (and per-layer times with per_layer=True, Numba only)."""
    _check_counts(batch, repeat)
    x = _input(graph, batch)
    t0 = time.perf_counter()
    ex = make_executor(graph, backend)
    ex.run(x)
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        ex.run(x)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        ex.run(x)
        times.append(time.perf_counter() - t)
    macs = sum(_layer_macs(graph).values()) * batch
    res = {**_stats(times), "compile_s": round(compile_s, 3), "batch": batch, "repeat": repeat,
           "backend": backend, **cpu_info(), "gmacs": macs / 1e9,
           "gops": 2 * macs / (np.median(times) * 1e9),
           "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if per_layer:
        res["layers"] = per_layer_times(graph, ex, x, repeat)
    return res


def per_layer_times(graph: Graph, ex, x, repeat: int) -> list[dict]:
    """Median time of each step of a Numba plan (a fused conv counts its epilogue), with
    GOPS (2 ops per multiply-add) for Conv/Linear steps."""
    if ex.backend != "numba":
        raise IntqError("per-layer times need the numba backend")
    plan = ex.plan
    env, calls = plan.bind(len(x))
    env["__feeds__"][graph.inputs[0]] = np.ascontiguousarray(x, np.float32)
    times = [[] for _ in calls]
    for _ in range(repeat):
        for i, call in enumerate(calls):
            t = time.perf_counter()
            call()
            times[i].append(time.perf_counter() - t)
    macs = _layer_macs(graph)
    rows = []
    for step, t in zip(plan.steps, times):
        ms = float(np.median(t) * 1e3)
        row = {"name": step.name, "kind": type(step).__name__.removesuffix("Step"), "ms": ms}
        if step.name in macs:
            row["macs"] = macs[step.name] * len(x)
            row["gops"] = 2 * row["macs"] / (ms * 1e6) if ms > 0 else None
        rows.append(row)
    return rows


def latency_table(float_graph: Graph, batch: int = 1, repeat: int = 10, seed: int = 0,
                  progress=None) -> dict:
    """Milliseconds of every Conv/Linear layer at INT4 and at INT8 on this machine.

    The model is compiled twice, every layer at 4 bits and every layer at 8 bits, on
    random calibration images (latency depends on shapes and widths, not on values), and
    each layer's fused step is timed (median of `repeat`, after warm-up)."""
    from .pipeline import compile_model
    from .quant.scheme import QuantConfig

    _check_counts(batch, repeat)
    shape = tuple(float_graph.values[float_graph.inputs[0]].shape[1:])
    calib = np.random.default_rng(seed).standard_normal((8,) + shape).astype(np.float32)
    layers: dict[str, dict] = {}
    for bits in (4, 8):
        names = [n.name for n in float_graph.nodes if n.op in ("Conv", "Linear")]
        cfg = QuantConfig(default_bits=bits, bits={k: bits for k in names})
        ig, _, _ = compile_model(float_graph, calib, cfg)
        ex = make_executor(ig, "numba")
        x = _input(ig, batch, seed)
        ex.run(x)
        ex.run(x)
        macs = _layer_macs(ig)
        for row in per_layer_times(ig, ex, x, repeat):
            if row["name"] in macs:
                entry = layers.setdefault(row["name"], {"macs": macs[row["name"]], "ms": {}})
                entry["ms"][str(bits)] = row["ms"]
        if progress:
            progress(bits // 4, 2)  # one step per width: compiled, warmed up and timed
    return {**cpu_info(), "batch": batch, "repeat": repeat, "unit": "ms",
            "layers": [{"name": k, **v} for k, v in layers.items()]}
