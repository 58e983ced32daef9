"""Time `intq verify` on a full-size ResNet50 at 224x224 (seeded random weights, INT8, the
Numba backend) on 8 images: the README's verification timing.

    python tools/verify_resnet50.py [--folder /tmp/r50]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import intq  # noqa: E402
from tools.ilp_bitalloc import full_size_onnx  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default="/tmp/intq-r50", help="where the artifact and inputs go")
    args = p.parse_args()
    os.makedirs(args.folder, exist_ok=True)
    art, data = os.path.join(args.folder, "r50.intq"), os.path.join(args.folder, "x8.npz")
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    intq.compile(full_size_onnx("resnet50", 224, dynamic_batch=True), x[:4], bits=8).save(art)
    np.savez(data, x=x)
    cmd = [sys.executable, "-m", "intq", "verify", art, "--inputs", data]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout else proc.stderr.strip())
    print(f"intq verify {art} --inputs {data}: exit {proc.returncode}, {wall:.1f} s wall")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
