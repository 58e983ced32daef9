"""The bit-allocation ILP of HAWQ-V3 §3.4 (eq. 8-11), all limits at once, solved with PuLP's
bundled CBC.

One binary x[i, c] per layer i and allowed choice c (a bit-width choice such as "w8a8",
"w4a8", "w4a4"; any hashable key of the cost table works), exactly one per layer:

    minimise   sum_i sum_c x[i, c] * omega[i][c]          (sensitivity, eq. 8)
    subject to sum_i sum_c x[i, c] * cost_k[i][c] <= limit_k   for each given limit k
               x[i, c] = x[j, c]  for tied layers,  x[i, f_i] = 1 for fixed layers.

`cost_k` is any additive per-layer cost: model size (eq. 9), BOPS (eq. 10), latency
(eq. 11). A fixed layer takes its fixed choice even when that is not among the allowed
ones (the ends stay W8A8 when the free layers may only be W4A8 or W4A4). Infeasible limits
raise IntqError with one line giving, for each limit, the smallest value it can reach
under the ties and fixed layers.
"""
from __future__ import annotations

import time
import warnings

import pulp

from ..errors import IntqError

UNITS = {"size_mb": "MB", "bops_g": "GBOPS", "latency_ms": "ms"}


def _choices_of(costs, layers, choices):
    """The allowed choices: as given, else every key of the first layer's costs; sorted."""
    if choices is None:
        choices = costs[layers[0]].keys() if layers else ()
    return tuple(sorted(set(choices)))


def groups_of(layers, ties):
    """Partition of `layers` into tie groups (union of overlapping ties), in layer order."""
    parent = {l: l for l in layers}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for tie in ties:
        tie = [t for t in tie if t in parent]
        for other in tie[1:]:
            parent[find(other)] = find(tie[0])
    out: dict[str, list] = {}
    for l in layers:
        out.setdefault(find(l), []).append(l)
    return list(out.values())


def _group_choices(group, choices, fixed, costs=None):
    """The choices a tie group may take: the allowed ones, or the one its fixed member has."""
    want = {fixed[l] for l in group if l in fixed}
    if len(want) > 1:
        raise IntqError(f"layers {', '.join(group)} are tied but fixed to different bit widths "
                        f"{sorted(want)}")
    if want:
        c = want.pop()
        if costs is not None and any(c not in costs[l] for l in group):
            raise IntqError(f"layer(s) {', '.join(group)} fixed to {c}, which has no costs")
        return [c]
    if not choices:
        raise IntqError("no bit-width choice is allowed")
    return list(choices)


def smallest(costs, choices, groups, fixed, key) -> float:
    """The least value of constraint `key` any assignment reaches (per group minimum)."""
    return sum(min(sum(costs[l][c][key] for l in g) for c in _group_choices(g, choices, fixed))
               for g in groups)


def widest(choices):
    """The choice with the most bits (w_bits * a_bits, then w_bits): "w8a8" of the three
    (8 of the plain widths 4 and 8)."""
    from ..quant.scheme import parse_choice

    def rank(c):
        w, a = parse_choice(c, "choice")
        return w * a, w
    return max(choices, key=rank)


def largest(costs, choices, groups, fixed, key) -> float:
    """The value of `key` with every free group at the widest allowed choice (all-W8A8
    when W8A8 is allowed) and the fixed groups at theirs: the top end of a fraction."""
    top, total = widest(choices), 0.0
    for g in groups:
        c = _group_choices(g, choices, fixed)[0] if any(l in fixed for l in g) else top
        total += sum(costs[l][c][key] for l in g)
    return total


def solve(layers, costs, limits, choices=None, ties=(), fixed=None, time_limit=60) -> dict:
    """costs[layer][choice] = {"omega": ..., "size_mb": ..., "bops_g": ..., "latency_ms": ...};
    limits: {cost key: upper bound} (any subset); choices: those the free layers may take
    (default: every key of the costs). Returns {"bits": {layer: choice}, "objective",
    "totals": {key: value}, "solve_s", "status"}."""
    fixed = dict(fixed or {})
    choices = _choices_of(costs, layers, choices)
    groups = groups_of(layers, ties)
    prob = pulp.LpProblem("intq_bit_allocation", pulp.LpMinimize)
    x = {}
    for gi, g in enumerate(groups):
        for ci, c in enumerate(_group_choices(g, choices, fixed, costs)):
            v = f"x_{gi}_{ci}"
            x[gi, c] = (prob.add_variable(v, cat="Binary") if hasattr(prob, "add_variable")
                        else pulp.LpVariable(v, cat="Binary"))  # PuLP < 3.3
    choice = {gi: [c for (g2, c) in x if g2 == gi] for gi in range(len(groups))}

    def total(key):
        return pulp.lpSum(x[gi, c] * sum(costs[l][c][key] for l in g)
                          for gi, g in enumerate(groups) for c in choice[gi])

    prob += total("omega")
    for gi in range(len(groups)):
        prob += pulp.lpSum(x[gi, b] for b in choice[gi]) == 1
    for key, limit in limits.items():
        prob += total(key) <= float(limit), key
    t0 = time.perf_counter()
    # CBC 2.10.3 (PuLP's bundled binary) with its integer preprocessing on returns a
    # non-optimal assignment as "Optimal" on some of these problems (found by the brute-force
    # test: objective 3.69 where 2.81 was feasible); with it off every random instance of
    # tests/test_alloc.py solves to the brute-force optimum, still in milliseconds.
    with warnings.catch_warnings():  # PuLP 3.3 announces PULP_CBC_CMD's rename for 4.0
        warnings.simplefilter("ignore", DeprecationWarning)
        solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, options=["preprocess off"])
    status = prob.solve(solver)
    solve_s = time.perf_counter() - t0
    if pulp.LpStatus[status] != "Optimal":
        low = {k: smallest(costs, choices, groups, fixed, k) for k in limits}
        lows = ", ".join(f"{k} <= {v:.6g} {UNITS.get(k, '')} asked, smallest achievable {low[k]:.6g}"
                         for k, v in limits.items())
        alone = all(low[k] <= v for k, v in limits.items())
        raise IntqError(f"no bit allocation meets the limits"
                        f"{' together (each alone can be met)' if alone else ''}: {lows}")
    out = {}
    for gi, g in enumerate(groups):
        c = next(c for c in choice[gi] if x[gi, c].value() > 0.5)
        out.update({l: c for l in g})
    keys = sorted({k for l in layers for k in costs[l][out[l]]})
    totals = {k: sum(costs[l][out[l]][k] for l in layers) for k in keys}
    return {"bits": {l: out[l] for l in layers}, "objective": totals.get("omega"), "totals": totals,
            "solve_s": solve_s, "status": "optimal"}
