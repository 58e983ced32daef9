"""Layer-by-layer verification: the integer executor (reference or Numba, in trace mode) and
the torch twin (exact mode) run the same images, and every integer tensor the executor
stores is compared element by element with the twin's: each Requantize, add, concat, pool,
clamp and data-movement output, the logits, and (on the reference backend, which keeps them)
the conv/linear INT32 accumulators. `naive=True` also runs the twin in naive mode (float
fake quantization) and reports per point HAWQ-V3 eq. 24's normalized difference
||x_int - x_fake|| / ||x_int|| of the real values.
"""
from __future__ import annotations

import numpy as np

from .model import TwinModel, from_compiled


def _real(q: np.ndarray, qp: dict) -> np.ndarray:
    """Real values of stored integers: S (q - z), or S[channel] q for an INT32 accumulator."""
    if "scales" in qp:
        s = np.asarray(qp["scales"], np.float64)
        return q.astype(np.float64) * (s.reshape((1, -1) + (1,) * (q.ndim - 2)) if s.size > 1 else s)
    return (q.astype(np.float64) - qp["zero_point"]) * qp["scale"]


def verify(model, x, backend: str = "numba", twin: TwinModel | None = None,
           naive: bool = False, executor=None) -> dict:
    """Compare `model`'s executor with its twin on images x (float32 NCHW); returns the
    report: all_exact, first_differing (a point name or None), and per point its node, op,
    shape, number of differing elements and largest difference in integer steps (and the
    naive normalized difference with naive=True)."""
    graph = model.integer
    twin = twin if twin is not None else from_compiled(model)
    x = np.asarray(x, np.float32)
    stored = (executor or model.executor(backend)).run(x, trace=True)
    exact = twin.trace(x)
    fake = twin.trace(x, mode="naive") if naive else None
    qparams = graph.metadata.get("qparams", {})
    points = []
    for node in graph.nodes:
        for name in node.outputs:
            if name not in stored:  # a fused accumulator: never in memory on this backend
                continue
            a = stored[name]
            b = exact[name].detach().cpu().numpy()
            p = {"name": name, "node": node.name, "op": node.op, "shape": list(a.shape)}
            if a.shape != b.shape:
                p.update(differing=int(a.size), max_diff=None, exact=False)
            else:
                diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
                p.update(differing=int(np.count_nonzero(diff)), max_diff=int(diff.max(initial=0)))
                p["exact"] = p["differing"] == 0
            if fake is not None and name in qparams:
                ref = _real(a, qparams[name])
                dev = fake[name].detach().cpu().numpy().astype(np.float64)
                norm = float(np.linalg.norm(ref))
                p["naive_rel_diff"] = float(np.linalg.norm(ref - dev) / norm) if norm else 0.0
            points.append(p)
    first = next((p for p in points if not p["exact"]), None)
    return {"all_exact": first is None,
            "first_differing": None if first is None else first["name"],
            "first_differing_node": None if first is None else first["node"],
            "backend": getattr(executor, "backend", backend), "images": int(len(x)),
            "points": len(points), "layers": points}


def format_report(res: dict) -> str:
    naive = any("naive_rel_diff" in p for p in res["layers"])
    head = f"{'point':<44} {'op':<16} {'shape':<18} {'differing':>9} {'max|diff|':>9}"
    lines = [head + ("  naive ||int-fake||/||int||" if naive else "")]
    for p in res["layers"]:
        md = "-" if p["max_diff"] is None else str(p["max_diff"])
        row = (f"{p['name'][-44:]:<44} {p['op']:<16} {'x'.join(map(str, p['shape'])):<18} "
               f"{p['differing']:>9} {md:>9}")
        if "naive_rel_diff" in p:
            row += f"  {p['naive_rel_diff']:.3e}"
        lines.append(row)
    if res["all_exact"]:
        lines.append(f"all {res['points']} points exact ({res['images']} images, "
                     f"{res['backend']} backend vs the torch twin)")
    else:
        bad = sum(not p["exact"] for p in res["layers"])
        first = next(p for p in res["layers"] if not p["exact"])
        lines.append(f"NOT EXACT: {bad} of {res['points']} points differ; first differing: "
                     f"{first['name']} (node {first['node']}, {first['op']}): "
                     f"{first['differing']} elements, up to {first['max_diff']} steps")
    return "\n".join(lines)


def drift_plot(curves: dict, path, title: str = "") -> None:
    """A PNG in the style of HAWQ-V3 Figure G.1: per quantization point (in graph order) the
    normalized difference between integer-only and naive fake-quant inference, one curve per
    entry of `curves` (label -> verify report with naive=True). Written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..artifact import write_figure

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    for label, res in curves.items():
        pts = [p for p in res["layers"] if "naive_rel_diff" in p]
        ax.plot(range(1, len(pts) + 1), [p["naive_rel_diff"] for p in pts], marker="o",
                markersize=3, label=label)
    ax.set_xlabel("quantization point (graph order: requantize, add, pool, logits)")
    ax.set_ylabel("||x_int - x_fake|| / ||x_int||")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    write_figure(fig, path)
    plt.close(fig)
