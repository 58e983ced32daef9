"""`intq allocate`: measure every input of the ILP on this machine (sensitivities through the
float model, size and BOPS from the graph, latencies from the Numba backend's per-layer
table), solve it under the given limits and return the bits file `intq compile --bits` reads:
each layer's choice among "w8a8", "w4a8" and "w4a4" (weight bits, input bits).

Limits are absolute (MB, GBOPS, ms) or fractions of the way from the smallest reachable
value (every free layer at its cheapest allowed choice: W4A4 when it is allowed) to the
all-W8A8 value. Sensitivities and latency tables are cached per model and data
(`INTQ_CACHE_DIR`, default ~/.cache/intq), so a second allocation with other limits only
re-solves.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..cache import cache_dir, digest as _digest  # noqa: F401  (cache_dir: this module's API too)
from ..errors import IntqError
from ..quant.scheme import CHOICES, normalise_choice, parse_choice
from . import costs as graph_costs
from .ilp import groups_of, largest, smallest, solve

KEYS = ("size_mb", "bops_g", "latency_ms")
METHODS = ("perturbation", "hessian")


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


SENSITIVITY_VERSION = 2   # bumped when a measurement changes meaning (2: W/A choices)
FLAT_LATENCY = 0.03       # latency totals within 3% of each other: --frac sets no latency limit


def parse_choices(spec) -> tuple[str, ...]:
    """`--choices`: a comma-separated list (or any iterable) of w8a8, w4a8, w4a4 (8 and 4 as
    aliases of w8a8 and w4a4), as canonical names in CHOICES order."""
    items = [p for p in spec.split(",") if p.strip()] if isinstance(spec, str) else list(spec)
    if not items:
        raise IntqError("--choices: no choice given; allowed: w8a8, w4a8, w4a4 (or 8, 4)")
    names = {normalise_choice(c, "--choices") for c in items}
    return tuple(c for c in CHOICES if c in names)


def sensitivities(model, fg, cfg, calib, x, y, method, choices=CHOICES, samples=32, progress=None,
                  weights=None, weights_key=None):
    """({layer: {choice: omega}}, cached?), computed by `intq.alloc.sensitivity` on the float
    graph fg of `model`. `weights(layer, w_bits)` supplies dequantized weights in place of
    nearest rounding; `weights_key`, a string naming them, joins the cache key (with
    `weights` and no key nothing is cached: the cache could not tell two roundings apart)."""
    from . import sensitivity as sens

    if method not in METHODS:
        raise IntqError(f"unknown sensitivity {method!r}; choose one of {', '.join(METHODS)}")
    choices = parse_choices(choices)
    key = _digest(SENSITIVITY_VERSION, model_digest(model), np.asarray(calib), x,
                  None if y is None else np.asarray(y), method, choices, samples, cfg.profile,
                  cfg.calib_method, cfg.percentile, weights_key if weights is not None else None)

    def compute():
        if method == "hessian":
            return sens.hessian_sensitivity(fg, cfg, x, y, choices, samples, progress=progress,
                                            calib=calib, weights=weights)
        return sens.perturbation_sensitivity(fg, cfg, calib, x, y, choices, progress=progress,
                                             weights=weights)

    if weights is not None and weights_key is None:
        value, hit = compute(), False
    else:
        value, hit = _cached(f"sensitivity-{key}.json", compute)
    return {layer: {c: float(v) for c, v in d.items()} for layer, d in value.items()}, hit


def _latency_rows(table: dict) -> dict:
    """{layer: {choice: ms}} from a latency table's rows, whose "ms" is keyed "8" and "4"
    (what `intq bench --latency-table` measures: all layers at W8A8, all at W4A4) or by
    choice names. W4A8 runs the 8-bit kernel (int4 weights in int8 containers, 8-bit
    inputs), so without its own entry it takes the W8A8 time."""
    rows = {}
    for r in table["layers"]:
        ms = {normalise_choice(k, f"layer {r['name']}"): float(v) for k, v in r["ms"].items()}
        if "w4a8" not in ms and "w8a8" in ms:
            ms["w4a8"] = ms["w8a8"]
        rows[r["name"]] = ms
    return rows


def latencies(model, fg, table_path=None, batch=1, repeat=10, progress=None) -> tuple[dict, dict]:
    """({layer: {choice: ms}}, table info). A supplied table (another device's, same JSON as
    `intq bench --latency-table`) is used as given; otherwise this machine's table is
    reused from the cache when its CPU model, kernel path and kernel sources match, else
    measured."""
    from ..bench import cpu_info, latency_table

    if table_path:
        try:
            with open(table_path) as f:
                table = json.load(f)
            rows = _latency_rows(table)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IntqError) as e:
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


def resolve_limits(limits: dict, cost: dict, layers, choices, groups, fixed) -> dict:
    """Absolute limits from {key: (value, is_fraction)}: a fraction f means
    smallest + f * (largest - smallest), smallest every free group at its cheapest allowed
    choice, largest every free group at the widest (all-W8A8 when allowed)."""
    out = {}
    for key, (value, frac) in limits.items():
        if frac:
            if not 0 <= value <= 1:
                raise IntqError(f"{key}: a fraction must lie in [0, 1] (0% to 100%), got {value}")
            lo = smallest(cost, choices, groups, fixed, key)
            hi = largest(cost, choices, groups, fixed, key)
            out[key] = lo + value * (hi - lo)
        else:
            if not value > 0:
                raise IntqError(f"{key}: a limit must be positive, got {value}")
            out[key] = value
    return out


class Problem:
    """Every input of the ILP for one model, measured once: layer names, per-layer costs at
    each choice ({layer: {choice: {"omega", "size_mb", "bops_g", "latency_ms"?, "macs"}}}),
    ties, fixed layers. `solve(limits)` answers any limits from it. `choices` are those the
    free layers may take (default all three; 8 and 4 alias w8a8 and w4a4); fixed layers (the
    ends, unless fix_ends=False) are W8A8. `weights(layer, w_bits)` and `weights_key`: see
    `sensitivities`. `progress(done, total, what)` is told how the measuring goes."""

    def __init__(self, model, calib, x=None, y=None, method="perturbation", choices=CHOICES,
                 latency_table=None, need_latency=False, fix_ends=True, images=256, samples=32,
                 progress=None, config=None, weights=None, weights_key=None):
        from ..pipeline import float_graph
        from ..quant.scheme import QuantConfig
        from ..twin.qat import check_data

        self.cfg = config or QuantConfig()
        self.choices = parse_choices(choices)
        if images < 1:
            raise IntqError(f"sensitivities need at least 1 image, got {images}")
        fg = float_graph(model)
        self.fg = fg
        calib, _ = check_data(fg, calib, None, "calibration data")
        x, y = check_data(fg, calib if x is None else x, y, "sensitivity data")
        x, y = x[:images], None if y is None else y[:images]
        self.images = int(len(x))
        self.names = [n.name for n in graph_costs.layer_nodes(fg)]
        self.fixed = {n: "w8a8" for n in graph_costs.ends(fg)} if fix_ends else {}
        # every choice a layer can end up with: the allowed ones and the fixed layers'
        self.measured = parse_choices(set(self.choices) | set(self.fixed.values()))
        omega, self.sensitivity_cached = sensitivities(
            model, fg, self.cfg, calib, x, y, method, self.measured, samples,
            progress and (lambda d, t: progress(d, t, f"{method} sensitivities")),
            weights=weights, weights_key=weights_key)
        self.method = method
        self.cost = graph_costs.size_bops(fg, self.measured)
        self.latency = None
        if need_latency or latency_table:
            lat, self.latency = latencies(model, fg, latency_table,
                                          progress=progress and (lambda d, t: progress(d, t, "latencies")))
            for n in self.names:
                absent = [c for c in self.measured if c not in lat[n]]
                if absent:
                    raise IntqError(f"latency table has no {'/'.join(absent)} time for layer {n}")
        for n in self.names:
            for c in self.measured:
                self.cost[n][c]["omega"] = omega[n][c]
                if self.latency is not None:
                    self.cost[n][c]["latency_ms"] = lat[n][c]
        self.ties = graph_costs.ties(fg)
        self.groups = groups_of(self.names, self.ties)

    def totals(self, assignment: dict) -> dict:
        keys = [k for k in self.cost[self.names[0]][self.measured[0]] if k != "macs"]
        return {k: sum(self.cost[n][assignment[n]][k] for n in self.names) for k in keys}

    def latency_totals(self) -> dict:
        """{choice: total ms with every layer at it} over the allowed choices (None without
        latencies)."""
        if self.latency is None:
            return None
        return {c: sum(self.cost[n][c]["latency_ms"] for n in self.names) for c in self.choices}

    def latency_flat(self, tolerance: float = FLAT_LATENCY) -> bool:
        """Whether the latency table cannot tell the allowed choices apart: the whole model's
        time at each allowed choice (every layer at it) lies within `tolerance` of the
        largest such total (on this project's CPUs INT4 runs the INT8 kernel, so the INT4
        and INT8 totals differ only by timing noise). False without latencies."""
        t = self.latency_totals()
        if not t:
            return False
        return max(t.values()) - min(t.values()) <= tolerance * max(t.values())

    def fraction_limits(self, frac: float) -> tuple[dict, str | None]:
        """`--frac`: size and BOPS limits at `frac` of the way from the smallest reachable
        value to all-W8A8, and a latency limit there too unless the latency totals are flat
        (`latency_flat`), where one would only bind on noise; then the second item is the
        one line that says so (else None)."""
        limits = {"size_mb": (frac, True), "bops_g": (frac, True)}
        if self.latency is None:
            return limits, None
        if self.latency_flat():
            t = self.latency_totals()
            pct = int(round(FLAT_LATENCY * 100))
            times = ", ".join(f"all {c.upper()} {t[c]:.4g} ms" for c in reversed(self.choices))
            return limits, (f"latency: INT4 and INT8 times equal within {pct}% ({times}); "
                            f"--frac sets no latency limit")
        limits["latency_ms"] = (frac, True)
        return limits, None

    def solve(self, limits: dict) -> dict:
        """limits: {"size_mb"|"bops_g"|"latency_ms": (value, is_fraction)}."""
        if "latency_ms" in limits and self.latency is None:
            raise IntqError("a latency limit needs latencies (measured unless --latency-table)")
        absolute = resolve_limits(limits, self.cost, self.names, self.choices, self.groups, self.fixed)
        res = solve(self.names, self.cost, absolute, self.choices, self.ties, self.fixed)
        cost = self.cost
        rows = []
        for n in self.names:
            c = res["bits"][n]
            w, a = parse_choice(c)
            rows.append({"name": n, "choice": c, "w_bits": w, "a_bits": a,
                         "macs": cost[n][c]["macs"],
                         **{f"omega_{m}": cost[n][m]["omega"] for m in self.measured},
                         **{f"{k}_{m}": cost[n][m][k] for m in self.measured for k in KEYS
                            if k in cost[n][m]}})
        res.update(
            layers=rows, choices=list(self.choices), counts=choice_counts(res["bits"]),
            int8=self.totals({n: "w8a8" for n in self.names}) if "w8a8" in self.measured else None,
            limits=absolute, ties=self.ties, fixed=self.fixed, sensitivity=self.method,
            sensitivity_cached=self.sensitivity_cached, latency=self.latency, images=self.images)
        return res


def choice_counts(bits: dict) -> dict:
    """{choice: number of layers at it}, widest first, every choice present."""
    return {c: sum(v == c for v in bits.values()) for c in reversed(CHOICES)}


def allocate(model, calib, x=None, y=None, limits=None, method="perturbation", choices=CHOICES,
             latency_table=None, fix_ends=True, images=256, samples=32, progress=None,
             config=None, weights=None, weights_key=None) -> dict:
    """The allocation: {"bits": {layer: choice}, "layers": [...], "totals", "int8", "limits",
    "solve_s", ...}. limits: {"size_mb"|"bops_g"|"latency_ms": (value, is_fraction)}."""
    limits = dict(limits or {})
    prob = Problem(model, calib, x, y, method, choices, latency_table, "latency_ms" in limits,
                   fix_ends, images, samples, progress, config, weights, weights_key)
    return prob.solve(limits)


def sweep(prob: Problem, key="size_mb", steps=11, evaluate=None) -> list[dict]:
    """The ILP at `steps` limits on `key` from the smallest reachable value to all-W8A8:
    per point the limit, the chosen totals, the number of layers at each choice and, with
    `evaluate(bits) -> top-1`, accuracy."""
    points = []
    for f in np.linspace(0.0, 1.0, steps):
        res = prob.solve({key: (float(f), True)})
        p = {"fraction": float(f), "limit": res["limits"][key], **res["totals"],
             "counts": res["counts"]}
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


def format_counts(counts: dict) -> str:
    """"2 W8A8, 5 W4A8, 3 W4A4" (choices with no layer left out)."""
    return ", ".join(f"{n} {c.upper()}" for c, n in counts.items() if n) or "no layers"


def format_allocation(res: dict) -> str:
    has_lat = res["latency"] is not None
    measured = [c for c in CHOICES if f"omega_{c}" in res["layers"][0]] if res["layers"] else []
    head = (f"{'layer':<44} {'choice':>6} " + " ".join(f"{'omega@' + c:>12}" for c in measured)
            + f" {'MB':>8} {'GBOPS':>9}" + (f" {'ms':>8}" if has_lat else ""))
    lines = [head]
    for r in res["layers"]:
        c = r["choice"]
        row = (f"{r['name'][-44:]:<44} {c:>6} " + " ".join(f"{r['omega_' + m]:>12.3e}" for m in measured)
               + f" {r['size_mb_' + c]:>8.4f} {r['bops_g_' + c]:>9.4f}")
        if has_lat:
            row += f" {r['latency_ms_' + c]:>8.4f}"
        lines.append(row)
    t, i8 = res["totals"], res["int8"]
    lines.append("")
    for k in KEYS:
        if k in t:
            lim = res["limits"].get(k)
            ref = f" (all W8A8 {i8[k]:.6g}, {t[k] / i8[k]:.1%})" if i8 else ""
            lines.append(f"{k:<11} {t[k]:.6g}{ref}" + (f"  limit {lim:.6g}" if lim is not None else ""))
    lines.append(f"{len(res['layers'])} layers: {format_counts(res['counts'])} (choices "
                 f"{', '.join(res['choices'])}); sensitivity {res['sensitivity']}"
                 f"{' (cached)' if res['sensitivity_cached'] else ''} sum {t['omega']:.4g}; "
                 f"ILP solved in {res['solve_s'] * 1000:.0f} ms")
    return "\n".join(lines)


COLOURS = {"w8a8": "tab:blue", "w4a8": "tab:green", "w4a4": "tab:orange"}


def allocation_plot(res: dict, path) -> None:
    """Figure I.1 of HAWQ-V3: per layer the chosen weight and input bits, the sensitivity at
    each measured choice, and the INT4 latency gain (ms at W8A8 / ms at W4A4), written
    atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..artifact import write_figure

    rows = res["layers"]
    idx = np.arange(1, len(rows) + 1)
    measured = [c for c in CHOICES if rows and f"omega_{c}" in rows[0]]
    lat = res["latency"] is not None and all(f"latency_ms_{c}" in rows[0] for c in ("w8a8", "w4a4"))
    panels = 3 if lat else 2
    fig, axes = plt.subplots(panels, 1, figsize=(8, 1.9 * panels + 0.6), sharex=True, dpi=110)
    axes[0].bar(idx - 0.2, [r["w_bits"] for r in rows], width=0.4,
                color=[COLOURS[r["choice"]] for r in rows], label="weights")
    axes[0].bar(idx + 0.2, [r["a_bits"] for r in rows], width=0.4, hatch="//", fill=False,
                edgecolor=[COLOURS[r["choice"]] for r in rows], label="input")
    axes[0].set_ylabel("bits (W | A)")
    axes[0].set_yticks([4, 8])
    axes[0].legend(fontsize=7, loc="lower right")
    for c in measured:
        axes[1].semilogy(idx, [max(r[f"omega_{c}"], 1e-12) for r in rows], "o-", ms=3,
                         color=COLOURS[c], label=c.upper())
    axes[1].set_ylabel("sensitivity")
    axes[1].legend(fontsize=7)
    if lat:
        axes[2].bar(idx, [r["latency_ms_w8a8"] / max(r["latency_ms_w4a4"], 1e-9) for r in rows],
                    color="tab:green")
        axes[2].axhline(1.0, color="k", lw=0.6)
        axes[2].set_ylabel("INT4 speed-up")
    axes[-1].set_xlabel("layer (graph order)")
    write_figure(fig, path)
    plt.close(fig)
