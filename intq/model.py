"""The Python API, which the `intq` command calls too: `intq.compile(...)` and
`intq.load(...)` return a `Model`.

    import intq
    model = intq.compile("resnet.onnx", calib="digits_calib.npz", bits=4)
    logits = model.run(images)                 # float32 logits, Numba backend
    q = model.run(images, integer=True)        # the integer logits themselves
    model.evaluate(images, labels)             # top-1, agreement with float, cosine
    model.evaluate("test.npz")                 # or an .npz / image folder, streamed
    model.report()                             # per-layer cost table and quantization card
    model.save("resnet.intq"); intq.load("resnet.intq")
    model.export("resnet.onnx")                # integer ONNX, bit-exact in onnxruntime
"""
from __future__ import annotations

import os

import numpy as np

from .artifact import load_artifact, save_artifact
from .data import load_data, onnx_input_chw
from .frontend.input_shapes import with_input_shapes
from .frontend.outputs import with_outputs
from .evaluate import evaluate
from .executor import DEFAULT_BACKEND, dequantize, make_executor
from .float_executor import batches
from .ir import Graph
from .pipeline import compile_model
from .quant.scheme import QuantConfig
from .report import cost_table, quantization_card


class Model:
    """A compiled integer model: `integer` graph, the `float` graph it came from (or None)
    and `info` (calibration, source, accuracy)."""

    def __init__(self, integer: Graph, float_graph: Graph | None = None, info: dict | None = None):
        self.integer, self.float, self.info = integer, float_graph, info or {}
        self._executors: dict = {}

    @property
    def input_chw(self) -> tuple:
        """(C, H, W) of the model's input: what an image folder is preprocessed to."""
        return tuple(self.integer.values[self.integer.inputs[0]].shape[1:])

    def executor(self, backend: str = DEFAULT_BACKEND):
        """The executor of this model for `backend`, built once (the Numba plan packs
        weights and allocates its buffers on first use)."""
        if backend not in self._executors:
            self._executors[backend] = make_executor(self.integer, backend)
        return self._executors[backend]

    def run(self, x, backend: str = DEFAULT_BACKEND, integer: bool = False):
        """The first output for float32 NCHW images x: dequantized (float32), or the
        integer tensor itself (int64) with integer=True."""
        q = self.executor(backend).run(np.asarray(x, dtype=np.float32))[0]
        if integer:
            return q
        return dequantize(q, self.output_qparams)

    def run_all(self, x, backend: str = DEFAULT_BACKEND, integer: bool = False) -> list:
        """Every output, in graph order, as `run` gives the first (a detector's heads)."""
        qs = self.executor(backend).run(np.asarray(x, dtype=np.float32))
        if integer:
            return list(qs)
        meta = self.integer.metadata["outputs"]
        return [dequantize(q, meta[name]) for q, name in zip(qs, self.integer.outputs)]

    def run_batches(self, x, batch: int, backend: str = DEFAULT_BACKEND, integer: bool = False):
        """`run` over x (an array, or a memory-mapped file), `batch` images at a time: yields
        each batch's output, so memory holds one batch (a graph exported with a fixed batch
        runs at that size, its last run padded and trimmed)."""
        for xb, n in batches(self.integer, x, batch):
            yield self.run(xb, backend, integer)[:n]

    @property
    def output_qparams(self) -> dict:
        """scale and zero_point of the first output: real = scale * (q - zero_point)."""
        return self.integer.metadata["outputs"][self.integer.outputs[0]]

    def evaluate(self, x, y=None, backend: str = DEFAULT_BACKEND, batch: int = 64,
                 preprocess: str = "imagenet", progress: bool = False) -> dict:
        """Metrics against the float model (see `intq.evaluate.evaluate`) over images x with
        labels y, or over an .npz / .npy path or an image folder, read `batch` at a time."""
        return evaluate(self.integer, x, y, self.float, backend, batch, progress=progress,
                        executor=self.executor(backend), preprocess=preprocess)

    def report(self) -> dict:
        return {**cost_table(self.integer), "card": quantization_card(self.integer, self.info)}

    def save(self, path) -> None:
        save_artifact(path, self.integer, self.float, self.info)

    def export(self, path, format: str = "integer", check=None) -> dict | None:  # noqa: A002
        """Write the model as ONNX (`intq.export`): format "integer", standard ONNX integer
        ops that onnxruntime runs to the same integers, or "qdq", the QuantizeLinear /
        DequantizeLinear form of onnxruntime's quantizer (not bit-exact). check: float32
        images to run the written file on in onnxruntime and compare with this model's
        integers (the report is returned; None without check)."""
        from .export import check_with_onnxruntime, save_onnx, to_onnx

        proto = to_onnx(self.integer, format)
        save_onnx(proto, path)
        return None if check is None else check_with_onnxruntime(proto, self, check)


def compile(model, calib, bits=8, preprocess: str = "imagenet", config: QuantConfig | None = None,
            rounding_options: dict | None = None, input_shape=None, outputs=None, **options) -> Model:  # noqa: A001  (intq.compile)
    """Quantize an ONNX model (path or ModelProto) to an integer-only Model.

    calib: float32 NCHW images, or a path: an .npz holding them under x / x_calib, an .npy,
    or an image folder (preprocessed to the model's input by `preprocess`, see intq.images).
    bits: a choice for every layer but the first conv and the last linear (which stay
    W8A8): 8 (= "w8a8"), 4 (= "w4a4", weights and inputs at 4 bits), "w4a8" (4-bit weights,
    8-bit inputs); or a dict mapping Conv/Linear node names to those (first and last at
    W8A8 unless named). options: QuantConfig fields (calib_method, profile, residual_bits,
    weight_clip, rounding, ...); or `config`, a whole QuantConfig, instead of both.
    rounding_options (with rounding other than nearest): settings (`intq.rounding.Settings`),
    device (torch device, default cpu), progress(done, total), use_cache.
    input_shape fixes dynamic input dimensions: (1, 3, H, W) for a single-input model,
    {name: shape}, or the `--input-shape` text ("images:1,3,640,640").
    outputs ends the model at these tensors (names, or the `--outputs` text "a,b"), before
    a float decode or NMS that need not be compiled."""
    if config is None:  # checked before the calibration data is read
        table = dict(bits) if isinstance(bits, dict) else {}
        default = 8 if isinstance(bits, dict) else bits
        config = QuantConfig(default_bits=default, bits=table, **options)
    elif options or bits != 8:
        raise TypeError("give either config or bits and QuantConfig fields, not both")
    calib_path = os.fspath(calib) if isinstance(calib, (str, os.PathLike)) else None
    source = str(model) if isinstance(model, (str, os.PathLike)) else "<ModelProto>"
    if input_shape is not None and not isinstance(model, Graph):
        model = with_input_shapes(model, input_shape)
    if outputs is not None and not isinstance(model, Graph):
        model = with_outputs(model, outputs)
    chw = (lambda: model.values[model.inputs[0]].shape[1:]) if isinstance(model, Graph) else \
        (lambda: onnx_input_chw(model))
    calib, _ = load_data(calib, chw, ("x", "x_calib"), what="calibration data", preprocess=preprocess)
    ig, fg, info = compile_model(model, calib, config, rounding_options=rounding_options)
    info["source"] = source
    if calib_path:
        info["calibration"]["data"] = calib_path
    return Model(ig, fg, info)


def load(path) -> Model:
    """A Model from an .intq artifact."""
    return Model(*load_artifact(path))
