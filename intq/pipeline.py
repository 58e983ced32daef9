"""Entry points that chain the stages: ONNX -> float graph -> passes -> integer graph.
(Reading the calibration data is `intq.data`'s job; this module takes arrays.)"""
from __future__ import annotations

import time

from .errors import IntqError
from .frontend import import_onnx
from .ir import Graph
from .passes import run_passes
from .quant.calibrate import Calibration
from .quant.lower import lower_to_integer
from .validate import validate_float_graph


def float_graph(model, allow_unsupported: bool = False, input_shapes: dict | None = None) -> Graph:
    """Import an ONNX model (path or ModelProto) and run the whole float pass pipeline;
    allow_unsupported keeps nodes intq cannot import as placeholders (`intq inspect`);
    input_shapes fixes dynamic input dimensions (`intq.frontend.input_shapes`)."""
    return run_passes(import_onnx(model, allow_unsupported, input_shapes))


def compile_model(model, calib_images, config, calibration=None, rounding_options=None):
    """ONNX model (path, ModelProto, or an already imported float Graph) + calibration
    images + QuantConfig -> (integer graph, float graph, info). `calibration` replaces the
    statistics gathered from the images (anything with `Calibration.range`'s signature:
    quantization-aware training passes the activation ranges it trained with).
    With `config.rounding` other than nearest the weights' integers are learned on the
    calibration images first (`intq.rounding.learn_rounding`, given `rounding_options`:
    settings, device, progress, use_cache)."""
    fg = model if isinstance(model, Graph) else float_graph(model)
    # Refuse what the passes cannot make sense of (NaN weights from a BatchNormalization
    # with a negative variance, out-of-range attributes) before calibrating on it.
    validate_float_graph(fg)
    want = fg.values[fg.inputs[0]].shape
    if tuple(calib_images.shape[1:]) != tuple(want[1:]):
        raise IntqError(f"calibration images have shape {calib_images.shape[1:]} per sample, "
                        f"the model expects {tuple(want[1:])}")
    t0 = time.perf_counter()
    calib = calibration if calibration is not None else Calibration(fg, calib_images)
    seconds = round(time.perf_counter() - t0, 3)
    weights, rounding = None, None
    if config.rounding != "nearest":
        from .rounding import learn_rounding  # torch: imported only when asked for

        weights, rounding = learn_rounding(fg, calib_images, config, config.rounding,
                                           calibration=calib, **(rounding_options or {}))
    ig = lower_to_integer(fg, calib, config, weights)
    info = {"calibration": {"images": int(len(calib_images)), "method": config.calib_method,
                            "seconds": seconds}}
    if rounding is not None:
        info["rounding"] = rounding
    return ig, fg, info
