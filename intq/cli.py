"""The `intq` command: one function per subcommand, user errors as one line and exit 2."""
from __future__ import annotations

import argparse
import functools
import json
import sys

from . import __version__
from .errors import IntqError


def _onnx_model(args):
    """The ONNX model a command works on: the file, or (with --input-shape) the file with
    its dynamic input dimensions fixed, and (with --outputs) ended at those tensors."""
    from .frontend.input_shapes import with_input_shapes
    from .frontend.outputs import with_outputs

    model = with_input_shapes(args.model, getattr(args, "input_shape", None))
    return with_outputs(model, getattr(args, "outputs", None))


def cmd_inspect(args) -> int:
    from .analysis import format_table, layer_table
    from .pipeline import float_graph

    # Unsupported ops are shown and marked, not errors: only an unreadable file fails.
    table = layer_table(float_graph(_onnx_model(args), allow_unsupported=True))
    print(json.dumps(table, indent=2) if args.json else format_table(table))
    return 0


def _check_output(path) -> None:
    """Fail before any work if `path` cannot be written (no folder, or it is a folder)."""
    import os

    from .errors import IntqError

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IntqError(f"{path}: is a directory")
    if not os.path.isdir(folder):
        raise IntqError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise IntqError(f"{path}: folder {folder} is not writable")


def _config(args):
    from .quant.scheme import QuantConfig

    default, table = QuantConfig.parse_bits(args.bits)
    return QuantConfig(profile=args.profile, default_bits=default, bits=table,
                       calib_method=args.calib_method, residual_bits=args.residual_bits,
                       weight_clip=args.weight_clip,
                       bias_correction=getattr(args, "bias_correction", True),
                       rounding=getattr(args, "rounding", "nearest"))


def _rounding_options(args) -> dict:
    """How `--rounding` learns (`intq.rounding.learn_rounding`): its settings, the torch
    device, and a progress bar over the blocks on a terminal."""
    from .evaluate import ProgressBar

    if args.rounding == "nearest":
        return {}
    if args.rounding_steps is not None and args.rounding_steps < 1:
        raise IntqError("--rounding-steps must be at least 1")
    from .rounding import Settings, check_device

    check_device(args.device)

    settings = Settings() if args.rounding_steps is None else Settings(steps=args.rounding_steps)
    bar = ProgressBar(1)

    def progress(done, total):
        bar.total = total
        bar.update(done)
        if done == total:
            bar.close()
    return {"settings": settings, "device": args.device, "progress": progress}


def _load_model(path):
    from .model import load

    return load(path)


def _check_plotting(flag: str, path) -> None:
    """Fail before any work when a plot is asked for and matplotlib (optional: only plots
    need it) is missing."""
    if not path:
        return
    _check_output(path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise IntqError(f"{flag} draws with matplotlib, which is not installed: "
                        f"pip install 'intq[plot]' (or: pip install matplotlib)") from None


def cmd_compile(args) -> int:
    from .data import Data, onnx_input_chw
    from .model import compile as compile_onnx

    _check_output(args.output)
    onnx_model = _onnx_model(args)
    # Read only for an image folder, and then once for calibration and eval data together.
    chw = functools.cache(lambda: onnx_input_chw(onnx_model))
    cfg = _config(args)
    # Eval data opened (and its labels checked) before the minutes calibration can take.
    ev = args.eval_data and Data(args.eval_data, chw=chw, keys=("x", "x_eval"),
                                 label_keys=("y", "y_eval"), what="eval data",
                                 preprocess=args.preprocess).require_labels()
    calib = Data(args.calib, chw=chw, keys=("x", "x_calib"), what="calibration data",
                 preprocess=args.preprocess).load()[0]
    model = compile_onnx(onnx_model, calib, config=cfg, rounding_options=_rounding_options(args))
    model.info["source"] = str(args.model)
    model.info["calibration"]["data"] = str(args.calib)
    if ev:
        model.info["accuracy"] = dict(model.evaluate(ev, progress=True), data=str(args.eval_data))
    model.save(args.output)
    from .report import bit_width_counts

    info, layers = model.info, model.integer.metadata["layers"]
    counts = bit_width_counts(layers)
    mix = "/".join(counts) + (f" ({' + '.join(map(str, counts.values()))})" if len(counts) > 1 else "")
    print(f"wrote {args.output}: {len(layers)} layers at {mix}, "
          f"profile {args.profile}, calibrated on {info['calibration']['images']} images "
          f"({info['calibration']['seconds']:.1f} s)")
    if "rounding" in info:
        r = info["rounding"]
        took = ("from the cache" if r.get("cached") else
                ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items()))
        print(f"rounding {r['method']} on {r['images']} images ({took})")
    if "accuracy" in info:
        a = info["accuracy"]
        print(f"top-1 int {a.get('int_top1', float('nan')):.4f} float {a.get('float_top1', float('nan')):.4f}")
    return 0


def cmd_run(args) -> int:
    """Streams the input: a memory-mapped .npy run `--batch` images at a time, each batch's
    output appended to the (atomically written) .npy, so memory is one batch, not the file."""
    import numpy as np

    from .artifact import atomic_write
    from .data import NpyWriter, load_npy

    _check_output(args.output)
    if args.batch < 1:
        raise IntqError(f"--batch must be at least 1, got {args.batch}")
    model = _load_model(args.model)
    x = load_npy(args.input, "input", mmap=True)
    if x.dtype.kind not in "fiu":
        raise IntqError(f"{args.input}: input must be numeric, got {x.dtype}")
    name = model.integer.inputs[0]
    want = model.integer.values[name].shape
    if x.ndim != len(want) or tuple(x.shape[1:]) != tuple(want[1:]):  # the file, before a batch
        shown = tuple("N" if w is None else w for w in want)
        raise IntqError(f"{args.input}: input {name!r} has shape {x.shape}, the model expects {shown}")
    if len(x) == 0:
        raise IntqError(f"{args.input}: no images in the input")
    out = model.integer.outputs[0]
    shape = (len(x), *model.integer.values[out].shape[1:])
    with atomic_write(args.output) as f:
        writer = NpyWriter(f, shape, np.int32 if args.int else np.float32)
        for part in model.run_batches(x, args.batch, args.backend, integer=args.int):
            writer.write(part)
        writer.close()
    if args.int:
        oq = model.output_qparams
        print(f"integer logits {shape}: real = {oq['scale']:.9g} * (q - {oq['zero_point']})")
    else:
        print(f"wrote {args.output}: logits {shape}")
    return 0


def _float_side(onnx_path, integer):
    """The float graph of `onnx_path` for comparing with `integer`: its input fixed to the
    artifact's shape and, where the artifact was ended at chosen tensors (--outputs), the
    ONNX ended there too."""
    from .frontend.input_shapes import with_input_shapes
    from .frontend.outputs import with_outputs
    from .pipeline import float_graph

    shape = integer.values[integer.inputs[0]].shape
    proto = with_input_shapes(onnx_path, (shape[0] or 1, *shape[1:]))   # read and checked
    if [o.name for o in proto.graph.output] != list(integer.outputs):
        proto = with_outputs(proto, list(integer.outputs))
    return float_graph(proto)


def cmd_eval(args) -> int:
    from .data import Data
    from .evaluate import compare_outputs
    from .model import Model

    model = _load_model(args.model)
    if args.float:
        model = Model(model.integer, _float_side(args.float, model.integer), model.info)
    data = Data(args.data, chw=model.input_chw, keys=("x", "x_eval"), label_keys=("y", "y_eval"),
                what="eval data", preprocess=args.preprocess)
    several = len(model.integer.outputs) > 1
    compare = bool(args.float) or several or not data.labelled
    if compare and model.float is None:
        raise IntqError(f"{args.model}: holds no float graph to compare with; give --float MODEL.onnx")
    if not compare:
        data.require_labels()
    batch = 256 if data.is_folder else 64
    # Folders and mapped files stream; 256 images at a time keeps decoding and the bar brisk.
    res = model.evaluate(data, backend=args.backend, batch=batch, progress=True) \
        if data.labelled and not several else {}
    if compare:
        res["outputs"] = compare_outputs(model.integer, data, model.float, args.backend, batch,
                                         executor=model.executor(args.backend))["outputs"]
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    if "int_top1" in res:
        print(f"images          {res['images']}")
        print(f"int top-1       {res['int_top1']:.4f}")
        if "float_top1" in res:
            print(f"float top-1     {res['float_top1']:.4f}")
            print(f"top-1 agreement {res['top1_agreement']:.4f}")
            print(f"logit cosine    {res['cosine_mean']:.6f} (min {res['cosine_min']:.6f})")
    if "outputs" in res:
        print(f"{'output':<24} {'shape':<18} {'cosine':>9} {'(min)':>9} {'mean |err|':>11} {'max |err|':>10}  (in output steps)")
        for name, o in res["outputs"].items():
            shape = "x".join(map(str, o["shape"]))
            print(f"{name[:24]:<24} {shape:<18} {o['cosine_mean']:>9.6f} {o['cosine_min']:>9.6f} "
                  f"{o['mean_abs_steps']:>11.3f} {o['max_abs_steps']:>10.2f}")
    return 0


def cmd_bench(args) -> int:
    from .artifact import atomic_write
    from .bench import bench, latency_table

    if args.latency_table:
        _check_output(args.latency_table)
        if args.model.endswith(".onnx"):
            from .pipeline import float_graph

            fg = float_graph(_onnx_model(args))
        else:
            fg = _load_model(args.model).float
            if fg is None:
                raise IntqError(f"{args.model}: the artifact holds no float graph to recompile")
        table = latency_table(fg, args.batch, args.repeat)
        with atomic_write(args.latency_table) as f:
            f.write(json.dumps(table, indent=2).encode())
        print(f"wrote {args.latency_table}: {len(table['layers'])} layers at INT4 and INT8, "
              f"batch {args.batch}, {table['cpu']}")
        return 0
    res = bench(_load_model(args.model).integer, args.batch, args.repeat, args.backend,
                args.per_layer)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['cpu']} ({res['threads']} threads, kernels: {res['kernel_path']}), "
          f"backend {res['backend']}, batch {res['batch']}")
    print(f"latency  median {res['median_ms']:.3f} ms  min {res['min_ms']:.3f}  max {res['max_ms']:.3f} "
          f"over {res['repeat']} runs ({res['gops']:.1f} GOPS)")
    print(f"compile  {res['compile_s']:.2f} s (executor build + first call, excluded above)")
    print(f"memory   peak {res['peak_memory_mb']:.0f} MB")
    if args.per_layer:
        print(f"{'step':<40} {'kind':<10} {'ms':>9} {'GOPS':>8}")
        for r in res["layers"]:
            g = f"{r['gops']:8.1f}" if r.get("gops") else ""
            print(f"{r['name'][:40]:<40} {r['kind']:<10} {r['ms']:9.4f} {g}")
    return 0


def cmd_export(args) -> int:
    """Writes the ONNX file atomically, then runs it in onnxruntime (when installed) on
    --data or on seeded Gaussian images and compares every output with intq's integers."""
    import json

    import numpy as np

    from .export import check_with_onnxruntime, onnxruntime_available, save_onnx, to_onnx

    _check_output(args.output)
    if args.images < 1:
        raise IntqError(f"--images must be at least 1, got {args.images}")
    model = _load_model(args.model)
    x = None
    if args.data:   # read before anything is written, so bad data leaves no file behind
        x = np.asarray(_model_images(model, args.data, "check data")[:args.images], np.float32)
    proto = to_onnx(model.integer, args.format)
    save_onnx(proto, args.output)
    kind = "standard ONNX integer ops" if args.format == "integer" else "QDQ ops"
    head = f"wrote {args.output}: {len(proto.graph.node)} {kind} (opset {proto.opset_import[0].version})"
    if args.no_check:
        print(head)
        return 0
    if not onnxruntime_available():
        print(f"{head}; onnxruntime is not installed, so the file was not run")
        return 0
    if x is None:
        x = np.random.default_rng(0).standard_normal((args.images, *model.input_chw)).astype(np.float32)
    report = check_with_onnxruntime(proto, model, x)
    if args.json:
        print(json.dumps(report, indent=2))
    total = sum(r["elements"] for r in report["outputs"].values())
    differ = sum(r["differ"] for r in report["outputs"].values())
    worst = max(r["max_steps"] for r in report["outputs"].values())
    print(f"{head}; onnxruntime on {len(x)} images: {differ} of {total} output integers differ"
          + (f" (by up to {worst} steps)" if differ else " (bit-exact)"))
    # the integer form must be exact; the QDQ form rounds as onnxruntime does (reported)
    return 0 if differ == 0 or args.format == "qdq" else 1


def cmd_report(args) -> int:
    from .report import format_report

    rep = _load_model(args.model).report()
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        card = rep.pop("card")
        print(format_report(rep, card))
    return 0


def _model_images(model, source, what: str, preprocess: str = "imagenet"):
    """The images of DATA `source` for `model`'s input (one line if their shape is not
    the model's)."""
    from .data import load_data

    chw = model.input_chw
    x, _ = load_data(source, chw, ("x", "x_eval", "x_calib"), what=what, preprocess=preprocess)
    if tuple(x.shape[1:]) != tuple(chw):
        raise IntqError(f"{what} {source}: images have shape {tuple(x.shape[1:])}, the model "
                        f"expects {tuple(chw)}")
    return x


def cmd_verify(args) -> int:
    if args.plot and not args.naive:
        raise IntqError("--plot draws the --naive measurement; give --naive too")
    _check_plotting("--plot", args.plot)
    if args.images is not None and args.images < 1:
        raise IntqError(f"--images must be at least 1, got {args.images}")
    model = _load_model(args.model)
    x = _model_images(model, args.inputs, "inputs", args.preprocess)
    x = x[:args.images] if args.images else x
    try:
        from .twin.verify import drift_plot, format_report, verify
    except ImportError as e:  # torch missing from this environment
        raise IntqError(f"verify needs torch: {e}") from None
    res = verify(model, x, args.backend, naive=args.naive)
    res["model"] = str(args.model)
    if args.plot:
        drift_plot({f"{args.model}": res}, args.plot)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(format_report(res))
        if args.plot:
            print(f"wrote {args.plot}")
    return 0 if res["all_exact"] else 1


def cmd_qat(args) -> int:
    from .data import Data, load_data, onnx_input_chw
    from .model import compile as compile_onnx

    _check_output(args.output)
    onnx_model = _onnx_model(args)
    chw = functools.cache(lambda: onnx_input_chw(onnx_model))
    x, y = Data(args.data, chw=chw, keys=("x", "x_train"), label_keys=("y", "y_train"),
                what="training data", preprocess=args.preprocess).require_labels().load()
    if y.dtype.kind not in "iu":
        raise IntqError(f"training data {args.data}: labels must be integers, got {y.dtype}")
    calib = None
    if args.calib:
        calib, _ = load_data(args.calib, chw, ("x", "x_calib"), what="calibration data",
                             preprocess=args.preprocess)
    ev = args.eval_data and Data(args.eval_data, chw=chw, keys=("x", "x_eval"),
                                 label_keys=("y", "y_eval"), what="eval data",
                                 preprocess=args.preprocess).require_labels()
    cfg = _config(args)
    try:
        from .twin.qat import train
    except ImportError as e:
        raise IntqError(f"qat needs torch: {e}") from None

    if ev:  # the post-training model it starts from, for comparison
        ptq = compile_onnx(onnx_model, x[:256] if calib is None else calib, config=cfg)
        before = ptq.evaluate(ev)["int_top1"]
        print(f"before QAT (post-training quantization): int top-1 {before:.4f}")
    model, history = train(onnx_model, x, y, cfg, epochs=args.epochs, lr=args.lr,
                           batch=args.batch, calib=calib, seed=args.seed)
    model.info["source"] = str(args.model)
    model.info["qat"]["data"] = str(args.data)
    if ev:
        model.info["accuracy"] = dict(model.evaluate(ev), data=str(args.eval_data))
        print(f"after QAT: int top-1 {model.info['accuracy']['int_top1']:.4f}")
    model.save(args.output)
    print(f"wrote {args.output} (check it with: intq verify {args.output} --inputs ...)")
    return 0


def _limit(text: str) -> tuple[float, bool]:
    """A limit: an absolute number, or a percentage / fraction of the way from the smallest
    reachable value to all-W8A8 ("60%")."""
    t = text.strip()
    try:
        return (float(t[:-1]) / 100, True) if t.endswith("%") else (float(t), False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or a percentage: {text!r}") from None


def cmd_allocate(args) -> int:
    from .artifact import atomic_write
    from .data import Data, load_data, onnx_input_chw

    _check_output(args.output)
    _check_plotting("--plot", args.plot)
    _check_plotting("--sweep", args.sweep)
    try:
        from .alloc.allocate import (Problem, allocation_plot, format_allocation, format_counts,
                                     parse_choices, sweep, sweep_plot)
    except ImportError as e:
        raise IntqError(f"allocate needs torch and pulp: {e}") from None
    choices = parse_choices(args.choices)
    onnx_model = _onnx_model(args)
    chw = functools.cache(lambda: onnx_input_chw(onnx_model))
    calib, _ = load_data(args.calib, chw, ("x", "x_calib"), what="calibration data",
                         preprocess=args.preprocess)
    x = y = None
    if args.data:
        x, y = load_data(args.data, chw, ("x", "x_train", "x_eval"), ("y", "y_train", "y_eval"),
                         what="data", preprocess=args.preprocess)
    ev = args.sweep and args.eval_data and Data(
        args.eval_data, chw=chw, keys=("x", "x_eval"), label_keys=("y", "y_eval"),
        what="eval data", preprocess=args.preprocess).require_labels()
    explicit = {key: val for key, val in (("size_mb", args.max_size_mb), ("bops_g", args.max_bops_g),
                                          ("latency_ms", args.max_latency_ms)) if val is not None}
    from .evaluate import ProgressBar
    from .quant.scheme import QuantConfig

    bars = {}

    def progress(done, total, what):
        """One bar per measurement (sensitivities, then latencies), on a terminal."""
        if what not in bars:
            if bars:
                list(bars.values())[-1].close()
            if sys.stderr.isatty():
                print(f"measuring {what} ...", file=sys.stderr)
            bars[what] = ProgressBar(total)
        bars[what].update(done)

    cfg = QuantConfig(profile=args.profile)
    weights = weights_key = None
    rounding = _rounding_options(args)
    if rounding:
        # Sensitivities after learned rounding: each layer's integers from the uniform
        # W4A8 and W8A8 learnings, which a mixed compile of the result reuses (cached).
        from .pipeline import float_graph
        from .rounding import weight_provider

        rounding["progress"] = None
        weights, weights_key = weight_provider(float_graph(onnx_model), calib, cfg, args.rounding,
                                               **rounding)
    prob = Problem(onnx_model, calib, x, y, args.sensitivity, choices,
                   latency_table=args.latency_table,
                   need_latency=args.frac is not None or "latency_ms" in explicit,
                   fix_ends=not args.free_ends, images=args.images, progress=progress, config=cfg,
                   weights=weights, weights_key=weights_key)
    if bars:
        list(bars.values())[-1].close()
    limits, note = prob.fraction_limits(args.frac) if args.frac is not None else ({}, None)
    limits.update(explicit)  # a limit given explicitly wins over --frac's
    if note and "latency_ms" in explicit:
        note = None  # --max-latency-ms set the latency limit itself
    res = prob.solve(limits)
    if note:
        res["note"] = note
    if args.sweep:
        evaluate_bits = None
        if ev:
            from .model import Model
            from .model import compile as compile_onnx

            def top1(b):
                compiled = compile_onnx(onnx_model, calib, bits=b, profile=args.profile,
                                        rounding=args.rounding, rounding_options=rounding or None)
                # integer side only: the float model's top-1 is the same at every point
                return Model(compiled.integer).evaluate(ev)["int_top1"]
            evaluate_bits = top1
        points = sweep(prob, "size_mb", 11, evaluate_bits)
        sweep_plot(points, args.sweep, "size_mb", f"{args.model}: ILP sweep over the size limit")
        res["sweep"] = points
    with atomic_write(args.output) as f:
        f.write(json.dumps(res["bits"], indent=2).encode())
    if args.plot:
        allocation_plot(res, args.plot)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        if note:
            print(note)
        print(format_allocation(res))
        for p in res.get("sweep", []):
            print(f"sweep {p['fraction']:.0%}: size {p['size_mb']:.4f} MB, {format_counts(p['counts'])}, "
                  f"sensitivity {p['omega']:.4g}" + (f", top-1 {p['top1']:.4f}" if "top1" in p else ""))
        print(f"wrote {args.output}" + "".join(f" and {p}" for p in (args.plot, args.sweep) if p))
    return 0


def _add_rounding(s, what: str) -> None:
    s.add_argument("--rounding", default="nearest",
                   choices=["nearest", "learned", "gptq", "adaround", "brecq", "qdrop"], help=what)
    s.add_argument("--rounding-steps", type=int, help="optimizer steps per block or layer for "
                   "adaround/brecq/qdrop (default 300)")
    s.add_argument("--device", default="cpu", help="torch device for --rounding (default cpu)")


def _backend_option(s) -> None:
    s.add_argument("--backend", default="numba", choices=["numba", "reference"],
                   help="integer executor: Numba kernels (default) or the numpy reference")


def _add_preprocess(parser) -> None:
    parser.add_argument("--preprocess", default="imagenet", choices=["imagenet", "inception", "none"],
                        help="how images from a folder are resized, cropped and scaled (intq.images)")


def _add_input_shape(s) -> None:
    s.add_argument("--input-shape", action="append", metavar="[NAME:]N,C,H,W",
                   help="fix the model's dynamic input dimensions (repeat, or NAME:shape, for "
                   "several inputs); the shape arithmetic computed from them folds away")
    s.add_argument("--outputs", action="append", metavar="NAME[,NAME...]",
                   help="end the graph at these tensors (before a float decode or NMS); the "
                   "nodes they do not need are dropped before import")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="intq", description="Integer-only inference compiler for CNNs.")
    p.add_argument("--version", action="version", version=f"intq {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("inspect", help="show the graph after the float passes, with MACs and parameters")
    s.add_argument("model", help="ONNX file")
    _add_input_shape(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("compile", help="quantize an ONNX model to an integer-only .intq artifact")
    s.add_argument("model", help="ONNX file")
    _add_input_shape(s)
    s.add_argument("-o", "--output", required=True, help="output .intq file")
    s.add_argument("--calib", required=True, help=".npz with float32 images under x (or x_calib), "
                   "or a folder of images")
    _add_preprocess(s)
    s.add_argument("--bits", default="8", help="w8a8 (= 8), w4a8 (4-bit weights, 8-bit inputs), "
                   "w4a4 (= 4) for every layer but the first conv and last linear (W8A8), or a "
                   "JSON file mapping layer names to those (ends W8A8 unless it names them)")
    s.add_argument("--calib-method", default="minmax", choices=["minmax", "percentile", "mse"])
    s.add_argument("--profile", default="hawq", choices=["hawq", "pot"])
    s.add_argument("--residual-bits", type=int, default=16, choices=[8, 16, 32])
    s.add_argument("--weight-clip", default="auto", choices=["auto", "max", "mse"],
                   help="per-channel weight range: auto (default) is mse at 4 bits, max at 8")
    s.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=True,
                   help="subtract the mean output shift that weight rounding causes, measured "
                   "on the calibration data (default on; see the README's evidence)")
    _add_rounding(s, "how weights are rounded to their grid: nearest, or learned from the "
                  "calibration images (learned = the best method, see the README; gptq is "
                  "one-shot and fast); cached per model, data and settings")
    s.add_argument("--eval-data", help=".npz with x/y, or a folder of class subfolders: record "
                   "float and integer top-1 in the card")
    s.set_defaults(func=cmd_compile)

    s = sub.add_parser("run", help="run an .intq model on an .npy input")
    s.add_argument("model")
    s.add_argument("input", help=".npy float32 NCHW images (memory-mapped, read batch by batch)")
    s.add_argument("-o", "--output", required=True, help="output .npy")
    s.add_argument("--batch", type=int, default=32, help="images per run (default 32): memory "
                   "is one batch's, whatever the size of the file")
    s.add_argument("--int", action="store_true", help="write the integer logits (scale printed)")
    _backend_option(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("eval", help="top-1 of the integer model and of its float model; every "
                       "output against the float model's without labels or with --float")
    s.add_argument("model")
    s.add_argument("--data", required=True, help=".npz with x/y (or x_eval/y_eval), or a folder of "
                   "class subfolders of images; without labels, every output is compared with the "
                   "float model's")
    _add_preprocess(s)
    s.add_argument("--float", help="ONNX file for the float side (default: the one in the artifact)")
    s.add_argument("--json", action="store_true")
    _backend_option(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("bench", help="latency of an .intq model on this machine, or a per-layer "
                       "INT4/INT8 latency table (--latency-table)")
    s.add_argument("model", help=".intq file (or, with --latency-table, an ONNX file)")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--repeat", type=int, default=20)
    s.add_argument("--per-layer", action="store_true", help="time every step (numba backend)")
    s.add_argument("--latency-table", metavar="OUT.json",
                   help="time every Conv/Linear at INT4 and INT8 and write the table as JSON")
    _add_input_shape(s)
    s.add_argument("--json", action="store_true")
    _backend_option(s)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("verify", help="compare every integer tensor of the executor with the "
                       "torch twin's, layer by layer (exit 0 only when all are exact)")
    s.add_argument("model", help=".intq file")
    s.add_argument("--inputs", required=True, help=".npz with float32 images under x (or x_eval, "
                   "x_calib), an .npy, or a folder of images")
    _add_preprocess(s)
    s.add_argument("--images", type=int, help="use only the first N images")
    s.add_argument("--naive", action="store_true", help="also run naive fake quantization (float "
                   "requantization, float residual adds) and report its drift per layer")
    s.add_argument("--plot", metavar="OUT.png", help="with --naive: plot the drift (HAWQ-V3 Fig. G.1)")
    s.add_argument("--json", action="store_true")
    _backend_option(s)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("qat", help="quantization-aware fine-tuning of an ONNX model; writes an "
                       ".intq artifact")
    s.add_argument("model", help="ONNX file")
    _add_input_shape(s)
    s.add_argument("--data", required=True, help=".npz with training images x (or x_train) and "
                   "integer labels y (or y_train), or a folder of class subfolders")
    _add_preprocess(s)
    s.add_argument("-o", "--output", required=True, help="output .intq file")
    s.add_argument("--bits", default="4", help="w8a8 (= 8), w4a8, w4a4 (= 4), or a JSON file "
                   "mapping layer names to those")
    s.add_argument("--epochs", type=int, default=6)
    s.add_argument("--lr", type=float, default=2e-4)
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--calib", help=".npz or folder whose images set the starting activation "
                   "ranges (default: the first 256 training images)")
    s.add_argument("--eval-data", help=".npz with x/y, or a folder of class subfolders: top-1 "
                   "before and after, recorded in the card")
    s.add_argument("--profile", default="hawq", choices=["hawq", "pot"])
    s.add_argument("--residual-bits", type=int, default=16, choices=[8, 16, 32])
    s.set_defaults(func=cmd_qat, calib_method="minmax", weight_clip="max", bias_correction=False)

    s = sub.add_parser("allocate", help="choose W8A8, W4A8 or W4A4 per layer by an ILP under "
                       "size, BOPS and latency limits; writes the bits file compile reads")
    s.add_argument("model", help="ONNX file")
    _add_input_shape(s)
    s.add_argument("--calib", required=True, help=".npz with calibration images x, or a folder "
                   "of images")
    s.add_argument("--data", help=".npz with images x and labels y, or a folder of class "
                   "subfolders, for the sensitivities (default: the calibration images, KL "
                   "divergence / own predictions)")
    _add_preprocess(s)
    s.add_argument("-o", "--output", required=True, help="output bits file (JSON)")
    s.add_argument("--max-size-mb", type=_limit, metavar="X|P%%")
    s.add_argument("--max-bops-g", type=_limit, metavar="Y|P%%")
    s.add_argument("--max-latency-ms", type=_limit, metavar="Z|P%%",
                   help="limits: absolute, or P%% of the way from the smallest reachable "
                   "value (every free layer at its cheapest choice) to all-W8A8")
    s.add_argument("--frac", type=float, help="the size, BOPS and latency limits at this fraction "
                   "(0..1) of the way from the smallest reachable value to all-W8A8; no latency "
                   "limit where the table's all-INT4 and all-INT8 times are within 3%% (said in "
                   "one line); a limit given explicitly wins")
    s.add_argument("--choices", default="w8a8,w4a8,w4a4", help="the choices the free layers may "
                   "take, comma-separated (default all three; 8 and 4 alias w8a8 and w4a4)")
    _add_rounding(s, "sensitivities measured after learned rounding (and sweep points compiled "
                  "with it)")
    s.add_argument("--sensitivity", default="perturbation", choices=["perturbation", "hessian"])
    s.add_argument("--latency-table", help="per-layer latencies of the target device (the JSON of "
                   "`intq bench --latency-table`); default: measured here, cached")
    s.add_argument("--images", type=int, default=256, help="images used for the sensitivities")
    s.add_argument("--free-ends", action="store_true", help="let the ILP choose the first and last "
                   "layer's bits too (default: W8A8)")
    s.add_argument("--profile", default="hawq", choices=["hawq", "pot"])
    s.add_argument("--plot", metavar="OUT.png", help="per-layer W and A bits, sensitivities and "
                   "INT4 gain (HAWQ-V3 Fig. I.1)")
    s.add_argument("--sweep", metavar="OUT.png", help="also solve for 11 size limits from the "
                   "smallest reachable size to all-W8A8 and plot sensitivity (and top-1 with "
                   "--eval-data) against size")
    s.add_argument("--eval-data", help=".npz with x/y, or a folder of class subfolders: top-1 of "
                   "each sweep point (compiled and run)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_allocate)

    s = sub.add_parser("export", help="write an .intq model as standard ONNX integer ops that "
                       "onnxruntime runs to the same integers, and check that it does")
    s.add_argument("model", help=".intq file")
    s.add_argument("-o", "--output", required=True, help="output .onnx")
    s.add_argument("--format", choices=["integer", "qdq"], default="integer",
                   help="integer: ConvInteger/MatMulInteger, integer Mul/Add/BitShift, Gather "
                   "(bit-exact); qdq: QuantizeLinear/DequantizeLinear around float ops, as "
                   "onnxruntime's quantizer writes (not bit-exact)")
    s.add_argument("--data", help=".npz/.npy images to check on (default: 8 seeded Gaussian images)")
    s.add_argument("--images", type=int, default=8, help="images to check on (default 8)")
    s.add_argument("--no-check", action="store_true", help="do not run the written file")
    s.add_argument("--json", action="store_true", help="print the per-output comparison")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("report", help="per-layer bits, size, BOPS and the quantization card")
    s.add_argument("model")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_report)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except IntqError as e:
        print(f"intq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("intq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
