"""W4A4 quantization-aware training of the bundled digits nets on their training split
(scikit-learn's digits, rebuilt by models/digits.load_split), with post-training
quantization as the baseline: prints the README's QAT table (held-out top-1 before and
after) and checks every fine-tuned model exact against its twin with `intq verify`.

    python tools/qat_digits.py [--models resnet inception mobilenet] [--epochs 6] [--lr 2e-4]
                               [--save-train models/digits_train.npz]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import intq  # noqa: E402
from intq.quant.scheme import QuantConfig  # noqa: E402
from intq.twin.qat import train  # noqa: E402
from intq.twin.verify import verify  # noqa: E402
from models.digits import N_CALIB, load_split  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet", "inception", "mobilenet"])
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--save-train", help="also write the training split as .npz (for `intq qat`)")
    args = p.parse_args()
    xtr, ytr, xte, yte = load_split()
    if args.save_train:
        np.savez(args.save_train, x=xtr, y=ytr)
    calib = xtr[:N_CALIB]  # the same images as models/digits_calib.npz
    print(f"| model | FP32 | W{args.bits}A{args.bits} PTQ | W{args.bits}A{args.bits} QAT "
          f"({args.epochs} epochs) | QAT seconds | verify |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        path = os.path.join(ROOT, "models", f"{name}.onnx")
        ptq = intq.compile(path, calib, bits=args.bits)
        acc = ptq.evaluate(xte, yte)
        t0 = time.perf_counter()
        model, _ = train(path, xtr, ytr, QuantConfig(default_bits=args.bits), epochs=args.epochs,
                         lr=args.lr, calib=calib, log=None)
        secs = time.perf_counter() - t0
        after = model.evaluate(xte, yte)["int_top1"]
        exact = all(verify(model, xte, b)["all_exact"] for b in ("numba", "reference"))
        print(f"| {name} | {100 * acc['float_top1']:.2f} | {100 * acc['int_top1']:.2f} | "
              f"{100 * after:.2f} | {secs:.1f} | {'all layers exact' if exact else 'NOT EXACT'} |")


if __name__ == "__main__":
    main()
