"""`intq report`: per-layer bits, parameters, MACs and BOPS of an integer graph, the model
size and BOPS totals (HAWQ-V3's units: MB = 2^20 bytes, BOPS = b_w * b_a * MACs), and the
quantization card of "Quantization cards" Table 1 (what a quantized result must declare)."""
from __future__ import annotations

import numpy as np

from .ops import get_op
from .ops.integer import dtype_bits as _bits


def cost_table(ig) -> dict:
    rows = []
    for node in ig.nodes:
        if node.op not in ("IntConv", "IntLinear"):
            continue
        w = ig.values[node.inputs[1]]
        b = ig.values[node.inputs[2]]
        wb, ab = _bits(w.dtype), _bits(ig.values[node.inputs[0]].dtype)
        macs = get_op(node.op).macs(node, ig)
        n_w, n_b = int(np.prod(w.shape)), int(np.prod(b.shape))
        rows.append({"name": node.name, "op": "Conv" if node.op == "IntConv" else "Linear",
                     "w_bits": wb, "a_bits": ab, "params": n_w + n_b, "macs": macs,
                     "bops": wb * ab * macs, "bytes": n_w * wb / 8 + n_b * 4})
    size = sum(r["bytes"] for r in rows)
    return {"layers": rows,
            "totals": {"params": sum(r["params"] for r in rows), "macs": sum(r["macs"] for r in rows),
                       "size_mb": size / 2**20, "bops_g": sum(r["bops"] for r in rows) / 1e9,
                       "fp32_size_mb": sum(r["params"] for r in rows) * 4 / 2**20}}


def feature_maps(ig) -> dict:
    """Bytes per image of every tensor a node computes, at its integer width: the card's
    "average or maximum feature map size"."""
    sizes = []
    for node in ig.nodes:
        for name in node.outputs:
            v = ig.values[name]
            sizes.append(int(np.prod(v.shape[1:])) * _bits(v.dtype) / 8)
    return {"max_bytes": int(max(sizes, default=0)),
            "mean_bytes": int(round(float(np.mean(sizes)))) if sizes else 0}


def wa_label(w_bits: int, a_bits: int) -> str:
    """"W4A8": a layer's weight and input widths as the card and the summaries print them."""
    return f"W{w_bits}A{a_bits}"


def bit_width_counts(layers) -> dict:
    """{"W8A8": n, "W4A8": m, ...}, widest first, over rows with w_bits and a_bits."""
    pairs = sorted({(r["w_bits"], r["a_bits"]) for r in layers}, reverse=True)
    return {wa_label(w, a): sum((r["w_bits"], r["a_bits"]) == (w, a) for r in layers)
            for w, a in pairs}


def quantization_card(ig, info: dict) -> dict:
    cfg = ig.metadata.get("config", {})
    layers = cost_table(ig)["layers"]
    widths = sorted({(r["w_bits"], r["a_bits"]) for r in layers})
    acc = info.get("accuracy", {})
    profile = cfg.get("profile", "hawq")
    return {
        "method": ("HAWQ-V3-style integer-only PTQ: uniform, static ranges, dyadic requantization"
                   if profile == "hawq" else
                   "power-of-two-scale integer-only PTQ: uniform, static ranges, pure shifts"),
        "profile": profile,
        "weights": ("symmetric, per output channel" if profile == "hawq" else
                    "symmetric, per tensor, power-of-two scale")
                   + f", {cfg.get('weight_clip', 'max')} clipping"
                   + (f", integers learned by {cfg['rounding']} on the calibration data"
                      if cfg.get("rounding", "nearest") != "nearest" else ", rounded to nearest")
                   + (", biases corrected for the mean shift of weight rounding (calibration data)"
                      if cfg.get("bias_correction") else ""),
        "activations": "static, per tensor; unsigned after ReLU, asymmetric otherwise"
                       if profile == "hawq" else "static, per tensor, symmetric, power-of-two scale",
        "quantized_operations": "all: conv, linear, residual add, concat, pooling, input; "
                                "integer-only after the input (no float, no division)",
        "residual_stream_bits": cfg.get("residual_bits"),
        "mixed_precision": len(widths) > 1,
        "bit_widths": [wa_label(w, a) for w, a in widths],
        "layers_per_bit_width": bit_width_counts(layers),
        "first_last_layer_bits": ([wa_label(r["w_bits"], r["a_bits"]) for r in (layers[0], layers[-1])]
                                  if layers else None),
        "feature_map_bytes": feature_maps(ig),
        "calibration": info.get("calibration"),
        "calibration_data_type": "the calibration file's images, unlabeled (labels are never read); no training",
        "baseline_top1": acc.get("float_top1"),
        "quantized_top1": acc.get("int_top1"),
        "top1_drop": (round(acc["float_top1"] - acc["int_top1"], 6)
                      if "float_top1" in acc and "int_top1" in acc else None),
        "evaluation_data": acc.get("data"),
    }


def format_report(table: dict, card: dict) -> str:
    head = ["layer", "op", "W", "A", "params", "MACs", "BOPS"]
    body = [[r["name"], r["op"], str(r["w_bits"]), str(r["a_bits"]), f"{r['params']:,}",
             f"{r['macs']:,}", f"{r['bops']:,}"] for r in table["layers"]]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    t = table["totals"]
    lines = [fmt(head)] + [fmt(r) for r in body] + [
        "",
        f"size_mb {t['size_mb']:.2f} (weights at their bits + INT32 biases, MB = 2^20 bytes; "
        f"FP32 {t['fp32_size_mb']:.2f})",
        f"bops_g  {t['bops_g']:.2f} (b_w * b_a * MACs; MACs {t['macs'] / 1e9:.3f} G)",
        "", "quantization card:"]
    for k, v in card.items():
        lines.append(f"  {k}: {'unknown (compile with --eval-data to record it)' if v is None else v}")
    return "\n".join(lines)
