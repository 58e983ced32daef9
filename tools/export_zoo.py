"""Export a full-size zoo architecture (random weights) to ONNX.

    python tools/export_zoo.py resnet18 -o /tmp/resnet18.onnx [--resolution 224] [--dynamo] [--opset 13]

Names are the keys of ``models.zoo.FULL_SIZE``.  Weights are random (seed 0) and
the model is in eval mode: these files are for shape, cost and frontend checks,
not accuracy.  The legacy TorchScript exporter is the default; it folds BN into
the convs (default do_constant_folding=True, eval-mode export).  ``--dynamo``
uses the torch.export-based exporter (opset >= 18, default optimizer on, which also
folds BN) and always writes one self-contained file.
Also importable: ``from tools.export_zoo import export``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    # As a script, sys.path[0] is tools/; ``import models.zoo`` needs the repo root.
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from models.zoo import FULL_SIZE  # noqa: E402

SEED = 0


def export(name: str, path: str, resolution: int | None = None, dynamo: bool = False, opset: int = 13) -> str:
    """Export FULL_SIZE[name] with random seed-0 weights to ``path``; returns ``path``."""
    if name not in FULL_SIZE:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(FULL_SIZE)}")
    ctor, default_res = FULL_SIZE[name]
    res = resolution or default_res
    torch.manual_seed(SEED)
    model = ctor().eval()
    # Batch 2 rather than 1: torch.export specialises size-1 dims, which would
    # conflict with the dynamic batch dimension; harmless for the legacy exporter.
    x = torch.randn(2, 3, res, res)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if dynamo:
        if opset < 18:
            # The dynamo exporter emits opset-18 ops and its down-conversion fails on
            # ReduceMean (axes as an input); it then prints a traceback and silently
            # writes opset 18 anyway.  Say so up front instead.
            warnings.warn(f"--dynamo supports opset >= 18 only; using 18 instead of {opset}")
            opset = 18
        prog = torch.onnx.export(
            model, (x,), None, dynamo=True, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
        )
        # Full-size weights stay far below protobuf's 2 GB limit, so a single file
        # works and is simpler to move around than .onnx + .data.
        prog.save(path, external_data=False)
    else:
        torch.onnx.export(
            model, (x,), path, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Export a full-size zoo architecture (random weights) to ONNX.")
    ap.add_argument("name", choices=sorted(FULL_SIZE))
    ap.add_argument("-o", "--output", required=True, help="output .onnx path")
    ap.add_argument("--resolution", type=int, help="input height/width (default: the architecture's own)")
    ap.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter")
    ap.add_argument("--opset", type=int, default=13, help="ONNX opset (default 13; with --dynamo, values below 18 become 18)")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = export(args.name, args.output, args.resolution, args.dynamo, args.opset)
    print(f"{args.name}: wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
