"""Print intq's model size and BOPS for ResNet18 and ResNet50 (original form, stride on the
first 1x1) next to HAWQ-V3 Table 1, at INT8 and at INT4 with first and last layers at 8.

    python tools/hawq_table1.py

Random weights (size and BOPS do not depend on their values); one random 224x224 image
for calibration, which only sets scales.
"""
from __future__ import annotations

import io
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from intq.pipeline import float_graph  # noqa: E402
from intq.quant.calibrate import Calibration  # noqa: E402
from intq.quant.lower import lower_to_integer  # noqa: E402
from intq.quant.scheme import QuantConfig  # noqa: E402
from intq.report import cost_table  # noqa: E402
from models import zoo  # noqa: E402

TABLE1 = {("resnet18", 8): (11.1, 116), ("resnet18", 4): (5.8, 34),
          ("resnet50_v1", 8): (24.5, 247), ("resnet50_v1", 4): (13.1, 67)}


def main():
    print("| model | bits | intq size MB | Table 1 | intq GBOPS | Table 1 | size err | BOPS err |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("resnet18", "resnet50_v1"):
        torch.manual_seed(0)
        model = zoo.FULL_SIZE[name][0]().eval()
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), f, dynamo=False, opset_version=13)
        fg = float_graph(onnx.load_from_string(f.getvalue()))
        x = np.random.default_rng(0).uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)
        calib = Calibration(fg, x)
        for bits in (8, 4):
            t = cost_table(lower_to_integer(fg, calib, QuantConfig(default_bits=bits)))["totals"]
            size, bops = TABLE1[name, bits]
            print(f"| {name} | {'INT8' if bits == 8 else 'INT4 (first/last 8)'} | {t['size_mb']:.2f} | "
                  f"{size} | {t['bops_g']:.2f} | {bops} | {100 * (t['size_mb'] - size) / size:+.1f}% | "
                  f"{100 * (t['bops_g'] - bops) / bops:+.1f}% |")


if __name__ == "__main__":
    main()
