"""Train the small digits nets and regenerate every bundled artifact in models/.

Usage (from anywhere)::

    python models/train_digits.py                 # all four nets, writes into models/
    python models/train_digits.py --only resnet   # one net; accuracy.json is merged, not replaced
    python models/train_digits.py --out /tmp/zoo  # write somewhere else

For each net in ``models.zoo.SMALL_MODELS`` this writes ``<name>.pt`` (state_dict),
``<name>.onnx`` (legacy TorchScript exporter, opset 13) and ``<name>.dynamo.onnx``
(torch.export-based exporter, opset 18), both keeping BatchNormalization nodes
unfolded, plus ``digits_calib.npz``, ``digits_test.npz`` and ``accuracy.json``.
Data: scikit-learn ``load_digits``, stratified 80/20 split with random_state=0
(1437 train / 360 test), preprocessed by ``models.digits.preprocess`` (numpy only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    # Run as a script, sys.path[0] is models/ itself; ``import models.*`` needs the root.
    sys.path.insert(0, ROOT)

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.digits import N_CALIB, load_split  # noqa: E402
from models.zoo import SMALL_MODELS, count_params  # noqa: E402

SEED = 0
BATCH = 64
MAX_SHIFT = 2  # pixels on the 16x16 grid == exactly one pixel of the original 8x8 digit
# Per-net epochs: chosen so each trains in well under two minutes on 2 cores while
# comfortably clearing 97% test accuracy.
EPOCHS = {"resnet": 30, "inception": 30, "mobilenet": 40, "mobilenetv3": 40}
LR = 3e-3
WEIGHT_DECAY = 1e-4
MAX_ONNX_BYTES = 2 * 1024 * 1024


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift every image independently by up to MAX_SHIFT pixels, filling with zeros."""
    n, _, h, w = x.shape
    padded = F.pad(x, (MAX_SHIFT,) * 4)
    dy = torch.randint(0, 2 * MAX_SHIFT + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * MAX_SHIFT + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


def train(name: str, x_tr: np.ndarray, y_tr: np.ndarray, epochs: int):
    """Train SMALL_MODELS[name] from a fixed seed; returns (model, wall seconds)."""
    torch.manual_seed(SEED)
    model = SMALL_MODELS[name]()
    # A private generator for shuffling/augmentation, so the data order does not
    # depend on how many random numbers model construction happened to consume.
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    steps_per_epoch = (len(xt) + BATCH - 1) // BATCH
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(xt), BATCH):
            idx = perm[i:i + BATCH]
            xb, yb = random_shift(xt[idx], gen), yt[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            total += len(idx)
        if epoch % 10 == 9 or epoch == epochs - 1:
            print(f"  [{name}] epoch {epoch + 1:3d}/{epochs}  loss {loss_sum / total:.4f}  "
                  f"train acc {correct / total:.4f}  ({time.perf_counter() - t0:.1f}s)", flush=True)
    return model.eval(), time.perf_counter() - t0


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def ort_logits(path: str, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def op_types(path: str) -> list[str]:
    return sorted({n.op_type for n in onnx.load(path).graph.node})


def check_onnx(path: str, model, x_test: np.ndarray, batch_sizes=(1, 7, 360)) -> float:
    """Structural + numerical checks of one export; returns max |ort - torch| seen."""
    size = os.path.getsize(path)
    assert size < MAX_ONNX_BYTES, f"{path} is {size} bytes"
    m = onnx.load(path, load_external_data=False)
    onnx.checker.check_model(m)
    # Self-contained: a tensor stored in an external .data file would make the .onnx
    # unusable once copied alone.
    ext = [t.name for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert not ext, f"{path} has external data: {ext[:3]}"
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    assert bns, f"{path} has no BatchNormalization nodes (BN was folded)"
    for n in bns:
        # training_mode=1 would make ORT normalise with batch statistics: the test
        # that the export really is in eval mode.
        tm = [a.i for a in n.attribute if a.name == "training_mode"]
        assert tm in ([], [0]), f"{path}: {n.name} has training_mode={tm}"
        assert len(n.output) == 1, f"{path}: {n.name} outputs running stats (training BN)"
    worst = 0.0
    for bs in batch_sizes:
        xb = x_test[:bs]
        diff = float(np.abs(ort_logits(path, xb) - torch_logits(model, xb)).max())
        worst = max(worst, diff)
    assert worst < 1e-4, f"{path}: max |ort - torch| = {worst}"
    return worst


def export_legacy(model, path: str, example: torch.Tensor) -> None:
    torch.onnx.export(
        model.eval(), (example,), path, dynamo=False, opset_version=13,
        # PRESERVE + no constant folding keeps Conv and BatchNormalization as separate
        # nodes (EVAL mode would fold BN into the conv weights), so the compiler's own
        # BN folding is what gets exercised.
        training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def export_dynamo(model, path: str, example: torch.Tensor) -> None:
    # The dynamic_shapes key is the forward() argument name ("x" for every zoo net),
    # not the ONNX input name.
    arg = "x"
    prog = torch.onnx.export(
        model.eval(), (example,), None, dynamo=True, optimize=False, opset_version=18,
        input_names=["input"], output_names=["logits"],
        dynamic_shapes={arg: {0: torch.export.Dim("batch", min=1, max=1024)}},
    )
    # Saving through the ONNXProgram with external_data=False guarantees one
    # self-contained file regardless of the exporter's size heuristics.
    prog.save(path, external_data=False)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(SMALL_MODELS), help="train/export just this net")
    ap.add_argument("--out", default=os.path.join(ROOT, "models"), help="output folder (default: models/)")
    ap.add_argument("--epochs", type=int, help="override the per-net epoch count (quick experiments)")
    args = ap.parse_args(argv)

    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)
    x_tr, y_tr, x_te, y_te = load_split()
    print(f"digits: {len(x_tr)} train / {len(x_te)} test, input {x_tr.shape[1:]}", flush=True)
    np.savez(os.path.join(args.out, "digits_calib.npz"), x=x_tr[:N_CALIB].astype(np.float32))
    np.savez(os.path.join(args.out, "digits_test.npz"), x=x_te.astype(np.float32), y=y_te.astype(np.int64))

    acc_path = os.path.join(args.out, "accuracy.json")
    results = {}
    if os.path.exists(acc_path):
        with open(acc_path) as f:
            results = json.load(f)

    names = [args.only] if args.only else list(SMALL_MODELS)
    # Batch 2, not 1: torch.export specialises size-1 dims, which would clash with
    # the dynamic batch dimension.
    example = torch.from_numpy(x_te[:2])
    for name in names:
        epochs = args.epochs or EPOCHS[name]
        print(f"== {name}: {count_params(SMALL_MODELS[name]())} params, {epochs} epochs", flush=True)
        model, wall = train(name, x_tr, y_tr, epochs)
        print(f"  [{name}] training wall time {wall:.1f}s", flush=True)
        torch.save(model.state_dict(), os.path.join(args.out, f"{name}.pt"))
        torch_top1 = accuracy(torch_logits(model, x_te), y_te)

        legacy = os.path.join(args.out, f"{name}.onnx")
        dynamo = os.path.join(args.out, f"{name}.dynamo.onnx")
        export_legacy(model, legacy, example)
        export_dynamo(model, dynamo, example)
        entry = {
            "params": count_params(model),
            "epochs": epochs,
            "train_wall_s": round(wall, 1),
            "torch_top1": torch_top1,
        }
        for key, path in (("onnx", legacy), ("dynamo_onnx", dynamo)):
            diff = check_onnx(path, model, x_te)
            entry[f"{key}_top1"] = accuracy(ort_logits(path, x_te), y_te)
            entry[f"{key}_max_abs_diff"] = diff
            entry[f"{key}_bytes"] = os.path.getsize(path)
            entry[f"{key}_ops"] = op_types(path)
        results[name] = entry
        print(f"  [{name}] test top-1: torch {torch_top1:.4f}  ort legacy {entry['onnx_top1']:.4f}  "
              f"ort dynamo {entry['dynamo_onnx_top1']:.4f}", flush=True)

    with open(acc_path, "w") as f:
        json.dump(dict(sorted(results.items())), f, indent=2)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
