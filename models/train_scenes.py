"""Train the digit-scene detector and segmenter (`models.scenes`, `models.zoo.SCENE_MODELS`)
and export them to models/scenes/<name>.onnx (legacy exporter, opset 13, dynamic batch,
BatchNorm folded as an ordinary export does).

    python models/train_scenes.py [--epochs 12] [--scenes 4000] [--only detector|segmenter]

Training scenes come from the digits split's training images (seed 1), so the test scenes
(`scenes_split`, drawn from its held-out images) hold no digit seen in training or in
calibration. Writes models/scenes/metrics.json with the float models' own accuracy on the
test scenes: the detector's recall and precision against the true boxes (IoU >= 0.5, same
class), the segmenter's mask IoU against the true masks.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from models import scenes, zoo  # noqa: E402
from models.digits import load_split  # noqa: E402

OUT = os.path.join(HERE, "scenes")
N_CALIB, N_TEST = 256, 400


def scenes_split(n_train: int = 4000):
    """(train, calib, test) scene sets, each (x, boxes, masks); deterministic."""
    x_tr, y_tr, x_te, y_te = load_split()
    return (scenes.make_scenes(x_tr, y_tr, n_train, seed=1),
            scenes.make_scenes(x_tr, y_tr, N_CALIB, seed=2),
            scenes.make_scenes(x_te, y_te, N_TEST, seed=3))


def train_detector(train, epochs, log):
    x, boxes, _ = train
    heat_t, box_t, mask = (torch.as_tensor(a) for a in scenes.detector_targets(boxes, len(x)))
    x = torch.as_tensor(x)
    torch.manual_seed(0)
    model = zoo.DigitsDetector()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=epochs * (len(x) // 64 + 1))
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            heat, box = model(x[idx])
            # Focal-style: hard negatives and the peaks weigh most (CenterNet's loss, simplified).
            t = heat_t[idx]
            pos = (t > 0.99).float()
            w = pos * 4 + (1 - pos) * (1 - t) ** 4
            loss_h = (F.binary_cross_entropy(heat.clamp(1e-4, 1 - 1e-4), pos, reduction="none")
                      * w * (heat - pos).abs() ** 2).sum() / max(pos.sum(), 1)
            m = mask[idx]
            loss_b = ((box - box_t[idx]).abs() * m).sum() / max(m.sum(), 1)
            loss = loss_h + loss_b
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        log(f"detector epoch {epoch + 1}: loss {total / len(x):.4f}")
    return model.eval()


def train_segmenter(train, epochs, log):
    x, _, masks = train
    x, masks = torch.as_tensor(x), torch.as_tensor(masks)
    torch.manual_seed(0)
    model = zoo.DigitsSegmenter()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=epochs * (len(x) // 64 + 1))
    weight = torch.ones(11)
    weight[0] = 0.2   # ink is a tenth of the canvas
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), masks[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        log(f"segmenter epoch {epoch + 1}: loss {total / len(x):.4f}")
    return model.eval()


def export(model, path, outputs):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 1, scenes.SIZE, scenes.SIZE),), f, dynamo=False,
                          opset_version=13, input_names=["image"], output_names=outputs,
                          dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}})
    with open(path, "wb") as out:
        out.write(f.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--scenes", type=int, default=4000)
    ap.add_argument("--only", choices=["detector", "segmenter"],
                    help="train one of the two (the other's files and metrics are kept)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    log = lambda s: print(f"[{time.time() - t0:5.0f} s] {s}", flush=True)
    train, _, test = scenes_split(args.scenes)
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "metrics.json")
    metrics = {}
    if os.path.exists(path):
        with open(path) as f:
            metrics = json.load(f)
    run = {"epochs": args.epochs, "train_scenes": args.scenes}
    if args.only != "segmenter":
        det = train_detector(train, args.epochs, log)
        with torch.no_grad():
            heat, box = det(torch.as_tensor(test[0]))
        hit, n_found, n_true = scenes.match(scenes.decode(heat.numpy(), box.numpy()), test[1])
        metrics["detector"] = {"recall": hit / n_true, "precision": hit / max(n_found, 1),
                               "test_scenes": len(test[0]), "true_boxes": n_true, **run,
                               "seconds": time.time() - t0}
        export(det, os.path.join(OUT, "digits_detector.onnx"), ["heatmap", "boxes"])
    if args.only != "detector":
        t1 = time.time()
        seg = train_segmenter(train, args.epochs, log)
        with torch.no_grad():
            seg_map = seg(torch.as_tensor(test[0])).argmax(1).numpy()
        metrics["segmenter"] = {"mask_iou": float(np.mean([scenes.mask_iou(a, b) for a, b in zip(seg_map, test[2])])),
                                "test_scenes": len(test[0]), **run, "seconds": time.time() - t1}
        export(seg, os.path.join(OUT, "digits_segmenter.onnx"), ["logits"])
    log(json.dumps(metrics))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=2)
    os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
