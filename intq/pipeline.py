"""Entry points that chain the stages: ONNX -> float graph -> passes."""
from __future__ import annotations

from .frontend import import_onnx
from .ir import Graph
from .passes import run_passes


def float_graph(model, allow_unsupported: bool = False) -> Graph:
    """Import an ONNX model (path or ModelProto) and run the whole float pass pipeline;
    allow_unsupported keeps nodes intq cannot import as placeholders (`intq inspect`)."""
    return run_passes(import_onnx(model, allow_unsupported))


def check_npy_header(f, what: str) -> None:
    """Read an .npy header from the open file f and refuse, before anything is allocated,
    an array whose declared size exceeds the memory limit (a crafted header can declare
    petabytes in a few bytes). Leaves f anywhere; callers reopen or seek."""
    from .artifact import read_npy_header
    from .errors import IntqError
    from .limits import check_bytes

    try:
        shape, _, dtype = read_npy_header(f)
    except (OSError, ValueError) as e:
        raise IntqError(f"{what}: not a readable .npy array ({e})") from None
    need = dtype.itemsize
    for d in shape:
        need *= int(d)
    check_bytes(need, f"{what} (shape {tuple(shape)}, {dtype})")


def load_npy(path, what: str):
    """An .npy array, its size checked against the memory limit before it is read."""
    import os

    import numpy as np

    from .errors import IntqError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise IntqError(f"{what} {path}: no such file")
    with open(path, "rb") as f:
        check_npy_header(f, f"{what} {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise IntqError(f"{what} {path}: not a readable .npy file ({e})") from None


def load_npz_images(path, keys=("x", "x_calib"), label_keys=("y",), what="data"):
    """(images float32 NCHW, labels or None) from an .npz file, with one-line errors."""
    import os
    import zipfile
    import zlib

    import numpy as np

    from .errors import IntqError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise IntqError(f"{what} {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            key = next((k for k in keys if k in z.files), None)
            if key is None:
                raise IntqError(f"{what} {path}: no array named {' or '.join(keys)} "
                                f"(found: {', '.join(z.files) or 'none'})")
            lkey = next((k for k in label_keys if k in z.files), None)
            members = set(z.zip.namelist())
            for k in (key, lkey) if lkey else (key,):
                # numpy lists member "x.npy" as "x", and a member stored as plain "x" too
                with z.zip.open(f"{k}.npy" if f"{k}.npy" in members else k) as f:
                    check_npy_header(f, f"{what} {path} [{k}]")
            x = np.asarray(z[key])
            y = np.asarray(z[lkey]) if lkey else None
    except IntqError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise IntqError(f"{what} {path}: not a readable .npz file ({e})") from None
    if x.dtype.kind not in "fiu":
        raise IntqError(f"{what} {path}: images must be numeric, got {x.dtype}")
    if x.ndim != 4:
        raise IntqError(f"{what} {path}: images must be NCHW (4-D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise IntqError(f"{what} {path}: images contain NaN or infinity")
    if y is not None and (y.ndim != 1 or len(y) != len(x)):
        raise IntqError(f"{what} {path}: labels must be one per image, got shape {y.shape}")
    return x.astype(np.float32), y


def onnx_input_chw(model) -> tuple:
    """(C, H, W) of an ONNX model's first input, read from the file without importing it."""
    from .errors import IntqError
    from .frontend.load import load_onnx

    proto = load_onnx(model)
    inits = {t.name for t in proto.graph.initializer}
    vi = next((i for i in proto.graph.input if i.name not in inits), None)
    if vi is None:
        raise IntqError("the model has no input besides its initializers")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    if len(dims) != 4 or None in dims[1:]:
        raise IntqError(f"input {vi.name!r} must be NCHW with static C, H, W; got {dims}")
    return tuple(dims[1:])


def load_data(path, chw_fn, keys, label_keys=("y",), what="data", preprocess="imagenet"):
    """(images, labels or None) from an .npz file, or from an image folder preprocessed to
    the model's input shape `chw_fn()` (see `intq.images`)."""
    import os

    if os.path.isdir(os.fspath(path)):
        from .images import load_image_folder

        return load_image_folder(path, chw_fn(), preprocess, what=what)
    return load_npz_images(path, keys, label_keys, what)


def compile_model(model, calib_images, config, calibration=None):
    """ONNX model (path, ModelProto, or an already imported float Graph) + calibration
    images + QuantConfig -> (integer graph, float graph, info). `calibration` replaces the
    statistics gathered from the images (anything with `Calibration.range`'s signature:
    quantization-aware training passes the activation ranges it trained with)."""
    import time

    from .errors import IntqError
    from .quant.calibrate import Calibration
    from .quant.lower import lower_to_integer
    from .validate import validate_float_graph

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
    ig = lower_to_integer(fg, calib, config)
    info = {"calibration": {"images": int(len(calib_images)), "method": config.calib_method,
                            "seconds": round(time.perf_counter() - t0, 3)}}
    return ig, fg, info
