"""Numpy-only preprocessing and data loading for the scikit-learn digits set.

Evaluating a compiled model must not need torch or scikit-learn, so everything a
consumer needs (``preprocess`` and the loaders for the bundled ``.npz`` files)
lives here and depends on numpy alone.  Only ``load_split`` imports sklearn, and
only when called (it is what the training script uses to rebuild the split).
"""

from __future__ import annotations

import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CALIB_PATH = os.path.join(HERE, "digits_calib.npz")
TEST_PATH = os.path.join(HERE, "digits_test.npz")

# The split is part of the published numbers in accuracy.json; changing either
# constant silently changes every reported accuracy.
TEST_SIZE = 0.2
SPLIT_SEED = 0
N_CALIB = 256


def preprocess(images_8x8) -> np.ndarray:
    """Map (N, 8, 8) digits pixel values in [0, 16] to float32 (N, 1, 16, 16) in [0, 1]."""
    images = np.asarray(images_8x8, dtype=np.float64)
    if images.ndim == 2:
        # sklearn's ``data`` is the flattened (N, 64) view of the same images.
        images = images.reshape(-1, 8, 8)
    # Nearest-neighbour 2x upsampling: 16x16 leaves room for two stride-2 stages
    # and a 3x3 pool without the feature maps collapsing to 1x1 too early.
    x = np.repeat(np.repeat(images / 16.0, 2, axis=1), 2, axis=2)
    return x.astype(np.float32)[:, None, :, :]


def load_split():
    """Return (x_train, y_train, x_test, y_test), preprocessed; needs scikit-learn."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    img_tr, img_te, y_tr, y_te = train_test_split(
        d.images, d.target, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=d.target
    )
    return (preprocess(img_tr), y_tr.astype(np.int64), preprocess(img_te), y_te.astype(np.int64))


def load_calib(path: str = CALIB_PATH) -> np.ndarray:
    """Calibration batch: the first 256 preprocessed training images, float32 (256, 1, 16, 16)."""
    with np.load(path) as f:
        return f["x"]


def load_test(path: str = TEST_PATH):
    """Held-out test set: (x float32 (360, 1, 16, 16), y int64 (360,))."""
    with np.load(path) as f:
        return f["x"], f["y"]
