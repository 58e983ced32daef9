"""`intq allocate`: measure every input of the ILP on this machine (sensitivities through the
float model, size and BOPS from the graph, latencies from the Numba backend's per-layer
table), solve it under the given limits and return the bit file `intq compile --bits` reads.

Limits are absolute (MB, GBOPS, ms) or fractions of the way from the smallest reachable
value (every free layer at 4 bits) to the all-INT8 value. Sensitivities and latency tables
are cached per model and data (`INTQ_CACHE_DIR`, default ~/.cache/intq), so a second
allocation with other limits only re-solves.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..errors import IntqError
from . import costs as graph_costs
from .ilp import groups_of, smallest, solve

KEYS = ("size_mb", "bops_g", "latency_ms")
METHODS = ("perturbation", "hessian")


def cache_dir() -> str | None:
    """The cache folder, created if needed; None when it cannot be (nothing is cached then)."""
    d = os.environ.get("INTQ_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "intq")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:
        return None
    return d


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.shape, p.dtype)).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:24]


def model_digest(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:24]
    return hashlib.sha256(model.SerializeToString()).hexdigest()[:24]


def _cached(name, compute):
    """JSON-cached result of compute() under cache_dir()/name (written atomically)."""
    from ..artifact import atomic_write

    folder = cache_dir()
    if folder is None:
        return compute(), False
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                return json.load(f), True
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed
    value = compute()
    try:
        with atomic_write(path) as f:
            f.write(json.dumps(value).encode())
    except IntqError:
        pass  # an unwritable cache only costs the next run time
    return value, False


def sensitivities(model, fg, cfg, calib, x, y, method, bits, samples=32, progress=None):
    """{layer: {b: omega}} (cached), computed by `intq.alloc.sensitivity` on the float
    graph fg of `model`."""
    from . import sensitivity as sens

    if method not in METHODS:
        raise IntqError(f"unknown sensitivity {method!r}; choose one of {', '.join(METHODS)}")
    key = _digest(model_digest(model), x, None if y is None else np.asarray(y), method,
                  tuple(bits), samples, cfg.profile)

    def compute():
        if method == "hessian":
            return sens.hessian_sensitivity(fg, cfg, x, y, bits, samples, progress=progress)
        return sens.perturbation_sensitivity(fg, cfg, calib, x, y, bits, progress=progress)

    value, hit = _cached(f"sensitivity-{key}.json", compute)
    return {layer: {int(b): float(v) for b, v in d.items()} for layer, d in value.items()}, hit


def _latency_rows(table: dict) -> dict:
    return {r["name"]: {int(b): float(ms) for b, ms in r["ms"].items()} for r in table["layers"]}


def latencies(model, fg, table_path=None, batch=1, repeat=10, progress=None) -> tuple[dict, dict]:
    """({layer: {b: ms}}, table info). A supplied table (another device's, same JSON as
    `intq bench --latency-table`) is used as given; otherwise this machine's table is
    reused from the cache when its CPU model, kernel path and kernel sources match, else
    measured."""
    from ..bench import cpu_info, latency_table

    if table_path:
        try:
            with open(table_path) as f:
                table = json.load(f)
            rows = _latency_rows(table)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise IntqError(f"latency table {table_path}: not a table of `intq bench "
                            f"--latency-table` ({e.__class__.__name__}: {e})") from None
        source = {"source": str(table_path), "cpu": table.get("cpu")}
    else:
        from ..kernels import SOURCE_DIGEST

        info = cpu_info()
        # Timings hold for this CPU and these kernels: a kernel change or another path
        # (INTQ_KERNELS) measures afresh instead of reusing stale milliseconds.
        key = _digest(model_digest(model), info["cpu"], info["kernel_path"], SOURCE_DIGEST, batch)
        table, hit = _cached(f"latency-{key}.json", lambda: latency_table(fg, batch, repeat, progress=progress))
        rows = _latency_rows(table)
        source = {"source": "cache" if hit else "measured", "cpu": table.get("cpu")}
    missing = [n.name for n in graph_costs.layer_nodes(fg) if n.name not in rows]
    if missing:
        raise IntqError(f"latency table has no row for layer(s) {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}")
    return rows, source


def resolve_limits(limits: dict, cost: dict, layers, bits, groups, fixed) -> dict:
    """Absolute limits from {key: (value, is_fraction)}: a fraction f means
    smallest + f * (all-INT8 - smallest)."""
    out = {}
    for key, (value, frac) in limits.items():
        if frac:
            if not 0 <= value <= 1:
                raise IntqError(f"{key}: a fraction must lie in [0, 1] (0% to 100%), got {value}")
            lo = smallest(cost, bits, groups, fixed, key)
            hi = sum(cost[l][max(bits)][key] for l in layers)
            out[key] = lo + value * (hi - lo)
        else:
            if not value > 0:
                raise IntqError(f"{key}: a limit must be positive, got {value}")
            out[key] = value
    return out


class Problem:
    """Every input of the ILP for one model, measured once: layer names, per-layer costs at
    each width ({layer: {b: {"omega", "size_mb", "bops_g", "latency_ms"?, "macs"}}}), ties,
    fixed layers. `solve(limits)` answers any limits from it. `progress(done, total, what)`
    is told how the measuring goes."""

    def __init__(self, model, calib, x=None, y=None, method="perturbation", bits=(4, 8),
                 latency_table=None, need_latency=False, fix_ends=True, images=256, samples=32,
                 progress=None, config=None):
        from ..pipeline import float_graph
        from ..quant.scheme import QuantConfig
        from ..twin.qat import check_data

        self.cfg = config or QuantConfig()
        self.bits = tuple(sorted(set(bits)))
        if not set(self.bits) <= {4, 8}:
            raise IntqError(f"allowed bit widths are 4 and 8 (the kernels intq has), got {list(bits)}")
        if images < 1:
            raise IntqError(f"sensitivities need at least 1 image, got {images}")
        fg = float_graph(model)
        self.fg = fg
        calib, _ = check_data(fg, calib, None, "calibration data")
        x, y = check_data(fg, calib if x is None else x, y, "sensitivity data")
        x, y = x[:images], None if y is None else y[:images]
        self.images = int(len(x))
        self.names = [n.name for n in graph_costs.layer_nodes(fg)]
        omega, self.sensitivity_cached = sensitivities(
            model, fg, self.cfg, calib, x, y, method, self.bits, samples,
            progress and (lambda d, t: progress(d, t, f"{method} sensitivities")))
        self.method = method
        self.cost = graph_costs.size_bops(fg, self.bits)
        self.latency = None
        if need_latency or latency_table:
            lat, self.latency = latencies(model, fg, latency_table,
                                          progress=progress and (lambda d, t: progress(d, t, "latencies")))
        for n in self.names:
            for b in self.bits:
                self.cost[n][b]["omega"] = omega[n][b]
                if self.latency is not None:
                    self.cost[n][b]["latency_ms"] = lat[n][b]
        self.fixed = {n: 8 for n in graph_costs.ends(fg)} if fix_ends else {}
        self.ties = graph_costs.ties(fg)
        self.groups = groups_of(self.names, self.ties)

    def totals(self, assignment: dict) -> dict:
        keys = [k for k in self.cost[self.names[0]][self.bits[0]] if k != "macs"]
        return {k: sum(self.cost[n][assignment[n]][k] for n in self.names) for k in keys}

    def solve(self, limits: dict) -> dict:
        """limits: {"size_mb"|"bops_g"|"latency_ms": (value, is_fraction)}."""
        if "latency_ms" in limits and self.latency is None:
            raise IntqError("a latency limit needs latencies (measured unless --latency-table)")
        absolute = resolve_limits(limits, self.cost, self.names, self.bits, self.groups, self.fixed)
        res = solve(self.names, self.cost, absolute, self.bits, self.ties, self.fixed)
        bits, cost = self.bits, self.cost
        res.update(
            layers=[{"name": n, "bits": res["bits"][n], **{f"omega{b}": cost[n][b]["omega"] for b in bits},
                     "macs": cost[n][bits[0]]["macs"],
                     **{f"{k}{b}": cost[n][b][k] for b in bits for k in KEYS if k in cost[n][b]}}
                    for n in self.names],
            int8=self.totals({n: 8 for n in self.names}), limits=absolute, ties=self.ties,
            fixed=self.fixed, sensitivity=self.method, sensitivity_cached=self.sensitivity_cached,
            latency=self.latency, images=self.images)
        return res


def allocate(model, calib, x=None, y=None, limits=None, method="perturbation", bits=(4, 8),
             latency_table=None, fix_ends=True, images=256, samples=32, progress=None,
             config=None) -> dict:
    """The allocation: {"bits": {layer: b}, "layers": [...], "totals", "int8", "limits",
    "solve_s", ...}. limits: {"size_mb"|"bops_g"|"latency_ms": (value, is_fraction)}."""
    limits = dict(limits or {})
    prob = Problem(model, calib, x, y, method, bits, latency_table, "latency_ms" in limits,
                   fix_ends, images, samples, progress, config)
    return prob.solve(limits)


def sweep(prob: Problem, key="size_mb", steps=11, evaluate=None) -> list[dict]:
    """The ILP at `steps` limits on `key` from the smallest reachable value to all-INT8:
    per point the limit, the chosen totals and, with `evaluate(bits) -> top-1`, accuracy."""
    points = []
    for f in np.linspace(0.0, 1.0, steps):
        res = prob.solve({key: (float(f), True)})
        p = {"fraction": float(f), "limit": res["limits"][key], **res["totals"],
             "n4": sum(b == 4 for b in res["bits"].values())}
        if evaluate is not None:
            p["top1"] = float(evaluate(res["bits"]))
        points.append(p)
    return points


def sweep_plot(points, path, key="size_mb", title="") -> None:
    """Pareto plot: sensitivity (and accuracy, when measured) against `key` over a sweep."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..artifact import write_figure

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    xs = [p[key] for p in points]
    ax.plot(xs, [p["omega"] for p in points], "o-", color="tab:blue", label="sum of sensitivities")
    ax.set_xlabel({"size_mb": "model size (MB)", "bops_g": "GBOPS", "latency_ms": "latency (ms)"}[key])
    ax.set_ylabel("sum of sensitivities", color="tab:blue")
    if all("top1" in p for p in points):
        ax2 = ax.twinx()
        ax2.plot(xs, [100 * p["top1"] for p in points], "s--", color="tab:red", label="top-1")
        ax2.set_ylabel("top-1 (%)", color="tab:red")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    write_figure(fig, path)
    plt.close(fig)


def format_allocation(res: dict) -> str:
    has_lat = res["latency"] is not None
    head = f"{'layer':<44} {'bits':>4} {'omega@4':>11} {'omega@8':>11} {'MB@4':>8} {'GBOPS@4':>9}"
    if has_lat:
        head += f" {'ms@4':>8} {'ms@8':>8}"
    lines = [head]
    for r in res["layers"]:
        row = (f"{r['name'][-44:]:<44} {r['bits']:>4} {r['omega4']:>11.3e} {r['omega8']:>11.3e} "
               f"{r['size_mb4']:>8.4f} {r['bops_g4']:>9.4f}")
        if has_lat:
            row += f" {r['latency_ms4']:>8.4f} {r['latency_ms8']:>8.4f}"
        lines.append(row)
    t, i8 = res["totals"], res["int8"]
    lines.append("")
    for k in KEYS:
        if k in t:
            lim = res["limits"].get(k)
            lines.append(f"{k:<11} {t[k]:.6g} (all INT8 {i8[k]:.6g}, {t[k] / i8[k]:.1%})"
                         + (f"  limit {lim:.6g}" if lim is not None else ""))
    n4 = sum(r["bits"] == 4 for r in res["layers"])
    lines.append(f"{n4} of {len(res['layers'])} layers at 4 bits; sensitivity {res['sensitivity']}"
                 f"{' (cached)' if res['sensitivity_cached'] else ''} sum {t['omega']:.4g}; "
                 f"ILP solved in {res['solve_s'] * 1000:.0f} ms")
    return "\n".join(lines)


def allocation_plot(res: dict, path) -> None:
    """Figure I.1 of HAWQ-V3: per layer the chosen bits, the sensitivity at 4 bits, and the
    INT4 latency gain (ms at 8 / ms at 4), written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..artifact import write_figure

    rows = res["layers"]
    idx = np.arange(1, len(rows) + 1)
    panels = 3 if res["latency"] is not None else 2
    fig, axes = plt.subplots(panels, 1, figsize=(8, 1.9 * panels + 0.6), sharex=True, dpi=110)
    axes[0].bar(idx, [r["bits"] for r in rows], color=["tab:orange" if r["bits"] == 4 else "tab:blue"
                                                          for r in rows])
    axes[0].set_ylabel("bits")
    axes[0].set_yticks([4, 8])
    axes[1].semilogy(idx, [max(r["omega4"], 1e-12) for r in rows], "o-", ms=3)
    axes[1].set_ylabel("sensitivity @4")
    if panels == 3:
        axes[2].bar(idx, [r["latency_ms8"] / max(r["latency_ms4"], 1e-9) for r in rows], color="tab:green")
        axes[2].axhline(1.0, color="k", lw=0.6)
        axes[2].set_ylabel("INT4 speed-up")
    axes[-1].set_xlabel("layer (graph order)")
    write_figure(fig, path)
    plt.close(fig)
