"""Images (and labels) in, arrays out: the one place every command and the Python API read
their data from, and where `intq run` writes its output.

A data source is any of:

* arrays: float32 NCHW images, or an (images, labels) pair;
* an `.npy` file: images only, memory-mapped after its header is checked, so it is read
  batch by batch (`intq run`, and `verify --inputs`, `eval`/`compile` where labels are not
  needed);
* an `.npz` file: images under the first of `keys` present, labels under the first of
  `label_keys` (e.g. `x`/`x_calib`, `y`/`y_eval`);
* a folder of images, or of class subfolders (labels in sorted class order), decoded and
  preprocessed to the model's input shape by `intq.images` (`--preprocess`).

`Data(source, ...)` opens one and reads it batch by batch (`batches`) or whole (`load`);
`load_data` is the whole-array shortcut the commands use for calibration and training.
Every problem with a file is one IntqError line naming it; declared sizes are checked
against the memory limit before anything is read.
"""
from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from .artifact import read_npy_header
from .errors import IntqError
from .frontend.load import load_onnx
from .images import image_batches, list_images, load_image_folder, report_skipped
from .limits import check_bytes

NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK"


def check_npy_header(f, what: str) -> tuple:
    """Read an .npy header from the open file f and refuse, before anything is allocated,
    an array whose declared size exceeds the memory limit (a crafted header can declare
    petabytes in a few bytes). Returns (shape, fortran_order, dtype); leaves f anywhere,
    callers reopen or seek."""
    try:
        shape, fortran, dtype = read_npy_header(f)
    except (OSError, ValueError) as e:
        raise IntqError(f"{what}: not a readable .npy array ({e})") from None
    need = dtype.itemsize
    for d in shape:
        need *= int(d)
    check_bytes(need, f"{what} (shape {tuple(shape)}, {dtype})")
    return shape, fortran, dtype


def load_npy(path, what: str, mmap: bool = False):
    """An .npy array, its size checked against the memory limit before it is read. With
    mmap, a read-only memory map: pages are read as slices of it are used, so a caller that
    works batch by batch holds one batch, not the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise IntqError(f"{what} {path}: no such file")
    with open(path, "rb") as f:
        _, _, dtype = check_npy_header(f, f"{what} {path}")
    if mmap and dtype.hasobject:  # np.load would say only "cannot be memory-mapped"
        raise IntqError(f"{what} {path}: must be numeric, got {dtype}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # a truncated file cannot be mapped either
        raise IntqError(f"{what} {path}: not a readable .npy file ({e})") from None


def check_images(x, y, what: str):
    """(images float32, labels) after the checks every loaded data set gets: numeric NCHW
    images, finite, at most one label per image."""
    if x.dtype.kind not in "fiu":
        raise IntqError(f"{what}: images must be numeric, got {x.dtype}")
    if x.ndim != 4:
        raise IntqError(f"{what}: images must be NCHW (4-D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise IntqError(f"{what}: images contain NaN or infinity")
    if y is not None and (y.ndim != 1 or len(y) != len(x)):
        raise IntqError(f"{what}: labels must be one per image, got shape {y.shape}")
    return x.astype(np.float32), y


def load_npz_images(path, keys=("x", "x_calib"), label_keys=("y",), what="data"):
    """(images float32 NCHW, labels or None) from an .npz file, with one-line errors."""
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
    return check_images(x, y, f"{what} {path}")


def onnx_input_chw(model, input_shapes: dict | None = None) -> tuple:
    """(C, H, W) of an ONNX model's first input, read from the file without importing it
    (after `input_shapes` fixes its dynamic dimensions)."""
    proto = load_onnx(model, input_shapes)
    inits = {t.name for t in proto.graph.initializer}
    vi = next((i for i in proto.graph.input if i.name not in inits), None)
    if vi is None:
        raise IntqError("the model has no input besides its initializers")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    if len(dims) != 4 or None in dims[1:]:
        raise IntqError(f"input {vi.name!r} must be NCHW with static C, H, W; got {dims} "
                        f"(fix it with --input-shape {vi.name}:1,C,H,W)")
    return tuple(dims[1:])


def _file_kind(path: str) -> str:
    """"npy" or "npz" from the file's first bytes (a name says nothing), else "npz" so that
    its loader words the error."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError:
        return "npz"
    return "npy" if head == NPY_MAGIC else "npz"


class Data:
    """One data source (see the module docstring), opened: `count` images (for a folder,
    the files listed, some of which may turn out unreadable), `labelled`, and `skipped`
    (the unreadable files met so far). `chw` is the model's input (C, H, W), or a function
    returning it, asked only for a folder."""

    def __init__(self, source, labels=None, chw=None, keys=("x",), label_keys=("y",),
                 what: str = "data", preprocess: str = "imagenet"):
        self.what, self.preprocess, self.skipped = what, preprocess, []
        self._chw, self._listing, self._x, self._y = chw, None, None, None
        if not isinstance(source, (str, os.PathLike)):
            x = np.asarray(source)
            y = None if labels is None else np.asarray(labels)
            self._x, self._y = check_images(x, y, what)
            self.name = "images"
        else:
            path = os.fspath(source)
            self.name = path
            if os.path.isdir(path):
                self._listing = list_images(path)
            elif not os.path.isfile(path):
                raise IntqError(f"{what} {path}: no such file")
            elif _file_kind(path) == "npy":
                x = load_npy(path, what, mmap=True)
                if x.dtype.kind not in "fiu":
                    raise IntqError(f"{what} {path}: images must be numeric, got {x.dtype}")
                if x.ndim != 4:
                    raise IntqError(f"{what} {path}: images must be NCHW (4-D), got shape {x.shape}")
                self._x = x
            else:
                self._x, self._y = load_npz_images(path, keys, label_keys, what)
            if labels is not None:
                raise IntqError(f"{what} {path}: labels come from the file or folder, not an argument")
        self.count = len(self._listing[0]) if self._listing else len(self._x)
        self.labelled = (self._listing[1] if self._listing else self._y) is not None
        self._label_hint = ("no class subfolders" if self._listing else
                            "an .npy holds images only" if isinstance(self._x, np.memmap) else
                            f"key {' or '.join(label_keys)}" if self.name != "images" else
                            "none given")

    @property
    def is_folder(self) -> bool:
        return self._listing is not None

    def require_labels(self) -> Data:
        if not self.labelled:
            raise IntqError(f"{self.what} {self.name}: no labels ({self._label_hint})")
        return self

    def chw(self) -> tuple:
        return tuple(self._chw() if callable(self._chw) else self._chw)

    def batches(self, batch: int = 64):
        """Yield (images float32 NCHW, labels or None), at most `batch` images at a time; a
        folder's unreadable files are left out, collected in `skipped` and reported on
        stderr once the folder is read."""
        if batch < 1:
            raise IntqError(f"batch size must be at least 1, got {batch}")
        if self._listing:
            self.skipped.clear()
            yield from image_batches(self.name, self.chw(), self.preprocess, batch=batch,
                                     skipped=self.skipped, listing=self._listing)
            report_skipped(self.skipped, f"{self.what} {self.name}")
            return
        for start in range(0, len(self._x), batch):
            xb = np.asarray(self._x[start:start + batch])  # reads these pages of a mapped file
            if not np.isfinite(xb).all():  # a mapped file is checked as it is read
                raise IntqError(f"{self.what} {self.name}: images contain NaN or infinity")
            yield xb.astype(np.float32, copy=False), None if self._y is None else self._y[start:start + batch]

    def load(self):
        """(images float32 NCHW, labels or None), all of them."""
        if self._listing:
            return load_image_folder(self.name, self.chw(), self.preprocess, what=f"{self.what} {self.name}")
        if isinstance(self._x, np.memmap):
            return check_images(np.asarray(self._x), None, f"{self.what} {self.name}")
        return self._x, self._y


def load_data(source, chw=None, keys=("x",), label_keys=("y",), what="data", preprocess="imagenet"):
    """(images, labels or None) from arrays, an .npy or .npz file, or an image folder
    preprocessed to the model's input shape `chw` (a tuple, or a function returning it,
    called only for a folder)."""
    return Data(source, chw=chw, keys=keys, label_keys=label_keys, what=what,
                preprocess=preprocess).load()


class NpyWriter:
    """An .npy file of known shape and dtype written part by part into an open binary file
    (the one `atomic_write` gives), the same bytes `np.save` writes for the whole array."""

    def __init__(self, f, shape, dtype):
        self.f, self.shape, self.dtype, self.rows = f, tuple(shape), np.dtype(dtype), 0
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                "shape": self.shape})

    def write(self, part) -> None:
        part = np.ascontiguousarray(part, dtype=self.dtype)
        if part.shape[1:] != self.shape[1:] or self.rows + len(part) > self.shape[0]:
            raise AssertionError(f"part {part.shape} does not fit the array {self.shape}")
        self.f.write(part.tobytes())
        self.rows += len(part)

    def close(self) -> None:
        if self.rows != self.shape[0]:
            raise AssertionError(f"wrote {self.rows} of {self.shape[0]} rows")
