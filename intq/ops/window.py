"""Sliding windows over NCHW tensors: the shared geometry of convolution and pooling.

Output sizes follow ONNX (and PyTorch): floor((H + pads - dilated_kernel) / stride) + 1, or
ceil in ceil_mode, where a window may not start inside the end padding. The helpers are
dtype-agnostic so the integer reference executor uses the same geometry.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import IntqError


def output_size(n: int, k: int, s: int, d: int, p0: int, p1: int, ceil_mode: bool = False) -> int:
    if min(k, s, d) < 1 or min(p0, p1) < 0:
        raise IntqError(f"kernel {k}, stride {s} and dilation {d} must be >= 1 and pads "
                        f"{p0}, {p1} >= 0")
    eff = (k - 1) * d + 1
    num = n + p0 + p1 - eff
    if num < 0:
        raise IntqError(f"window of {eff} does not fit an input of {n} padded by {p0}+{p1}")
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= n + p0:
        out -= 1
    return out


def spatial_output(hw, kernel, strides, pads, dilations, ceil_mode=False):
    (h, w), (kh, kw), (sh, sw), (dh, dw) = hw, kernel, strides, dilations
    pt, pl, pb, pr = pads
    return (output_size(h, kh, sh, dh, pt, pb, ceil_mode),
            output_size(w, kw, sw, dw, pl, pr, ceil_mode))


def windows(x, kernel, strides, pads, dilations, ceil_mode=False, pad_value=0, beyond_value=None):
    """Return a view of shape (N, C, Ho, Wo, kh, kw) over x padded by `pads` (t, l, b, r).

    `pad_value` fills the declared padding; `beyond_value` fills what ceil_mode reads past
    it (defaults to pad_value), so average pooling can leave those cells out of its count.
    """
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    ho, wo = spatial_output((h, w), kernel, strides, pads, dilations, ceil_mode)
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    extra_h = max(0, (ho - 1) * sh + eh - xp.shape[2])
    extra_w = max(0, (wo - 1) * sw + ew - xp.shape[3])
    if extra_h or extra_w:
        fill = pad_value if beyond_value is None else beyond_value
        xp = np.pad(xp, ((0, 0), (0, 0), (0, extra_h), (0, extra_w)), constant_values=fill)
    v = sliding_window_view(xp, (eh, ew), axis=(2, 3))
    return v[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :ho, :wo]


def conv2d(x, w, strides, pads, dilations, groups, pad_value=0, acc_dtype=None):
    """Grouped 2-D convolution without bias: x (N,C,H,W), w (M, C/groups, kh, kw).

    Computed as one batched matmul per group over an im2col view; `acc_dtype` is the
    accumulation type (the input dtype by default; int64 for the integer reference).
    """
    n, c, _, _ = x.shape
    m, cg, kh, kw = w.shape
    acc = np.dtype(acc_dtype or x.dtype)
    win = windows(x, (kh, kw), strides, pads, dilations, pad_value=pad_value)
    ho, wo = win.shape[2], win.shape[3]
    win = win.reshape(n, groups, cg, ho, wo, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6)
    cols = win.reshape(n, groups, ho * wo, cg * kh * kw).astype(acc, copy=False)
    wg = w.reshape(groups, m // groups, cg * kh * kw).transpose(0, 2, 1).astype(acc, copy=False)
    out = np.matmul(cols, wg)                       # (n, groups, ho*wo, m/groups)
    return out.transpose(0, 1, 3, 2).reshape(n, m, ho, wo)
