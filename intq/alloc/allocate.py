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


def cache_dir() -> str:
    d = os.environ.get("INTQ_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "intq")
    os.makedirs(d, exist_ok=True)
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

    path = os.path.join(cache_dir(), name)
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


def sensitivities(model, fg, bns, cfg, calib, x, y, method, bits, samples=32, progress=None):
    """{layer: {b: omega}} (cached), computed by `intq.alloc.sensitivity`."""
    from ..twin.qat import QATModel
    from . import sensitivity as sens

    if method not in METHODS:
        raise IntqError(f"unknown sensitivity {method!r}; choose one of {', '.join(METHODS)}")
    key = _digest(model_digest(model), x, None if y is None else np.asarray(y), method,
                  tuple(bits), samples, cfg.profile)

    def compute():
        if method == "hessian":
            qm = QATModel(fg, {}, cfg, calib)
            return sens.hessian_sensitivity(qm, x, y, bits, samples, progress=progress)
        qm = QATModel(fg, bns, cfg, calib)
        return sens.perturbation_sensitivity(qm, x, y, bits, progress=progress)

    value, hit = _cached(f"sensitivity-{key}.json", compute)
    return {layer: {int(b): float(v) for b, v in d.items()} for layer, d in value.items()}, hit


def latencies(model, fg, table_path=None, batch=1, repeat=10) -> tuple[dict, dict]:
    """({layer: {b: ms}}, table info). A supplied table (another device's, same JSON as
    `intq bench --latency-table`) is used as given; otherwise this machine's table is
    reused from the cache when its CPU model matches, else measured."""
    from ..bench import cpu_info, latency_table

    if table_path:
        try:
            with open(table_path) as f:
                table = json.load(f)
            rows = {r["name"]: {int(b): float(ms) for b, ms in r["ms"].items()} for r in table["layers"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise IntqError(f"latency table {table_path}: not a table of `intq bench "
                            f"--latency-table` ({e.__class__.__name__}: {e})") from None
        source = {"source": str(table_path), "cpu": table.get("cpu")}
    else:
        cpu = cpu_info()["cpu"]
        key = _digest(model_digest(model), cpu, batch)
        table, hit = _cached(f"latency-{key}.json", lambda: latency_table(fg, batch, repeat))
        rows = {r["name"]: {int(b): float(ms) for b, ms in r["ms"].items()} for r in table["layers"]}
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


def allocate(model, calib, x=None, y=None, limits=None, method="perturbation", bits=(4, 8),
             latency_table=None, fix_ends=True, images=256, samples=32, progress=None,
             config=None) -> dict:
    """The allocation: {"bits": {layer: b}, "layers": [...], "totals", "int8", "limits",
    "solve_s", ...}. limits: {"size_mb"|"bops_g"|"latency_ms": (value, is_fraction)}."""
    from ..quant.scheme import QuantConfig
    from ..twin.qat import float_graph_with_batchnorms

    cfg = config or QuantConfig()
    limits = dict(limits or {})
    bits = tuple(sorted(set(bits)))
    if not set(bits) <= {4, 8}:
        raise IntqError(f"allowed bit widths are 4 and 8 (the kernels intq has), got {list(bits)}")
    fg, bns = float_graph_with_batchnorms(model)
    calib = np.asarray(calib, np.float32)
    x = calib if x is None else np.asarray(x, np.float32)
    if y is not None:
        y = np.asarray(y)[:images]
    x = x[:images]
    names = [n.name for n in graph_costs.layer_nodes(fg)]
    omega, hit = sensitivities(model, fg, bns, cfg, calib, x, y, method, bits, samples, progress)
    cost = graph_costs.size_bops(fg, bits)
    lat_src = None
    need_latency = "latency_ms" in limits
    if need_latency or latency_table:
        lat, lat_src = latencies(model, fg, latency_table)
    for n in names:
        for b in bits:
            cost[n][b]["omega"] = omega[n][b]
            if lat_src is not None:
                cost[n][b]["latency_ms"] = lat[n][b]
    fixed = {n: 8 for n in graph_costs.ends(fg)} if fix_ends else {}
    ties = graph_costs.ties(fg)
    groups = groups_of(names, ties)
    absolute = resolve_limits(limits, cost, names, bits, groups, fixed)
    res = solve(names, cost, absolute, bits, ties, fixed)
    int8 = {k: sum(cost[n][8][k] for n in names) for k in cost[names[0]][8] if k != "macs"}
    res.update(layers=[{"name": n, "bits": res["bits"][n], **{f"omega{b}": cost[n][b]["omega"] for b in bits},
                        "macs": cost[n][bits[0]]["macs"],
                        **{f"{k}{b}": cost[n][b][k] for b in bits for k in KEYS if k in cost[n][b]}}
                       for n in names],
               int8=int8, limits=absolute, ties=ties, fixed=fixed, sensitivity=method,
               sensitivity_cached=hit, latency=lat_src, images=int(len(x)))
    return res


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
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..artifact import atomic_write

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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
