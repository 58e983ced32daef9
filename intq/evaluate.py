"""Top-1 evaluation of an integer model against its float model, callable from Python.

`evaluate(int_graph, data, labels, float_graph=..., backend=...)` streams the data (arrays,
an .npz or .npy file, or an image folder: anything `intq.data.Data` opens) batch by batch
through both models (a fixed-batch graph gets padded batches, see `float_executor.batches`),
so a folder or a mapped file is never in memory whole, and returns the metrics that
`intq eval` prints: integer and float top-1, their top-1 agreement, the cosine between the
logit vectors and the number of unreadable images skipped.
"""
from __future__ import annotations

import sys

import numpy as np

from .data import Data
from .errors import IntqError
from .executor import DEFAULT_BACKEND, dequantize, make_executor
from .float_executor import batches, run_float
from .ir import Graph


class ProgressBar:
    """`[#####     ] done/total` on stderr, redrawn in place; silent unless stderr is a
    terminal (and `show`), so logs and pipes stay clean."""

    def __init__(self, total: int, show: bool = True):
        self.total, self.show = max(int(total), 1), show and sys.stderr.isatty()

    def update(self, done: int, label: int | None = None) -> None:
        if self.show:
            bar = "#" * min(30, 30 * done // self.total)
            print(f"\r[{bar:<30}] {done if label is None else label}/{self.total}", end="",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.show:
            print(file=sys.stderr)


def logits(int_graph: Graph, x, float_graph: Graph | None = None, backend=DEFAULT_BACKEND,
           batch: int = 64, progress: bool = True, executor=None):
    """(integer logits dequantized, float logits or None) over x, with a progress bar on
    long runs when stderr is a terminal."""
    ex = executor or make_executor(int_graph, backend)
    oq = int_graph.metadata["outputs"][int_graph.outputs[0]]
    outs_i, outs_f = [], []
    done = 0
    bar = ProgressBar(len(x), show=progress and len(x) > batch)
    for xb, n in batches(int_graph, x, batch):
        outs_i.append(dequantize(ex.run(xb)[0], oq)[:n])
        if float_graph is not None:
            outs_f.append(run_float(float_graph, xb)[0][:n])
        done += n
        bar.update(done)
    bar.close()
    return np.concatenate(outs_i), (np.concatenate(outs_f) if outs_f else None)


def metrics(li, lf, y) -> dict:
    """Top-1 of each side against labels y (if any), their agreement and logit cosine."""
    res = {"images": int(len(li))}
    if y is not None:
        res["int_top1"] = float((li.argmax(1) == y).mean())
        if lf is not None:
            res["float_top1"] = float((lf.argmax(1) == y).mean())
    if lf is not None:
        res["top1_agreement"] = float((li.argmax(1) == lf.argmax(1)).mean())
        num = (li * lf).sum(1)
        den = np.linalg.norm(li, axis=1) * np.linalg.norm(lf, axis=1)
        res["cosine_mean"] = float(np.mean(num / np.maximum(den, 1e-30)))
        res["cosine_min"] = float(np.min(num / np.maximum(den, 1e-30)))
    return res


def evaluate(int_graph: Graph, x, y=None, float_graph: Graph | None = None,
             backend=DEFAULT_BACKEND, batch: int = 64, progress: bool = True, executor=None,
             preprocess: str = "imagenet") -> dict:
    """Metrics over `x`: images (with labels `y`), an .npz / .npy path or an image folder
    (labels from the file or the class subfolders; `preprocess` for a folder), or an open
    `Data`. Reads `batch` images at a time."""
    data = x if isinstance(x, Data) else Data(
        x, y, chw=lambda: int_graph.values[int_graph.inputs[0]].shape[1:], keys=("x", "x_eval"),
        label_keys=("y", "y_eval"), what="eval data", preprocess=preprocess)
    ex = executor or make_executor(int_graph, backend)
    parts, done = [], 0
    bar = ProgressBar(data.count, show=progress and data.count > batch)
    for xb, yb in data.batches(batch):
        parts.append((*logits(int_graph, xb, float_graph, executor=ex, batch=batch, progress=False), yb))
        done += len(xb)
        bar.update(done + len(data.skipped), label=done)
    bar.close()
    li = np.concatenate([p[0] for p in parts])
    lf = np.concatenate([p[1] for p in parts]) if float_graph is not None else None
    labels = np.concatenate([p[2] for p in parts]) if data.labelled else None
    return dict(metrics(li, lf, labels), backend=ex.backend, unreadable=len(data.skipped))


def compare_outputs(int_graph: Graph, x, float_graph: Graph, backend=DEFAULT_BACKEND,
                    batch: int = 64, progress: bool = True, executor=None,
                    preprocess: str = "imagenet") -> dict:
    """Every output of the integer model against the float model's output of the same name,
    over `x` (as `evaluate` takes it; labels are not needed): per output, the cosine of the
    flattened output of each image (mean and min over images), and the mean and largest
    absolute error in output steps (|dequantized integer - float| / scale). For a detector
    or segmenter, whose outputs are boxes, scores and masks rather than logits."""
    data = x if isinstance(x, Data) else Data(
        x, None, chw=lambda: int_graph.values[int_graph.inputs[0]].shape[1:], keys=("x", "x_eval"),
        label_keys=("y", "y_eval"), what="eval data", preprocess=preprocess)
    missing = [o for o in int_graph.outputs if o not in float_graph.outputs]
    if missing:
        raise IntqError(f"the float model has no output {missing[0]!r} (its outputs: "
                        f"{', '.join(float_graph.outputs)})")
    ex = executor or make_executor(int_graph, backend)
    meta = int_graph.metadata["outputs"]
    where = [float_graph.outputs.index(o) for o in int_graph.outputs]
    acc = {o: {"cos": [], "err_sum": 0.0, "err_max": 0.0, "count": 0} for o in int_graph.outputs}
    done = 0
    bar = ProgressBar(data.count, show=progress and data.count > batch)
    for xb, _ in data.batches(batch):
        for xc, n in batches(int_graph, xb, batch):
            qs, fs = ex.run(xc), run_float(float_graph, xc)
            for name, q, i in zip(int_graph.outputs, qs, where):
                got = dequantize(q, meta[name])[:n].astype(np.float64).reshape(n, -1)
                want = fs[i][:n].astype(np.float64).reshape(n, -1)
                a = acc[name]
                num = (got * want).sum(1)
                den = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
                # Two all-zero outputs agree exactly; one all-zero against a non-zero does not.
                a["cos"].extend(np.where(den > 0, num / np.maximum(den, 1e-300),
                                         np.where(np.abs(got).sum(1) + np.abs(want).sum(1) == 0, 1.0, 0.0)))
                steps = np.abs(got - want) / meta[name]["scale"]
                a["err_sum"] += float(steps.sum())
                a["err_max"] = max(a["err_max"], float(steps.max()))
                a["count"] += steps.size
        done += len(xb)
        bar.update(done + len(data.skipped), label=done)
    bar.close()
    outputs = {name: {"shape": list(int_graph.values[name].shape[1:]), "scale": float(meta[name]["scale"]),
                      "cosine_mean": float(np.mean(a["cos"])), "cosine_min": float(np.min(a["cos"])),
                      "mean_abs_steps": a["err_sum"] / max(a["count"], 1), "max_abs_steps": a["err_max"]}
               for name, a in acc.items()}
    return {"images": done, "outputs": outputs, "backend": ex.backend, "unreadable": len(data.skipped)}
