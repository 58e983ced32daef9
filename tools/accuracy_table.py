"""Print the README's accuracy table: FP32, INT8 and INT4 (W4A4, first and last layer at 8)
top-1 of every bundled model on the held-out digits split, for each calibration method;
with --bias-correction, INT8 and INT4 without and with bias correction instead.

    python tools/accuracy_table.py [--models resnet inception mobilenet] [--bias-correction]
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from intq.float_executor import run_float  # noqa: E402
from intq.pipeline import compile_model  # noqa: E402
from intq.quant.scheme import QuantConfig  # noqa: E402
from intq.reference import run_integer  # noqa: E402

# Every row names its scheme in full: no bias correction and max weight clipping unless the
# row says otherwise (compile's defaults before learned rounding came), so the README's
# tables stay what they measured.
PLAIN = dict(bias_correction=False, weight_clip="max")
SETTINGS = [("INT8 minmax", dict(default_bits=8)),
            ("INT4 minmax", dict(default_bits=4)),
            ("INT4 percentile", dict(default_bits=4, calib_method="percentile")),
            ("INT4 mse", dict(default_bits=4, calib_method="mse")),
            ("INT4 mse + mse weights", dict(default_bits=4, calib_method="mse", weight_clip="mse")),
            ("INT8 pot", dict(default_bits=8, profile="pot"))]
BIAS_CORRECTION_SETTINGS = [("INT8", dict(default_bits=8)),
                            ("INT8 + bias correction", dict(default_bits=8, bias_correction=True)),
                            ("INT4", dict(default_bits=4)),
                            ("INT4 + bias correction", dict(default_bits=4, bias_correction=True))]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet", "inception", "mobilenet", "mobilenetv3"])
    p.add_argument("--bias-correction", action="store_true",
                   help="compare INT8/INT4 without and with bias correction")
    args = p.parse_args()
    settings = BIAS_CORRECTION_SETTINGS if args.bias_correction else SETTINGS
    models = os.path.join(ROOT, "models")
    calib = np.load(os.path.join(models, "digits_calib.npz"))["x"]
    test = np.load(os.path.join(models, "digits_test.npz"))
    x, y = test["x"], test["y"]
    print("| model | FP32 | " + " | ".join(s for s, _ in settings) + " |")
    print("|---" * (len(settings) + 2) + "|")
    for name in args.models:
        cells = []
        fp32 = None
        for _, kw in settings:
            ig, fg, _ = compile_model(os.path.join(models, f"{name}.onnx"), calib, QuantConfig(**{**PLAIN, **kw}))
            if fp32 is None:
                fp32 = (run_float(fg, x)[0].argmax(1) == y).mean() * 100
            cells.append((run_integer(ig, x)[0].argmax(1) == y).mean() * 100)
        print(f"| {name} | {fp32:.2f} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
