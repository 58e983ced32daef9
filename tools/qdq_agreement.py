"""How far intq's QDQ export (`intq export --format qdq`) lands from intq's integers in
onnxruntime, on the bundled digits models: the README's QDQ table.

    python tools/qdq_agreement.py [--calib 64]

Each bundled model (both exporters) is compiled at INT8 and INT4 on the first --calib
images of models/digits_calib.npz, exported in QDQ form and run by onnxruntime on the 360
held-out images of models/digits_test.npz (never used for calibration): per model and bits,
the output integers that differ from intq's, the largest difference in output steps, the
top-1 agreement with intq and both top-1 accuracies. A model with an op the QDQ form has
no form for is listed as refused, with the line `intq export` prints.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    import onnxruntime as ort

    import intq
    from intq.errors import IntqError
    from intq.export import qdq_onnx

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", type=int, default=64, help="calibration images (default 64)")
    args = ap.parse_args(argv)
    models = os.path.join(ROOT, "models")
    calib = np.load(os.path.join(models, "digits_calib.npz"))["x"][:args.calib]
    test = np.load(os.path.join(models, "digits_test.npz"))
    x, y = test["x"], test["y"]
    print("| model | bits | output integers that differ | largest difference (steps) | "
          "top-1 agreement with intq | top-1 QDQ / intq |")
    print("|---|---|---|---|---|---|")
    for name in sorted(f for f in os.listdir(models) if f.endswith(".onnx")):
        for bits in (8, 4):
            model = intq.compile(os.path.join(models, name), calib, bits=bits)
            try:
                proto = qdq_onnx(model.integer)
            except IntqError as e:
                print(f"| {name} | INT{bits} | refused: {e} | | | |")
                continue
            sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.int64)
            want = model.run(x, integer=True)
            diff = np.abs(got - want)
            print(f"| {name} | INT{bits} | {int((diff != 0).sum())} / {diff.size} | {int(diff.max())} | "
                  f"{100 * (got.argmax(1) == want.argmax(1)).mean():.2f}% | "
                  f"{100 * (got.argmax(1) == y).mean():.2f}% / {100 * (want.argmax(1) == y).mean():.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
