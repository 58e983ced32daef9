"""Benchmark intq's Numba kernels against onnxruntime and torch on this machine.

    python tools/bench_kernels.py [-o bench.json] [--quick] [--rounds 3]

Per layer: every distinct convolution of ResNet18 and MobileNetV2 at 224x224 (batch 1
and 8) and a 512x512x512 GEMM, as intq INT8 and INT4 (conv + bias + requantization +
clamp, fused), torch's quantized conv (x86 engine) and torch float32, with the fraction
of the VNNI issue rate measured here by a register-only `vpdpbusd` loop (layers on the
AMX path can pass 100%: the AMX issue rate, from a register-only `TDPBUSD` loop, is
printed too). There is no onnxruntime column per layer: a QLinearConv timed alone is
not the path onnxruntime's optimized whole graph takes (earlier runs showed intq ahead on
almost every isolated layer and behind end to end), so onnxruntime is compared end to
end only.

End to end: ResNet18, ResNet50 and MobileNetV2 at 224x224, batch 1 and 8, intq INT8, INT4
and a mixed bit file, against the same float model quantized by onnxruntime's
`quantize_static` (QDQ, per channel, uint8 activations, int8 weights), after onnxruntime's
recommended `quant_pre_process`; onnxruntime also runs intq's own QDQ export of the INT8
and INT4 models (`intq export --format qdq`), timed in the same onnxruntime rounds. Models
are compiled and quantized once; then `--rounds` rounds alternate an intq process and an
onnxruntime process. Within an intq round the three bit configurations are timed in turn,
repeat by repeat, so INT4 / INT8 compares runs made moments apart; each ratio is taken
within a round and its median reported, with every round's milliseconds beside it (the
spread says how noisy the machine was). Where intq chose a faster kernel path than the
portable one, each round also times ResNet18 INT8 batch 1 with `INTQ_KERNELS=portable` in
a process of its own, for the portable / chosen-path ratio. Evaluation: the integer executor on 64 images,
numba against the reference backend, for the bundled digits nets and full-size ResNet18.

Each peer runs in its own process (Numba's and onnxruntime's thread pools fight inside
one), all with 2 threads, one after the other; results are medians over repeats. The intq
workers run the kernel path `INTQ_KERNELS` picks (printed). Writes JSON (CPU model
included) and prints the README's tables in Markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

THREADS = 2
E2E_MODELS = ["resnet18", "resnet50", "mobilenet_v2"]
BATCHES = [1, 8]
EVAL_MODELS = ["resnet", "inception", "mobilenet", "mobilenetv3", "resnet18"]
# workers that read the exported models
NEEDS_WORKDIR = ("intq-prepare", "intq-e2e", "ort-prepare", "ort-e2e", "eval", "intq-portable")


# -- shapes --------------------------------------------------------------------------
def conv_shapes(names=("resnet18", "mobilenet_v2")):
    """Distinct (cin, cout, k, stride, pad, groups, h, w) convolutions of the zoo nets."""
    from intq.pipeline import float_graph
    from tools.export_zoo import export

    shapes = {}
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            fg = float_graph(export(name, os.path.join(d, f"{name}.onnx")))
            for n in fg.nodes:
                if n.op != "Conv":
                    continue
                _, c, h, w = fg.values[n.inputs[0]].shape
                m, _, k, _ = fg.values[n.inputs[1]].shape
                key = (c, m, k, n.attrs["strides"][0], n.attrs["pads"][0], n.attrs["groups"], h, w)
                shapes.setdefault(key, []).append(name)
    return [{"cin": k[0], "cout": k[1], "k": k[2], "stride": k[3], "pad": k[4], "groups": k[5],
             "h": k[6], "w": k[7], "nets": sorted(set(v))} for k, v in shapes.items()]


def out_hw(s):
    return tuple((d + 2 * s["pad"] - s["k"]) // s["stride"] + 1 for d in (s["h"], s["w"]))


def macs(s, batch):
    if s.get("gemm"):
        return s["m"] * s["n"] * s["k"]
    oh, ow = out_hw(s)
    return batch * oh * ow * s["cout"] * s["cin"] // s["groups"] * s["k"] ** 2


def timeit(fn, repeat, min_time=0.2):
    fn()
    fn()
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < repeat or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) > 2000:
            break
    return float(np.median(times))


# -- workers (each runs in its own process) ------------------------------------------
def worker_intq_layers(shapes, repeat):
    from intq.ir import Graph
    from intq.kernels.plan import Plan
    from intq.ops import infer_shapes

    rng = np.random.default_rng(0)
    res = []
    for s in shapes:
        for bits in (8, 4):
            wmax, xmax = (127, 255) if bits == 8 else (7, 15)
            g = Graph("layer")
            if s.get("gemm"):
                shape, wshape = (s["m"], s["k"]), (s["n"], s["k"])
            else:
                shape = (s["batch"], s["cin"], s["h"], s["w"])
                wshape = (s["cout"], s["cin"] // s["groups"], s["k"], s["k"])
            g.add_input("x", shape, "float32")
            g.add_node("QuantizeInput", ["x"], ["xq"], {"scale": 1.0, "zero_point": 0, "lo": 0,
                       "hi": xmax, "dtype": f"uint{bits}"}, name="q")
            wn = g.add_constant("w", rng.integers(-wmax, wmax + 1, wshape).astype(np.int8))
            g.values[wn].dtype = f"int{bits}"
            m = wshape[0]
            bn = g.add_constant("b", rng.integers(-1000, 1000, m).astype(np.int32))
            if s.get("gemm"):
                g.add_node("IntLinear", ["xq", wn, bn], ["acc"], {"x_zero_point": 0}, name="layer")
                g.outputs = ["acc"]  # MatMulInteger's contract: the INT32 result
            else:
                p = s["pad"]
                g.add_node("IntConv", ["xq", wn, bn], ["acc"], {"x_zero_point": 3, "strides": [s["stride"]] * 2,
                           "pads": [p] * 4, "dilations": [1, 1], "groups": s["groups"]}, name="layer")
                bq = g.add_constant("rb", np.full(m, 1 << 20, np.int64))
                cq = g.add_constant("rc", np.full(m, 31, np.int64))
                g.add_node("Requantize", ["acc", bq, cq], ["y"], {"in_zero_point": 0, "out_zero_point": 0,
                           "lo": 0, "hi": xmax, "dtype": f"uint{bits}"}, name="rq")
                g.outputs = ["y"]
            infer_shapes(g)
            plan = Plan(g)
            x = rng.integers(0, xmax + 1, shape).astype(np.float32)
            n = shape[0]
            plan.run(x)
            env, calls = plan.bind(n)
            step, layer = [(st, c) for st, c in zip(plan.steps, calls) if st.name == "layer"][0]
            kernel = ("amx" if getattr(step, "amx", False) else step.kind if step.kind != "dense"
                      else "vnni" if plan.path in ("vnni", "amx")
                      else "avx2" if step.avx2 else "portable")
            res.append({"shape": s, "bits": bits, "seconds": timeit(layer, repeat), "kernel": kernel})
    return res


def _ort_session(model, threads=THREADS):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def worker_torch_layers(shapes, repeat):
    import torch
    import torch.ao.nn.quantized as nnq

    torch.set_num_threads(THREADS)
    torch.backends.quantized.engine = "x86"
    res = []
    for s in shapes:
        if s.get("gemm"):
            xf = torch.randn(s["m"], s["k"])
            lin = nnq.Linear(s["k"], s["n"])
            xq = torch.quantize_per_tensor(xf, 0.02, 128, torch.quint8)
            wf = torch.randn(s["n"], s["k"])
            lin.set_weight_bias(torch.quantize_per_channel(wf, torch.full((s["n"],), 0.01), torch.zeros(s["n"], dtype=torch.long), 0, torch.qint8), None)
            fq = lambda: lin(xq)
            w_f = torch.randn(s["n"], s["k"])
            ff = lambda: torch.nn.functional.linear(xf, w_f)
        else:
            xf = torch.randn(s["batch"], s["cin"], s["h"], s["w"])
            conv = nnq.Conv2d(s["cin"], s["cout"], s["k"], stride=s["stride"], padding=s["pad"], groups=s["groups"])
            wf = torch.randn(s["cout"], s["cin"] // s["groups"], s["k"], s["k"])
            conv.set_weight_bias(torch.quantize_per_channel(wf, torch.full((s["cout"],), 0.01),
                                 torch.zeros(s["cout"], dtype=torch.long), 0, torch.qint8), torch.zeros(s["cout"]))
            xq = torch.quantize_per_tensor(xf, 0.02, 128, torch.quint8)
            fq = lambda: conv(xq)
            ff = lambda: torch.nn.functional.conv2d(xf, wf, None, s["stride"], s["pad"], 1, s["groups"])
        with torch.no_grad():
            res.append({"shape": s, "quantized": timeit(fq, repeat), "float32": timeit(ff, repeat)})
    return res


def worker_peak(_shapes, _repeat):
    """Measured VNNI issue rate: GOPS of independent register-only vpdpbusd on all threads."""
    from numba import njit, prange

    from intq.kernels import cpu
    avx2 = _avx2_peaks() if cpu.has_avx2() else {}
    if not cpu.has_vnni():
        return {"gops": None, **avx2}
    from intq.kernels.simd import vbroadcast4, vdpbusd, vload, vstore, vzero

    @njit(parallel=True)
    def spin(a, w, out, iters):
        for t in prange(out.shape[0] // 192):
            v = vbroadcast4(a, 0)
            w0 = vload(w, 0)
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = vzero()
            for _ in range(iters):
                a0 = vdpbusd(a0, v, w0); a1 = vdpbusd(a1, v, w0); a2 = vdpbusd(a2, v, w0)  # noqa: E702
                a3 = vdpbusd(a3, v, w0); a4 = vdpbusd(a4, v, w0); a5 = vdpbusd(a5, v, w0)  # noqa: E702
                a6 = vdpbusd(a6, v, w0); a7 = vdpbusd(a7, v, w0); a8 = vdpbusd(a8, v, w0)  # noqa: E702
                a9 = vdpbusd(a9, v, w0); a10 = vdpbusd(a10, v, w0); a11 = vdpbusd(a11, v, w0)  # noqa: E702
            for k, acc in enumerate((a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11)):
                vstore(out, t * 192 + k * 16, acc)

    a, w = np.ones(64, np.uint8), np.ones(64, np.int8)
    out = np.zeros(192 * 32, np.int32)
    iters = 200_000
    spin(a, w, out, 10)
    sec = timeit(lambda: spin(a, w, out, iters), 5)
    ops = 32 * iters * 12 * 64 * 2
    return {"gops": ops / sec / 1e9, "amx_gops": _amx_peak() if cpu.has_amx() else None, **avx2}


def _avx2_peaks():
    """Measured AVX2 issue rates on all threads, from register-only loops with 10
    accumulators, each product taking its accumulator as an operand (as the VNNI loop's
    `vpdpbusd` does) so that LLVM can neither hoist nor share it:
    * `avx2_gops`: `simd_avx2.madd_acc`, one `vpmaddwd` and one `vpaddd` per 16 int16
      multiply-adds, the exact form the AVX2 kernel is made of (`dot4_wide` is two of
      them, plus the mask and shift that split the activation bytes);
    * `avx2_maddubs_gops`: `vpmaddubsw` + `vpmaddwd` by ones + `vpaddd` per 32 byte
      multiply-adds, the form onnxruntime's AVX2 u8s8 kernel runs, which saturates its
      int16 pair sums (so intq does not use it; printed to show what exactness costs)."""
    from llvmlite import ir
    from numba import njit, prange
    from numba.core import cgutils
    from numba.extending import intrinsic

    from intq.kernels.simd_avx2 import i32x8, madd_acc, yload, ystore

    @intrinsic
    def maddubs_acc(typingctx, acc, a, w):
        """acc + vpmaddwd(vpmaddubsw(a, w), ones): the saturating byte form."""
        def codegen(context, builder, sig, args):
            b32, w16, v8 = (ir.VectorType(ir.IntType(n), k) for n, k in ((8, 32), (16, 16), (32, 8)))
            ubs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(w16, [b32, b32]),
                                                 "llvm.x86.avx2.pmadd.ub.sw")
            wd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [w16, w16]),
                                                "llvm.x86.avx2.pmadd.wd")
            pairs = builder.call(ubs, [builder.bitcast(args[1], b32), builder.bitcast(args[2], b32)])
            return builder.add(args[0], builder.call(wd, [pairs, ir.Constant(w16, [1] * 16)]))
        return i32x8(i32x8, i32x8, i32x8), codegen

    def make(step):
        @njit(parallel=True)
        def spin(w, out, iters):
            for t in prange(out.shape[0] // 80):
                a = yload(w, 0)
                c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = yload(w, 32)
                for _ in range(iters):
                    c0, c1, c2, c3, c4 = (step(c0, c0, a), step(c1, c1, a), step(c2, c2, a), step(c3, c3, a),
                                          step(c4, c4, a))
                    c5, c6, c7, c8, c9 = (step(c5, c5, a), step(c6, c6, a), step(c7, c7, a), step(c8, c8, a),
                                          step(c9, c9, a))
                for k, acc in enumerate((c0, c1, c2, c3, c4, c5, c6, c7, c8, c9)):
                    ystore(out, t * 80 + k * 8, acc)
        return spin

    from numba import get_num_threads
    w = (np.arange(64) % 7 - 3).astype(np.int8)
    out = np.zeros(80 * get_num_threads(), np.int32)
    iters = 2_000_000
    spins = {key: (make(step), macs) for key, step, macs in
             (("avx2_gops", madd_acc, 16), ("avx2_maddubs_gops", maddubs_acc, 32))}
    # An issue rate is the best the loop does: the fastest of 40 runs (about 10 ms each),
    # the two forms alternated, so that a slow spell of this shared machine (one run read
    # 165 GOPS against 296-310 in the runs before and after) falls on both and not on
    # one form's whole measurement.
    best = {key: np.inf for key in spins}
    for key, (spin, _) in spins.items():
        spin(w, out, 10)
    for _ in range(40):
        for key, (spin, _) in spins.items():
            t = time.perf_counter()
            spin(w, out, iters)
            best[key] = min(best[key], time.perf_counter() - t)
    return {key: get_num_threads() * iters * 10 * macs * 2 / best[key] / 1e9 for key, (_, macs) in spins.items()}


def _amx_peak():
    """Measured AMX issue rate: GOPS of register-only TDPBUSD (4 independent accumulator
    tiles, 16 x 16 x 64 multiply-adds each) on all threads."""
    from numba import njit, prange

    from intq.kernels.conv_amx import tile_configuration
    from intq.kernels.simd import tile_config, tile_dpbusd, tile_load, tile_release, tile_store, tile_zero

    @njit(parallel=True)
    def spin(cfg, a, out, iters):
        for t in prange(THREADS * 8):
            tile_config(cfg)
            tile_zero(0)
            tile_zero(1)
            tile_zero(2)
            tile_zero(3)
            tile_load(4, a, 0, 64)
            tile_load(5, a, 0, 64)
            tile_load(6, a, 0, 64)
            tile_load(7, a, 0, 64)
            for _ in range(iters):
                tile_dpbusd(0, 4, 6)
                tile_dpbusd(1, 4, 7)
                tile_dpbusd(2, 5, 6)
                tile_dpbusd(3, 5, 7)
            tile_store(0, out, t * 256, 64)
            tile_release()

    cfg, a, out = tile_configuration(), np.ones(1024, np.uint8), np.zeros(THREADS * 8 * 256, np.int32)
    iters = 20_000
    spin(cfg, a, out, 10)
    sec = timeit(lambda: spin(cfg, a, out, iters), 5)
    return THREADS * 8 * iters * 4 * 16 * 16 * 64 * 2 / sec / 1e9


def _export(name, path, batch_dynamic=True):
    from tools.export_zoo import export
    return export(name, path)


E2E_CONFIGS = ("INT8", "INT4", "mixed")
QDQ_CONFIGS = ("INT8", "INT4")   # intq's `export --format qdq` files, timed in onnxruntime


def worker_intq_prepare(models, repeat, workdir):
    """Compile every model at INT8, INT4 and mixed bits once; later rounds load the files."""
    import intq
    from intq.pipeline import float_graph

    calib = np.load(os.path.join(workdir, "calib.npz"))["x"]
    sizes = {}
    for name in models:
        onnx_path = os.path.join(workdir, f"{name}.onnx")
        layers = [n.name for n in float_graph(onnx_path).nodes if n.op in ("Conv", "Linear")]
        # mixed: the second half of the network (where the weights are) at 4 bits
        mixed = {k: 4 if i >= len(layers) // 2 else 8 for i, k in enumerate(layers)}
        for label, bits in zip(E2E_CONFIGS, (8, 4, mixed)):
            model = intq.compile(onnx_path, calib, bits=bits)
            model.save(os.path.join(workdir, f"{name}.{label}.intq"))
            sizes[f"{name}.{label}"] = model.report()["totals"]["size_mb"]
            if label in QDQ_CONFIGS:   # intq's QDQ export, for onnxruntime to run
                model.export(os.path.join(workdir, f"{name}.{label}.qdq.onnx"), format="qdq")
    return sizes


def worker_intq_e2e(models, repeat, workdir):
    """One round: each model's three bit configurations timed in turn, repeat by repeat
    (A B C A B C ...), so that drift of the machine during the round falls on all three
    alike and INT4 / INT8 compares like with like."""
    import intq
    from intq.bench import _input
    from intq.executor import make_executor

    res = []
    for name in models:
        graphs = {label: intq.load(os.path.join(workdir, f"{name}.{label}.intq")).integer for label in E2E_CONFIGS}
        for batch in BATCHES:
            x = _input(graphs["INT8"], batch)
            runs, compile_s = {}, {}
            for label, g in graphs.items():
                t = time.perf_counter()
                ex = make_executor(g, "numba")
                ex.run(x)
                compile_s[label] = time.perf_counter() - t
                ex.run(x)
                runs[label] = (ex, [])
            for _ in range(repeat):
                for label, (ex, times) in runs.items():
                    t = time.perf_counter()
                    ex.run(x)
                    times.append(time.perf_counter() - t)
            for label, (_, times) in runs.items():
                res.append({"model": name, "bits": label, "batch": batch, "seconds": float(np.median(times)),
                            "compile_s": compile_s[label]})
    return res


def worker_intq_portable(models, repeat, workdir):
    """ResNet18 INT8 at batch 1 on the portable kernels (run with INTQ_KERNELS=portable),
    for the portable / chosen-path ratio: with its first-use time, which on a cold Numba
    cache is mostly compilation."""
    import intq
    from intq.bench import _input
    from intq.executor import make_executor

    g = intq.load(os.path.join(workdir, "resnet18.INT8.intq")).integer
    x = _input(g, 1)
    t = time.perf_counter()
    ex = make_executor(g, "numba")
    ex.run(x)
    first = time.perf_counter() - t
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        ex.run(x)
        times.append(time.perf_counter() - t)
    return {"seconds": float(np.median(times)), "first_run_s": first}


def worker_eval(models, repeat, workdir):
    """The integer executor on 64 images, numba against the reference backend (what `intq
    eval` spends on the integer side): the four bundled digits nets and full-size ResNet18."""
    import intq
    from intq.executor import make_executor

    digits = np.load(os.path.join(ROOT, "models", "digits_test.npz"))["x"][:64]
    big = np.random.default_rng(0).standard_normal((64, 3, 224, 224)).astype(np.float32)
    calib = np.load(os.path.join(workdir, "calib.npz"))["x"]
    res = []
    for name in models:
        if name == "resnet18":
            model, x = intq.compile(os.path.join(workdir, "resnet18.onnx"), calib, bits=8), big
        else:
            model, x = intq.compile(os.path.join(ROOT, "models", f"{name}.onnx"),
                                    os.path.join(ROOT, "models", "digits_calib.npz"), bits=8), digits
        row = {"model": name, "images": len(x)}
        for backend in ("numba", "reference"):
            ex = make_executor(model.integer, backend)
            ex.run(x[:2])  # JIT and plan building, excluded
            # the reference takes a minute on ResNet18: one timed run there, medians elsewhere
            row[backend] = timeit(lambda: ex.run(x), 1 if backend == "reference" else 3, min_time=0)
        res.append(row)
    return res


def worker_ort_prepare(models, repeat, workdir):
    """onnxruntime's static quantization of each model, once (QDQ files in workdir)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    calib = np.load(os.path.join(workdir, "calib.npz"))["x"]

    class Reader(CalibrationDataReader):
        def __init__(self, name):
            self.items = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    for name in models:
        src = os.path.join(workdir, f"{name}.onnx")
        dst = os.path.join(workdir, f"{name}.ort_int8.onnx")
        import onnx
        input_name = onnx.load(src).graph.input[0].name
        # onnxruntime's recommended pre-processing (shape inference, graph optimisation):
        # without it the exporter's shared-constant Identity nodes hide most conv biases
        # from the quantizer ("Expected bias ... to be an initializer"), those convs stay
        # float between Q/DQ pairs and onnxruntime runs several times slower than it can.
        from onnxruntime.quantization.shape_inference import quant_pre_process
        pre = os.path.join(workdir, f"{name}.pre.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            quantize_static(pre, dst, Reader(input_name), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {}


def worker_ort_e2e(models, repeat, workdir):
    """One round of onnxruntime on the quantized models: its own `quantize_static` file
    (kind "ort") and intq's QDQ exports (kind "qdq INT8", "qdq INT4")."""
    calib = np.load(os.path.join(workdir, "calib.npz"))["x"]
    res = []
    for name in models:
        files = [("ort", f"{name}.ort_int8.onnx")] + [(f"qdq {c}", f"{name}.{c}.qdq.onnx") for c in QDQ_CONFIGS]
        for kind, file in files:
            sess = _ort_session(os.path.join(workdir, file))
            input_name = sess.get_inputs()[0].name
            for batch in BATCHES:
                x = np.random.default_rng(0).standard_normal((batch,) + calib.shape[1:]).astype(np.float32)
                res.append({"model": name, "batch": batch, "kind": kind,
                            "seconds": timeit(lambda: sess.run(None, {input_name: x}), repeat)})
    return res


WORKERS = {"intq-layers": worker_intq_layers,
           "torch-layers": worker_torch_layers, "peak": worker_peak,
           "intq-prepare": worker_intq_prepare, "intq-e2e": worker_intq_e2e,
           "ort-prepare": worker_ort_prepare, "ort-e2e": worker_ort_e2e, "eval": worker_eval,
           "intq-portable": worker_intq_portable}


def run_worker(kind, payload, repeat, workdir, env_extra=None):
    """Run one worker in a fresh process and return its JSON result."""
    spec = os.path.join(workdir, f"{kind}.in.json")
    out = os.path.join(workdir, f"{kind}.out.json")
    with open(spec, "w") as f:
        json.dump(payload, f)
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "NUMBA_NUM_THREADS": str(THREADS), **(env_extra or {})}
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", kind, spec, out, str(repeat), workdir],
                   check=True, env=env)
    print(f"  {kind}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    with open(out) as f:
        return json.load(f)


def combine_rounds(rounds, sizes):
    """Medians over rounds of each round's medians, with the spread over rounds, and each
    ratio taken within a round (INT4 / INT8 in one process; intq / ORT in adjacent ones)
    before its median."""
    def med(vals):
        return float(np.median(vals))
    e2e, ort_e2e = [], []
    for r in rounds[0]["intq"]:
        m, b, bits = r["model"], r["batch"], r["bits"]
        mine = [next(x["seconds"] for x in rd["intq"] if (x["model"], x["batch"], x["bits"]) == (m, b, bits))
                for rd in rounds]
        int8 = [next(x["seconds"] for x in rd["intq"] if (x["model"], x["batch"], x["bits"]) == (m, b, "INT8"))
                for rd in rounds]
        ort = [next(x["seconds"] for x in rd["ort"] if (x["model"], x["batch"], x["kind"]) == (m, b, "ort"))
               for rd in rounds]
        e2e.append({"model": m, "batch": b, "bits": bits, "seconds": med(mine), "rounds": mine,
                    "per_int8": med([a / c for a, c in zip(mine, int8)]),
                    "per_ort": med([a / c for a, c in zip(mine, ort)]),
                    "size_mb": sizes[f"{m}.{bits}"]})
    for r in rounds[0]["ort"]:
        key = (r["model"], r["batch"], r["kind"])
        secs = [next(x["seconds"] for x in rd["ort"] if (x["model"], x["batch"], x["kind"]) == key)
                for rd in rounds]
        own = [next(x["seconds"] for x in rd["ort"] if (x["model"], x["batch"], x["kind"]) == key[:2] + ("ort",))
               for rd in rounds]
        ort_e2e.append({"model": r["model"], "batch": r["batch"], "kind": r["kind"], "seconds": med(secs),
                        "rounds": secs, "per_ort": med([a / c for a, c in zip(secs, own)])})
    return e2e, ort_e2e


# -- report --------------------------------------------------------------------------
def shape_label(s):
    if s.get("gemm"):
        return f"GEMM {s['m']}x{s['k']}x{s['n']}"
    g = " dw" if s["groups"] == s["cin"] and s["groups"] > 1 else (f" g{s['groups']}" if s["groups"] > 1 else "")
    return (f"{s['cin']}->{s['cout']} {s['k']}x{s['k']}/{s['stride']}{g} @{s['h']} b{s['batch']}")


def tables(result) -> str:
    amx = result.get("amx_peak_gops")
    a2 = result.get("avx2_peak_gops")
    # the peak a layer is measured against: the issue rate of the instructions its path runs
    if result.get("kernel_path") == "avx2":
        peak = peak4 = a2
        name = "AVX2"
    else:
        peak = peak4 = result["vnni_peak_gops"]
        name = "VNNI"
    vnni = result["vnni_peak_gops"]
    lines = [f"CPU: {result['cpu']} ({THREADS} threads)"
             + (f", VNNI issue rate measured: {vnni:.0f} GOPS" if vnni else "")
             + (f", AVX2 issue rate measured: {a2:.0f} GOPS (exact vpmaddwd + vpaddd; onnxruntime's saturating "
                f"vpmaddubsw form: {result.get('avx2_maddubs_peak_gops') or 0:.0f})" if a2 else ""),
             f"AMX issue rate measured: {amx:.0f} GOPS" if amx else "",
             f"Kernel path: {result.get('kernel_path')}", "",
             "| layer (nets) | intq kernel | intq INT8 GOPS | intq INT4 GOPS | torch x86 GOPS | "
             f"torch fp32 GOPS | INT4 / INT8 | INT8 % of {name} peak | INT4 % of {name} peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["layers"]:
        s = r["shape"]
        gops = {k: 2 * r["macs"] / r[k] / 1e9 for k in ("intq8", "intq4", "torch_q", "torch_f")}
        nets = "" if s.get("gemm") else f" ({', '.join(n.replace('mobilenet_v2', 'mbv2') for n in s['nets'])})"
        pct = f"{100 * gops['intq8'] / peak:.0f}%" if peak else "n/a"
        pct4 = f"{100 * gops['intq4'] / peak4:.0f}%" if peak4 else "n/a"
        lines.append(f"| {shape_label(s)}{nets} | {r.get('kernel', '')} | {gops['intq8']:.0f} | {gops['intq4']:.0f} | "
                     f"{gops['torch_q']:.0f} | {gops['torch_f']:.0f} | {r['intq8'] / r['intq4']:.2f} | {pct} | "
                     f"{pct4} |")
    lines += ["", "| model | batch | ORT INT8 ms | intq INT8 ms | intq INT4 ms | intq mixed ms | INT8 / ORT | "
              "INT4 / INT8 | mixed / INT8 | INT8 ms per round | ORT ms per round |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in E2E_MODELS:
        for b in BATCHES:
            e = {r["bits"]: r for r in result["e2e"] if r["model"] == m and r["batch"] == b}
            o = next((r for r in result["ort_e2e"] if r["model"] == m and r["batch"] == b
                      and r.get("kind", "ort") == "ort"), None)
            if not e or o is None:
                continue
            per = lambda r: " / ".join(f"{t * 1e3:.1f}" for t in r["rounds"])  # noqa: E731
            lines.append(f"| {m} | {b} | {o['seconds'] * 1e3:.2f} | {e['INT8']['seconds'] * 1e3:.2f} | "
                         f"{e['INT4']['seconds'] * 1e3:.2f} | {e['mixed']['seconds'] * 1e3:.2f} | "
                         f"{e['INT8']['per_ort']:.2f} | {e['INT4']['per_int8']:.2f} | {e['mixed']['per_int8']:.2f} | "
                         f"{per(e['INT8'])} | {per(o)} |")
    qdq = [r for r in result["ort_e2e"] if r.get("kind", "ort") != "ort"]
    if qdq:
        lines += ["", "intq's QDQ export (`intq export --format qdq`) in onnxruntime, against onnxruntime's own "
                  "quantize_static file:", "",
                  "| model | batch | ORT INT8 ms | intq QDQ INT8 ms | intq QDQ INT4 ms | QDQ INT8 / ORT | QDQ INT4 / ORT |",
                  "|---|---|---|---|---|---|---|"]
        for m in E2E_MODELS:
            for b in BATCHES:
                rows = {r["kind"]: r for r in result["ort_e2e"] if r["model"] == m and r["batch"] == b}
                if "qdq INT8" not in rows:
                    continue
                lines.append(f"| {m} | {b} | {rows['ort']['seconds'] * 1e3:.2f} | {rows['qdq INT8']['seconds'] * 1e3:.2f} | "
                             f"{rows['qdq INT4']['seconds'] * 1e3:.2f} | {rows['qdq INT8']['per_ort']:.2f} | "
                             f"{rows['qdq INT4']['per_ort']:.2f} |")
    p = result.get("portable")
    if p:
        per = lambda ts: " / ".join(f"{t * 1e3:.1f}" for t in ts)  # noqa: E731
        lines += ["", f"ResNet18 INT8, batch 1, `INTQ_KERNELS=portable` against the {result['kernel_path']} path "
                  "in the same rounds:", "",
                  f"| portable ms | {result['kernel_path']} ms | portable / {result['kernel_path']} | "
                  "portable ms per round | portable first run s per round |", "|---|---|---|---|---|",
                  f"| {p['seconds'] * 1e3:.1f} | {np.median(p['path_rounds']) * 1e3:.1f} | {p['per_path']:.2f} | "
                  f"{per(p['rounds'])} | {' / '.join(f'{t:.1f}' for t in p['first_run_s'])} |"]
    lines += ["", "| model (64 images) | numba s | reference s | reference / numba |", "|---|---|---|---|"]
    for r in result.get("eval", []):
        lines.append(f"| {r['model']} | {r['numba']:.4f} | {r['reference']:.3f} | "
                     f"{r['reference'] / r['numba']:.0f}x |")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, spec, out, repeat, workdir = sys.argv[2:7]
        with open(spec) as f:
            payload = json.load(f)
        fn = WORKERS[kind]
        args = (payload, int(repeat), workdir) if kind in NEEDS_WORKDIR else (payload, int(repeat))
        with open(out, "w") as f:
            json.dump(fn(*args), f)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default="bench_kernels.json")
    ap.add_argument("--quick", action="store_true", help="ResNet18 shapes and model only, fewer repeats")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="alternating intq / onnxruntime rounds end to end")
    args = ap.parse_args()
    from intq.kernels.cpu import PATH, cpu_name

    t0 = time.perf_counter()
    nets = ("resnet18",) if args.quick else ("resnet18", "mobilenet_v2")
    base = conv_shapes(nets)
    shapes = [dict(s, batch=b) for b in BATCHES for s in base]
    shapes.append({"gemm": True, "m": 512, "k": 512, "n": 512, "batch": 1})
    models = ["resnet18"] if args.quick else E2E_MODELS
    with tempfile.TemporaryDirectory() as workdir:
        print(f"{len(shapes)} layer shapes, {len(models)} models", file=sys.stderr)
        intq = run_worker("intq-layers", shapes, args.repeat, workdir)
        tq = run_worker("torch-layers", shapes, args.repeat, workdir)
        peaks = run_worker("peak", [], 5, workdir)
        peak = peaks["gops"]
        from tools.export_zoo import export
        for m in models:
            export(m, os.path.join(workdir, f"{m}.onnx"))
        rng = np.random.default_rng(0)
        np.savez(os.path.join(workdir, "calib.npz"), x=rng.standard_normal((8, 3, 224, 224)).astype(np.float32))
        sizes = run_worker("intq-prepare", models, 1, workdir)
        run_worker("ort-prepare", models, 1, workdir)
        # Rounds alternate the two sides, each round a fresh process: a slow spell of this
        # shared machine then shows as a spread between rounds, not as a bias to one side.
        # Where intq chose a faster path, each round also times the portable kernels on
        # ResNet18 batch 1, for the portable / chosen-path ratio within the round.
        rounds = []
        for _ in range(args.rounds):
            rounds.append({"intq": run_worker("intq-e2e", models, max(5, args.repeat // 2), workdir),
                           "ort": run_worker("ort-e2e", models, max(5, args.repeat // 2), workdir)})
            if PATH != "portable":
                rounds[-1]["portable"] = run_worker("intq-portable", [], max(5, args.repeat // 4), workdir,
                                                    {"INTQ_KERNELS": "portable"})
        e2e, ort_e2e = combine_rounds(rounds, sizes)
        portable = None
        if PATH != "portable":
            mine = [next(x["seconds"] for x in rd["intq"]
                         if (x["model"], x["batch"], x["bits"]) == ("resnet18", 1, "INT8")) for rd in rounds]
            theirs = [rd["portable"]["seconds"] for rd in rounds]
            portable = {"seconds": float(np.median(theirs)), "rounds": theirs, "path_rounds": mine,
                        "per_path": float(np.median([a / c for a, c in zip(theirs, mine)])),
                        "first_run_s": [rd["portable"]["first_run_s"] for rd in rounds]}
        evals = run_worker("eval", EVAL_MODELS if not args.quick else ["resnet"], 1, workdir)
    layers = []
    for i, s in enumerate(shapes):
        i8, i4 = intq[2 * i], intq[2 * i + 1]
        layers.append({"shape": s, "macs": macs(s, s["batch"]), "intq8": i8["seconds"], "intq4": i4["seconds"],
                       "kernel": i8["kernel"],
                       "torch_q": tq[i]["quantized"], "torch_f": tq[i]["float32"]})
    result = {"cpu": cpu_name(), "threads": THREADS, "kernel_path": PATH, "vnni_peak_gops": peak,
              "amx_peak_gops": peaks.get("amx_gops"), "avx2_peak_gops": peaks.get("avx2_gops"),
              "avx2_maddubs_peak_gops": peaks.get("avx2_maddubs_gops"),
              "layers": layers, "e2e": e2e, "ort_e2e": ort_e2e, "eval": evals, "portable": portable,
              "seconds": time.perf_counter() - t0, "command": " ".join(sys.argv)}
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(tables(result))
    print(f"\n{time.perf_counter() - t0:.0f} s; wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
