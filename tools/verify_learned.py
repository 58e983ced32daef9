"""Every bit choice of EfficientNet-Lite0 compiled with learned rounding verifies exact on
both backends: W8A8, W4A8, W4A4 and a mixed file cycling the three (its layers taken from
the three uniform learnings), calibrated as tools/rounding_table.py calibrates (256 crops of
seed 0), verified on 8 crops of seed 1.

    python tools/verify_learned.py [--rounding learned]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounding", default="learned")
    ap.add_argument("--calib", type=int, default=256)
    a = ap.parse_args()
    import pretrained_crops as pc
    from rounding_table import crops

    import intq
    from intq.pipeline import float_graph
    from intq.twin import from_compiled
    from intq.twin.verify import verify
    from models import zoo

    xc, xe = crops(a.calib, 0), crops(8, 1)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "lite0.onnx")
        with open(path, "wb") as f:
            f.write(pc.export(zoo.efficientnet_lite0(pretrained=True).eval(), False))
        names = [n.name for n in float_graph(path).nodes if n.op in ("Conv", "Linear")]
        cycle = ["w4a8", "w4a4", "w8a8"]
        mixed = {n: cycle[i % 3] for i, n in enumerate(names[1:-1])}
        failed = 0
        for label, bits in (("W8A8", "w8a8"), ("W4A8", "w4a8"), ("W4A4", "w4a4"), ("mixed", mixed)):
            t = time.perf_counter()
            model = intq.compile(path, xc, bits=bits, rounding=a.rounding)
            twin = from_compiled(model)
            for backend in ("reference", "numba"):
                res = verify(model, xe, backend, twin=twin)
                failed += not res["all_exact"]
                print(f"{label} {model.info['rounding']['method']} {backend}: "
                      f"{'exact' if res['all_exact'] else 'DIFFERS at ' + str(res['first_differing'])} "
                      f"({len(res['layers'])} points, {time.perf_counter() - t:.0f} s)", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
