"""Per-layer cost tables for `intq inspect`: output shape, MACs and parameters per node,
and which nodes cannot be compiled to integers (marked `!`, with the reason)."""
from __future__ import annotations

from .ir import Graph
from .ops import get_op
from .quant.lower import lowering_problem


def shape_str(shape) -> str:
    return "x".join("N" if d is None else str(d) for d in shape)


def layer_table(graph: Graph) -> dict:
    rows = []
    for node in graph.nodes:
        spec = get_op(node.op)
        row = {"name": node.name, "op": node.op,
               "output_shape": ["N" if d is None else d for d in graph.values[node.output].shape],
               "macs": spec.macs(node, graph), "params": spec.params(node, graph)}
        if node.attrs.get("activation"):
            row["activation"] = node.attrs["activation"]
        problem = lowering_problem(graph, node)
        if problem:
            row["op"] = node.attrs.get("onnx_op", node.op)
            row["unsupported"] = problem
        rows.append(row)
    return {
        "graph": graph.name,
        "inputs": {n: ["N" if d is None else d for d in graph.values[n].shape] for n in graph.inputs},
        "outputs": {n: ["N" if d is None else d for d in graph.values[n].shape] for n in graph.outputs},
        "layers": rows,
        "totals": {"nodes": len(rows), "macs": sum(r["macs"] for r in rows),
                   "params": sum(r["params"] for r in rows),
                   "unsupported": sum("unsupported" in r for r in rows)},
    }


def format_table(table: dict) -> str:
    head = ["name", "op", "output", "MACs", "params"]
    body = [[r["name"], ("! " if "unsupported" in r else "") + r["op"]
             + (f"+{r['activation']}" if r.get("activation") else ""),
             shape_str(r["output_shape"]), f"{r['macs']:,}", f"{r['params']:,}"]
            for r in table["layers"]]
    t = table["totals"]
    body.append(["total", f"{t['nodes']} nodes", "", f"{t['macs']:,}", f"{t['params']:,}"])
    widths = [max(len(str(row[i])) for row in [head] + body) for i in range(len(head))]
    right = {3, 4}

    def fmt(row):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    ins = ", ".join(f"{k} {shape_str(v)}" for k, v in table["inputs"].items())
    outs = ", ".join(f"{k} {shape_str(v)}" for k, v in table["outputs"].items())
    lines = [f"graph {table['graph']}: input {ins} -> output {outs}", fmt(head),
             fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in body[:-1]] + [fmt(["-" * w for w in widths]), fmt(body[-1])]
    lines.append(f"{t['macs'] / 1e6:,.2f} M MACs ({t['macs'] / 1e9:.3f} G) and "
                 f"{t['params'] / 1e6:.3f} M parameters per sample")
    bad = [r for r in table["layers"] if "unsupported" in r]
    if bad:
        lines.append(f"! {len(bad)} node(s) cannot be compiled to integers:")
        lines += [f"!   {r['name']}: {r['unsupported']}" for r in bad]
    return "\n".join(lines)
