"""The dense-prediction zoo (models/zoo.py DENSE) end to end, with seeded weights:

    python tools/dense_zoo.py [-o dense_zoo.json] [--res 320] [--images 16] [--no-latency]

For each of the YOLOv8n-style, YOLOX-style, DBNet-style and U-Net networks, exported by
the legacy exporter (dynamic batch) at --res (the U-Net at half of it): the float graph
against onnxruntime; INT8 and a mixed bit table (every other conv W4A8) compiled from
--images calibration images, then on as many other images: every output against float
(cosine, mean and largest error in output steps, `evaluate.compare_outputs`), the
YOLOv8 class-score error in its full decoded output, the Numba backend against the
reference and the twin (`verify`) on two images, and the steps the Numba plan hands to
the reference executor (ops its kernels cannot address). Latency (unless --no-latency):
intq INT8 on the Numba backend against onnxruntime's `quantize_static` of the same file
(QDQ, per channel, after `quant_pre_process`), batch 1 and 8, each peer in its own
process, as tools/bench_kernels.py does. Run it alone: timings on a shared machine mean
nothing beside another job. Writes JSON and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import bench_kernels  # noqa: E402  (its onnxruntime workers and timer)

NAMES = ("yolov8n_style", "yolox_style", "dbnet_style", "unet")


def resolution(name, res):
    return res // 2 if name == "unet" else res


def export(name, res, path):
    import onnx
    import torch

    from models import zoo

    torch.manual_seed(0)
    model = zoo.sane_random_batchnorm(zoo.DENSE[name][0](res).eval())
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, res, res),), f, dynamo=False, opset_version=13,
                          input_names=["images"], output_names=["output"],
                          dynamic_axes={"images": {0: "batch"}, "output": {0: "batch"}})
    onnx.save(onnx.load_from_string(f.getvalue()), path)


def accuracy(name, path, calib, test):
    import intq
    from intq.evaluate import compare_outputs
    from intq.float_executor import run_float
    from intq.kernels.plan import StagedStep
    from intq.pipeline import float_graph
    from intq.twin.verify import verify

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from conftest import ort_run, rel_err

    row = {"model": name, "input": list(calib.shape[1:])}
    fg = float_graph(path)
    row["float_vs_onnxruntime_rel_err"] = rel_err(run_float(fg, test[:2])[0], ort_run(path, test[:2])[0])
    convs = [n.name for n in fg.nodes if n.op == "Conv"]
    configs = {"INT8": 8, "mixed": {c: ("w4a8" if i % 2 else "w8a8") for i, c in enumerate(convs)}}
    for label, bits in configs.items():
        t = time.perf_counter()
        model = intq.compile(path, calib=calib, bits=bits)
        r = {"compile_s": time.perf_counter() - t, "size_mb": model.report()["totals"]["size_mb"]}
        r["outputs"] = compare_outputs(model.integer, test, model.float, progress=False)["outputs"]
        if name == "yolov8n_style":
            y, ref = model.run(test), run_float(model.float, test)[0]
            r["class_score_mae"] = float(np.abs(y[:, 4:] - ref[:, 4:]).mean())
            r["box_max_abs_px"] = float(np.abs(y[:, :4] - ref[:, :4]).max())
        q = model.run(test[:2], integer=True)
        r["numba_equals_reference"] = bool(np.array_equal(q, model.run(test[:2], "reference", integer=True)))
        r["verify_exact"] = bool(verify(model, test[:2])["all_exact"])
        plan = model.executor("numba").plan
        # Every step is a kernel; StagedStep runs one through a channels-inner scratch.
        ops = {n.name: n.op for n in plan.fused.nodes}
        r["staged_steps"] = sorted({ops.get(s.name, s.name) for s in plan.steps if isinstance(s, StagedStep)})
        row[label] = r
    return row


def worker_intq(models, repeat, workdir):
    """intq INT8 on the Numba backend, per model and batch (compiled in this process)."""
    import intq
    from intq.bench import _input
    from intq.executor import make_executor

    calib = np.load(os.path.join(workdir, "calib.npz"))["x"]
    res = []
    for name in models:
        model = intq.compile(os.path.join(workdir, f"{name}.onnx"), calib, bits=8)
        ex = make_executor(model.integer, "numba")
        for batch in bench_kernels.BATCHES:
            x = _input(model.integer, batch)
            ex.run(x)
            res.append({"model": name, "batch": batch,
                        "seconds": bench_kernels.timeit(lambda: ex.run(x), repeat)})
    return res


WORKERS = {"intq": worker_intq, "ort-prepare": bench_kernels.worker_ort_prepare,
           "ort-e2e": bench_kernels.worker_ort_e2e}


def run_worker(kind, models, repeat, workdir):
    spec, out = os.path.join(workdir, f"{kind}.in.json"), os.path.join(workdir, f"{kind}.out.json")
    with open(spec, "w") as f:
        json.dump(models, f)
    env = {**os.environ, "OMP_NUM_THREADS": str(bench_kernels.THREADS),
           "NUMBA_NUM_THREADS": str(bench_kernels.THREADS)}
    subprocess.run([sys.executable, __file__, "--worker", kind, spec, out, str(repeat), workdir],
                   check=True, env=env)
    with open(out) as f:
        return json.load(f)


def tables(result) -> str:
    lines = ["| model | input | bits | output cosine (min) | mean / max error (steps) | numba = reference | "
             "verify | staged steps |", "|---|---|---|---|---|---|---|---|"]
    for row in result["accuracy"]:
        for label in ("INT8", "mixed"):
            r = row[label]
            (o,) = r["outputs"].values()
            extra = f", class-score MAE {r['class_score_mae']:.4f}" if "class_score_mae" in r else ""
            lines.append(f"| {row['model']} | {'x'.join(map(str, row['input']))} | {label} | "
                         f"{o['cosine_mean']:.5f} ({o['cosine_min']:.5f}){extra} | "
                         f"{o['mean_abs_steps']:.2f} / {o['max_abs_steps']:.0f} | {r['numba_equals_reference']} | "
                         f"{r['verify_exact']} | {', '.join(r['staged_steps']) or 'none'} |")
    if result.get("latency"):
        lines += ["", "| model | batch | onnxruntime QDQ ms | intq INT8 ms | intq / onnxruntime |", "|---|---|---|---|---|"]
        ort = {(r["model"], r["batch"]): r["seconds"] for r in result["latency"]["ort"]}
        for r in result["latency"]["intq"]:
            o = ort[(r["model"], r["batch"])]
            lines.append(f"| {r['model']} | {r['batch']} | {o * 1e3:.2f} | {r['seconds'] * 1e3:.2f} | "
                         f"{r['seconds'] / o:.2f} |")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, spec, out, repeat, workdir = sys.argv[2:7]
        with open(spec) as f:
            models = json.load(f)
        with open(out, "w") as f:
            json.dump(WORKERS[kind](models, int(repeat), workdir), f)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default="dense_zoo.json")
    ap.add_argument("--res", type=int, default=320)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--no-latency", action="store_true")
    args = ap.parse_args()
    from intq.kernels import cpu

    result = {"cpu": cpu.cpu_name(), "kernel_path": cpu.PATH,
              "res": args.res, "accuracy": []}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as workdir:
        for name in NAMES:
            res = resolution(name, args.res)
            path = os.path.join(workdir, f"{name}.onnx")
            export(name, res, path)
            calib = rng.standard_normal((args.images, 3, res, res)).astype(np.float32)
            test = rng.standard_normal((args.images, 3, res, res)).astype(np.float32)
            t = time.perf_counter()
            result["accuracy"].append(accuracy(name, path, calib, test))
            print(f"  {name}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
        if not args.no_latency:
            by_res: dict = {}   # the workers read one calibration file per resolution
            for name in NAMES:
                by_res.setdefault(resolution(name, args.res), []).append(name)
            result["latency"] = {"intq": [], "ort": []}
            for res, names in by_res.items():
                calib = rng.standard_normal((args.images, 3, res, res)).astype(np.float32)
                np.savez(os.path.join(workdir, "calib.npz"), x=calib)
                run_worker("ort-prepare", names, args.repeat, workdir)
                result["latency"]["ort"] += run_worker("ort-e2e", names, args.repeat, workdir)
                result["latency"]["intq"] += run_worker("intq", names, args.repeat, workdir)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(tables(result))


if __name__ == "__main__":
    main()
