"""HAWQ-V3 Appendix G, measured: how far ordinary fake quantization (float requantization,
float residual adds, float scales) drifts from true integer-only inference, per layer, for
a bundled ResNet at INT8 and INT4. Prints a markdown table and writes a PNG in the style
of Figure G.1; every integer point is also checked exact against the twin.

    python tools/naive_drift.py [--model resnet] [--images 360] [-o models/naive_drift_resnet.png]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import intq  # noqa: E402
from intq.twin import from_compiled  # noqa: E402
from intq.twin.verify import drift_plot, verify  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet", help="bundled model name (models/NAME.onnx)")
    p.add_argument("--images", type=int, default=360)
    p.add_argument("-o", "--output", default=os.path.join(ROOT, "models", "naive_drift_resnet.png"))
    p.add_argument("--json", help="also write the per-point measurements here")
    args = p.parse_args()
    models = os.path.join(ROOT, "models")
    calib = np.load(os.path.join(models, "digits_calib.npz"))["x"]
    test = np.load(os.path.join(models, "digits_test.npz"))
    x, y = test["x"][:args.images], test["y"][:args.images]
    curves, top1 = {}, {}
    for bits in (8, 4):
        model = intq.compile(os.path.join(models, f"{args.model}.onnx"), calib, bits=bits)
        res = verify(model, x, "numba", naive=True)
        assert res["all_exact"], res["first_differing"]
        label = "INT8 (W8A8)" if bits == 8 else "INT4 (W4A4, first/last layer 8)"
        curves[label] = res

        fake = from_compiled(model)(x, mode="naive").numpy()
        top1[label] = (float((model.run(x).argmax(1) == y).mean()), float((fake.argmax(1) == y).mean()),
                       float((model.run(x).argmax(1) == fake.argmax(1)).mean()))
    drift_plot(curves, args.output, f"{args.model}: integer-only vs naive fake quant, "
                                    f"{len(x)} digits test images")
    labels = list(curves)
    pts = [[p for p in curves[lb]["layers"] if "naive_rel_diff" in p] for lb in labels]
    print("| # | point | op | " + " | ".join(f"{lb} ‖x_int−x_fake‖/‖x_int‖" for lb in labels) + " |")
    print("|---" * (3 + len(labels)) + "|")
    for i, row in enumerate(zip(*pts), 1):
        print(f"| {i} | `{row[0]['name']}` | {row[0]['op']} | "
              + " | ".join(f"{p['naive_rel_diff']:.2e}" for p in row) + " |")
    print()
    for lb in labels:
        ti, tf, agree = top1[lb]
        print(f"{lb}: top-1 integer {ti:.4f}, naive fake quant {tf:.4f}, "
              f"argmax agreement {agree:.4f}; every point exact against the twin")
    print(f"wrote {args.output}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({lb: curves[lb] for lb in labels}, f, indent=1)


if __name__ == "__main__":
    main()
