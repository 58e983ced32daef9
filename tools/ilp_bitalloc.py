"""Mixed-precision bit allocation by the HAWQ-V3 ILP (the script form of `intq allocate`), and
the README's table in the form of HAWQ-V3 Table 2.

Allocate for one model (same options as `intq allocate`):

    python tools/ilp_bitalloc.py MODEL.onnx --calib CALIB.npz [--data TRAIN.npz]
        [--max-size-mb X|P%] [--max-bops-g Y|P%] [--max-latency-ms Z|P%] [--frac F]
        [--sensitivity perturbation|hessian] [--latency-table FILE] -o BITS.json

The README's table (bundled digits nets and full-size ResNet18/ResNet50; the two choices
W8A8 and W4A4, as the table was made; every limit at
High/Medium/Low = 75/50/25% of the way from all-INT4 to all-INT8; measured size, BOPS,
speed against INT8 and, for the trained nets, top-1 and random assignments of the same
size for comparison):

    python tools/ilp_bitalloc.py --table [-o models/ilp_table.json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from intq.alloc.allocate import Problem, allocation_plot, sweep, sweep_plot  # noqa: E402
from intq.bench import bench, cpu_info  # noqa: E402
from intq.cli import main as cli_main  # noqa: E402
from intq.evaluate import evaluate  # noqa: E402
from intq.pipeline import compile_model  # noqa: E402
from intq.quant.scheme import QuantConfig  # noqa: E402

LEVELS = (("High", 0.75), ("Medium", 0.5), ("Low", 0.25))
CHOICES = ("w8a8", "w4a4")  # the table's two choices (INT8, INT4)
KEYS = (("size_mb", "size"), ("bops_g", "BOPS"), ("latency_ms", "latency"))


def full_size_onnx(name, res, dynamic_batch=False):
    import onnx
    import torch

    from models import zoo

    torch.manual_seed(0)
    model = zoo.FULL_SIZE[name][0]().eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, res, res),), f, dynamo=False, opset_version=13,
                          input_names=["input"], training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False,
                          dynamic_axes={"input": {0: "batch"}} if dynamic_batch else None)
    return onnx.load_from_string(f.getvalue())


def random_assignment(prob, limit, rng):
    """Layers (tie groups) moved to W4A4 in random order while the size is above `limit`
    (the fixed layers stay): a random allocation of about the ILP's size."""
    bits = {n: "w8a8" for n in prob.names}
    groups = [g for g in prob.groups if not any(n in prob.fixed for n in g)]
    for i in rng.permutation(len(groups)):
        if prob.totals(bits)["size_mb"] <= limit:
            break
        for n in groups[i]:
            bits[n] = "w4a4"
    return bits


def table(out_json):
    from models.digits import N_CALIB, load_split

    xtr, ytr, xte, yte = load_split()
    calib = xtr[:N_CALIB]
    rows, extra = [], {}
    nets = [(n, os.path.join(ROOT, "models", f"{n}.onnx"), True)
            for n in ("resnet", "inception", "mobilenet", "mobilenetv3")]
    nets += [("resnet18 (224, random weights)", full_size_onnx("resnet18", 224), False),
             ("resnet50 (224, random weights)", full_size_onnx("resnet50", 224), False)]
    for label, model, trained in nets:
        t0 = time.perf_counter()
        if trained:
            prob = Problem(model, calib, xtr, ytr, choices=CHOICES, need_latency=True, images=256)
            cal = calib
        else:
            cal = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
            prob = Problem(model, cal, choices=CHOICES, need_latency=True, images=8)
        prep_s = time.perf_counter() - t0
        cache = {}

        def measure(bits):
            key = tuple(sorted(bits.items()))
            if key not in cache:
                ig, _, _ = compile_model(model, cal, QuantConfig(bits=bits))
                r = {"ms": bench(ig, 1, 30 if trained else 10)["median_ms"]}
                if trained:
                    r["top1"] = evaluate(ig, xte, yte, progress=False)["int_top1"]
                cache[key] = r
            return cache[key]

        int8 = measure({n: "w8a8" for n in prob.names})
        solve_times = []
        for key, kname in KEYS:
            for level, frac in LEVELS:
                res = prob.solve({key: (frac, True)})
                solve_times.append(res["solve_s"])
                m = measure(res["bits"])
                rows.append({"model": label, "constraint": kname, "level": level,
                             "limit": res["limits"][key], "size_mb": res["totals"]["size_mb"],
                             "bops_g": res["totals"]["bops_g"], "n4": res["counts"]["w4a4"],
                             "layers": len(prob.names), "ms": m["ms"], "speedup": int8["ms"] / m["ms"],
                             "top1": m.get("top1"), "int8_top1": int8.get("top1"),
                             "int8_size_mb": res["int8"]["size_mb"], "int8_bops_g": res["int8"]["bops_g"],
                             "solve_ms": 1000 * res["solve_s"]})
        info = {"prepare_s": prep_s, "max_solve_ms": 1000 * max(solve_times), "latency": prob.latency,
                "layers": len(prob.names), "int8_ms": int8["ms"]}
        if trained:
            res = prob.solve({"size_mb": (0.5, True)})
            rng = np.random.default_rng(0)
            rand = []
            for _ in range(5):
                b = random_assignment(prob, res["totals"]["size_mb"], rng)
                rand.append({"size_mb": prob.totals(b)["size_mb"], "omega": prob.totals(b)["omega"],
                             "top1": measure(b)["top1"]})
            info["random_vs_ilp"] = {"ilp": {"size_mb": res["totals"]["size_mb"], "omega": res["totals"]["omega"],
                                             "top1": measure(res["bits"])["top1"]}, "random": rand}
            if label == "mobilenet":
                pts = sweep(prob, "size_mb", 11, lambda b: measure(b)["top1"])
                sweep_plot(pts, os.path.join(ROOT, "models", "ilp_sweep_mobilenet.png"), "size_mb",
                           "mobilenet (digits): ILP over the size limit, all-INT4 to all-INT8")
                info["sweep"] = pts
        if label.startswith("resnet50"):
            allocation_plot(prob.solve({"bops_g": (0.5, True)}),
                            os.path.join(ROOT, "models", "ilp_resnet50.png"))
        extra[label] = info
        print(f"{label}: prepared in {prep_s:.1f} s, ILP solves at most {info['max_solve_ms']:.0f} ms",
              file=sys.stderr)
    print("| model | constraint | level | limit | size MB (INT8) | GBOPS (INT8) | layers at 4 | "
          "speed vs INT8 | top-1 (INT8) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        unit = {"size": "MB", "BOPS": "GBOPS", "latency": "ms"}[r["constraint"]]
        t1 = (f"{100 * r['top1']:.2f} ({100 * r['int8_top1']:.2f})" if r["top1"] is not None else "—")
        print(f"| {r['model']} | {r['constraint']} | {r['level']} | {r['limit']:.4g} {unit} | "
              f"{r['size_mb']:.4g} ({r['int8_size_mb']:.4g}) | {r['bops_g']:.4g} ({r['int8_bops_g']:.4g}) | "
              f"{r['n4']}/{r['layers']} | {r['speedup']:.2f}× | {t1} |")
    print()
    for label, info in extra.items():
        if "random_vs_ilp" in info:
            rv = info["random_vs_ilp"]
            rt = [100 * r["top1"] for r in rv["random"]]
            print(f"{label}: ILP at the Medium size limit {100 * rv['ilp']['top1']:.2f} "
                  f"(sensitivity {rv['ilp']['omega']:.3g}); 5 random assignments of about that size "
                  f"{min(rt):.2f}–{max(rt):.2f}, mean {np.mean(rt):.2f} (sensitivity "
                  f"{min(r['omega'] for r in rv['random']):.3g}–{max(r['omega'] for r in rv['random']):.3g})")
        print(f"{label}: {info['layers']} layers, inputs measured in {info['prepare_s']:.1f} s "
              f"(latency table: {info['latency']['source']}), ILP solve at most {info['max_solve_ms']:.0f} ms")
    print(f"machine: {cpu_info()['cpu']}")
    if out_json:
        with open(out_json, "w") as f:
            json.dump({"rows": rows, "models": extra, **cpu_info()}, f, indent=1, default=float)


def main():
    if "--table" in sys.argv:
        p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        p.add_argument("--table", action="store_true")
        p.add_argument("-o", "--output", default=os.path.join(ROOT, "models", "ilp_table.json"))
        table(p.parse_args().output)
        return 0
    return cli_main(["allocate", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
