"""Image folders as calibration and evaluation data (`--calib DIR`, `--data DIR`).

A folder of images, or of class subfolders (`DIR/<class>/*.jpg`, labels = the classes'
sorted order, as torchvision's ImageFolder and the ImageNet validation layout), is read one
file at a time with Pillow (an optional dependency: `pip install pillow`) and turned into
float32 NCHW arrays of the model's input shape (C, H, W) by a named preprocessing:

* ``imagenet``: resize the shorter side to round(H / 0.875) (256 for 224), bilinear; center
  crop H x W; RGB in [0, 1]; subtract mean (0.485, 0.456, 0.406), divide by std
  (0.229, 0.224, 0.225) (torchvision's ImageNet evaluation transform);
* ``inception``: the same resize and crop, then scaled to [-1, 1] (2x - 1), as TensorFlow's
  Inception and EfficientNet-Lite-style ports expect;
* ``none``: RGB (or grey for C = 1) in [0, 1], no resizing: every image must be H x W.
Extensions read: .jpg .jpeg .png .bmp .ppm .pgm .webp (case-insensitive).

A file that cannot be decoded (truncated, not an image) is skipped and counted, not fatal:
`image_batches` appends it to its `skipped` list and the commands report the count; a
folder in which no image can be read is an error.
"""
from __future__ import annotations

import os

import numpy as np

from .errors import IntqError

PREPROCESSING = ("imagenet", "inception", "none")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp")


class UnreadableImage(IntqError):
    """One file that Pillow cannot decode: skipped and counted by `image_batches`."""


MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def list_images(folder) -> tuple[list[str], list[int] | None]:
    """(files, labels): files in sorted order; labels from class subfolders, else None."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise IntqError(f"{folder}: no such folder")
    pick = lambda d: sorted(f for f in os.listdir(d) if f.lower().endswith(EXTENSIONS))  # noqa: E731
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if classes:
        files, labels = [], []
        for k, c in enumerate(classes):
            names = pick(os.path.join(folder, c))
            files += [os.path.join(folder, c, f) for f in names]
            labels += [k] * len(names)
    else:
        files, labels = [os.path.join(folder, f) for f in pick(folder)], None
    if not files:
        raise IntqError(f"{folder}: no images ({', '.join(EXTENSIONS)}) found")
    return files, labels


def load_image(path, chw, preprocess: str) -> np.ndarray:
    """One image as float32 (C, H, W) under the named preprocessing."""
    try:
        from PIL import Image
    except ImportError:
        raise IntqError("reading image folders needs Pillow: pip install pillow") from None
    if preprocess not in PREPROCESSING:
        raise IntqError(f"unknown preprocessing {preprocess!r}; choose from {', '.join(PREPROCESSING)}")
    c, h, w = chw
    if c not in (1, 3):
        raise IntqError(f"image folders feed 1- or 3-channel models, this one takes {c}")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if preprocess != "none":
                short = round(h / 0.875)
                scale = short / min(im.size)
                im = im.resize((max(w, round(im.size[0] * scale)), max(h, round(im.size[1] * scale))),
                               Image.BILINEAR)
                left, top = (im.size[0] - w) // 2, (im.size[1] - h) // 2
                im = im.crop((left, top, left + w, top + h))
            a = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # the bomb: an absurd size
        raise UnreadableImage(f"{path}: not a readable image ({e})") from None
    a = a[None] if c == 1 else a.transpose(2, 0, 1)
    if a.shape != (c, h, w):
        raise IntqError(f"{path}: image is {a.shape[2]}x{a.shape[1]}, the model expects {w}x{h} "
                        f"(use --preprocess imagenet or inception to resize)")
    if preprocess == "imagenet":
        a = (a - MEAN[:c, None, None]) / STD[:c, None, None]
    elif preprocess == "inception":
        a = 2.0 * a - 1.0
    return a.astype(np.float32)


def image_batches(folder, chw, preprocess: str, batch: int = 64, limit: int | None = None,
                  skipped: list | None = None, listing=None):
    """Yield (images float32 NCHW, labels or None) batch by batch: one batch in memory.
    Unreadable files are left out and appended to `skipped`; if no file at all can be
    read, IntqError. `listing`: the folder's `list_images`, if the caller has it."""
    files, labels = listing or list_images(folder)
    if limit is not None:
        files = files[:limit]
    skipped = [] if skipped is None else skipped
    read = 0
    for start in range(0, len(files), batch):
        xs, ys = [], []
        for i, f in enumerate(files[start:start + batch]):
            try:
                xs.append(load_image(f, chw, preprocess))
            except UnreadableImage:
                skipped.append(f)
                continue
            if labels is not None:
                ys.append(labels[start + i])
        if xs:
            read += len(xs)
            yield np.stack(xs), None if labels is None else np.asarray(ys, np.int64)
    if not read:
        raise IntqError(f"{folder}: none of its {len(files)} images can be read "
                        f"(first: {skipped[0] if skipped else '?'})")


def report_skipped(skipped: list, what: str) -> None:
    """One stderr line for the unreadable files of a folder, if any."""
    import sys

    if skipped:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        print(f"intq: {what}: skipped {len(skipped)} unreadable image(s): {skipped[0]}{more}",
              file=sys.stderr)


def load_image_folder(folder, chw, preprocess: str, limit: int | None = None, what: str = "images"):
    """All of a folder's readable images (up to `limit`) and labels as arrays; unreadable
    files are reported on stderr and left out."""
    skipped: list = []
    xs, ys = zip(*image_batches(folder, chw, preprocess, limit=limit, skipped=skipped))
    report_skipped(skipped, what)
    return np.concatenate(xs), None if ys[0] is None else np.concatenate(ys)
