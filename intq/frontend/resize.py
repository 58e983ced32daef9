"""ONNX Resize and Upsample (nearest and linear modes) resolved to tables at import.

ONNX defines the source pixel of every output pixel by a float formula: a coordinate
transform (`coordinate_transformation_mode`) and a rounding (`nearest_mode`). intq
evaluates it here, once, for the static input and output sizes, and records the result as
integer tables (`ResizeNearest`'s `rows` and `cols`), so no float reaches the executors.
Linear mode records each output row's two source rows and their weights (and the same
for columns); lowering turns the weights into 10-bit fixed point (`IntResizeLinear`).

The arithmetic is onnxruntime's (`upsamplebase.h`: float32 throughout, the scale a float32,
a size-given scale out/in in float32, the output size floor(scale * in) in float32), so
that at every tie, and every coordinate that float32 rounds onto a half, intq picks the
pixel onnxruntime picks; tests/test_resize.py checks each mode against it.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import IntqError

F = np.float32
# Not half_pixel_symmetric (opset 19): onnxruntime's build picks other pixels than its
# source's formula gives in float32 at near-ties (7 -> 4 columns: 0.50000017 in float32,
# column 0 in onnxruntime), so intq could not promise its pixels; no exporter emits it
# for nearest. Nor tf_crop_and_resize, which samples a region of interest.
TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
              "tf_half_pixel_for_nn")
# "simple" is the rounding of opsets before 11 (Upsample, Resize-10), which had no
# nearest_mode: truncation when enlarging, ceiling when shrinking.
ROUNDINGS = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


def original_coordinate(x, scale, length_resized, length_original, transform):
    """The float32 source coordinate of output index x along one axis."""
    x, scale, lr, lo = F(x), F(scale), F(length_resized), F(length_original)
    if transform == "half_pixel":
        return (x + F(0.5)) / scale - F(0.5)
    if transform == "pytorch_half_pixel":
        return (x + F(0.5)) / scale - F(0.5) if length_resized > 1 else F(0)
    if transform == "align_corners":
        return F(0) if length_resized == 1 else x * (lo - F(1)) / (lr - F(1))
    if transform == "asymmetric":
        return x / scale
    if transform == "tf_half_pixel_for_nn":
        return (x + F(0.5)) / scale
    raise IntqError(f"coordinate_transformation_mode {transform!r} is not supported")


def _round_half_away(v) -> int:
    """C's roundf. In float64, where |v| + 0.5 is exact for every float32 v (in float32,
    0.49999997 + 0.5 would round up to 1)."""
    v = float(v)
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def nearest_pixel(v, rounding, downsampling):
    """onnxruntime's get_nearest_pixel: the integer index for float32 coordinate v."""
    if rounding == "round_prefer_floor":
        if v == F(int(v)) + F(0.5):   # a half goes down, not away from zero
            return int(np.floor(v))
        return _round_half_away(v)
    if rounding == "round_prefer_ceil":
        return _round_half_away(v)
    if rounding == "floor":
        return int(np.floor(v))
    if rounding == "ceil":
        return int(np.ceil(v))
    if rounding == "simple":
        return int(np.ceil(v)) if downsampling else int(v)
    raise IntqError(f"nearest_mode {rounding!r} is not supported")


def nearest_indices(length_original, length_resized, scale, transform, rounding):
    """Source index of each of the `length_resized` outputs along one axis, clamped."""
    out = []
    for x in range(length_resized):
        v = original_coordinate(x, scale, length_resized, length_original, transform)
        i = nearest_pixel(v, rounding, F(scale) < F(1))
        out.append(min(max(i, 0), length_original - 1))
    return out


def resolve_sizes(in_shape, scales, sizes, where):
    """(output shape, float32 scale per axis) from exactly one of scales and sizes."""
    rank = len(in_shape)
    if sizes is not None and np.size(sizes):
        sizes = [int(v) for v in np.ravel(sizes)]
        if len(sizes) != rank or min(sizes) < 1:
            raise IntqError(f"{where}: sizes {sizes} do not fit an input of rank {rank}")
        return tuple(sizes), [F(o) / F(i) for o, i in zip(sizes, in_shape)]
    if scales is None or not np.size(scales):
        raise IntqError(f"{where}: needs constant scales or sizes")
    scales = [F(v) for v in np.ravel(scales)]
    if len(scales) != rank or min(scales) <= 0:
        raise IntqError(f"{where}: scales {[float(s) for s in scales]} do not fit an input of rank {rank}")
    out = tuple(int(F(s) * F(i)) for s, i in zip(scales, in_shape))
    if min(out) < 1:
        raise IntqError(f"{where}: scales {[float(s) for s in scales]} leave an empty output")
    return out, scales


def linear_taps(length_original, length_resized, scale, transform):
    """onnxruntime's bilinear setup along one axis: for each output index, the two source
    indices (i0, i1) and their float32 weights (w0 for i0, w1 for i1). A scale of exactly 1
    maps x to x; the coordinate is clamped to the input; where i0 == i1 (the last index)
    both weights are 1/2."""
    i0s, i1s, w0s, w1s = [], [], [], []
    for x in range(length_resized):
        if F(scale) == F(1):
            v = F(x)
        else:
            v = original_coordinate(x, scale, length_resized, length_original, transform)
        v = max(F(0), min(F(v), F(length_original - 1)))
        i0 = min(int(v), length_original - 1)
        i1 = min(i0 + 1, length_original - 1)
        w1, w0 = abs(v - F(i0)), abs(v - F(i1))   # the weight of a tap is the other's distance
        if i0 == i1:
            w0 = w1 = F(0.5)
        i0s.append(i0)
        i1s.append(i1)
        w0s.append(float(w0))
        w1s.append(float(w1))
    return i0s, i1s, w0s, w1s
