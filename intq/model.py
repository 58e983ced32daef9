"""The Python API: `intq.compile(...)` and `intq.load(...)` return a `Model`.

    import intq
    model = intq.compile("resnet.onnx", calib="digits_calib.npz", bits=4)
    logits = model.run(images)                 # float32 logits, Numba backend
    q = model.run(images, integer=True)        # the integer logits themselves
    model.evaluate(images, labels)             # top-1, agreement with float, cosine
    model.report()                             # per-layer cost table and quantization card
    model.save("resnet.intq"); intq.load("resnet.intq")
"""
from __future__ import annotations

import os

import numpy as np

from .artifact import load_artifact, save_artifact
from .evaluate import evaluate
from .executor import DEFAULT_BACKEND, dequantize, make_executor
from .ir import Graph
from .pipeline import compile_model, load_npz_images
from .quant.scheme import QuantConfig
from .report import cost_table, quantization_card


class Model:
    """A compiled integer model: `integer` graph, the `float` graph it came from (or None)
    and `info` (calibration, source, accuracy)."""

    def __init__(self, integer: Graph, float_graph: Graph | None = None, info: dict | None = None):
        self.integer, self.float, self.info = integer, float_graph, info or {}
        self._executors: dict = {}

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
        return dequantize(q, self.integer.metadata["outputs"][self.integer.outputs[0]])

    @property
    def output_qparams(self) -> dict:
        """scale and zero_point of the first output: real = scale * (q - zero_point)."""
        return self.integer.metadata["outputs"][self.integer.outputs[0]]

    def evaluate(self, x, y=None, backend: str = DEFAULT_BACKEND, batch: int = 64) -> dict:
        return evaluate(self.integer, np.asarray(x, np.float32), y, self.float, backend, batch,
                        progress=False, executor=self.executor(backend))

    def report(self) -> dict:
        return {**cost_table(self.integer), "card": quantization_card(self.integer, self.info)}

    def save(self, path) -> None:
        save_artifact(path, self.integer, self.float, self.info)


def compile(model, calib, bits=8, **options) -> Model:  # noqa: A001  (intq.compile)
    """Quantize an ONNX model (path or ModelProto) to an integer-only Model.

    calib: float32 NCHW images, or an .npz path holding them under x / x_calib.
    bits: 8, 4, or a dict mapping Conv/Linear node names to 4 or 8 (first conv and last
    linear stay at 8 unless named). options: QuantConfig fields (calib_method, profile,
    residual_bits, weight_clip, ...)."""
    if isinstance(calib, (str, os.PathLike)):
        calib_path = os.fspath(calib)
        calib, _ = load_npz_images(calib, ("x", "x_calib"), what="calibration data")
    else:
        calib_path = None
        calib = np.asarray(calib, np.float32)
    table = dict(bits) if isinstance(bits, dict) else {}
    default = 8 if isinstance(bits, dict) else int(bits)
    cfg = QuantConfig(default_bits=default, bits=table, **options)
    ig, fg, info = compile_model(model, calib, cfg)
    info["source"] = str(model) if isinstance(model, (str, os.PathLike)) else "<ModelProto>"
    if calib_path:
        info["calibration"]["data"] = calib_path
    return Model(ig, fg, info)


def load(path) -> Model:
    """A Model from an .intq artifact."""
    art = load_artifact(path)
    return Model(art.integer, art.float, art.info)
