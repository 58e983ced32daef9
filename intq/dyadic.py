"""Dyadic requantization, specified once: turn a float rescale factor into a dyadic number
b / 2**c (`dyadic_multiplier`) and apply it to integer accumulators with a single rounding
(`requantize`), as in HAWQ-V3's integer-only inference. Every integer kernel in intq rounds
by the rule in `requantize`'s docstring; `requantize_exact` is the same rule in pure Python
integers, the reference the tests compare against.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import IntqError

MAX_B = 2**31  # requantize needs 0 <= b < MAX_B so that x * b cannot overflow int64
MAX_X = 2**32  # ... together with |x| < MAX_X
MAX_C = 62


def _round_half_up(num: int, den: int) -> int:
    """floor(num / den + 1/2) for integers, den > 0."""
    return (2 * num + den) // (2 * den)


def dyadic_multiplier(scale: float, multiplier_bits: int = 31,
                      max_shift: int = 62) -> tuple[int, int]:
    """The dyadic number b / 2**c nearest to `scale`, with 0 <= b < 2**multiplier_bits and
    0 <= c <= max_shift; returns (b, c).

    b is `scale`'s mantissa rounded (half up, exactly) to `multiplier_bits` bits, so the
    relative error is at most 2**-multiplier_bits. When that would need c > max_shift
    (scale below about 2**(multiplier_bits - max_shift - 1)), c = max_shift and b keeps
    fewer bits; the absolute error is then still at most 2**-(c + 1), and a scale that
    rounds to b = 0 gives (0, 0). multiplier_bits=1 gives b = 1 and 2**-c the power of two
    nearest to `scale` (ties, i.e. scale = 1.5 * 2**k, go up).

    Raises IntqError for a negative, NaN or infinite scale, and for one too large to be
    written with c >= 0 (about 2**multiplier_bits or more).
    """
    if multiplier_bits < 1 or max_shift < 0:
        raise ValueError(f"need multiplier_bits >= 1 and max_shift >= 0, got "
                         f"{multiplier_bits} and {max_shift}")
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise IntqError(f"rescale factor {scale!r} is not a finite non-negative number")
    if scale == 0:
        return 0, 0
    _, e = math.frexp(scale)  # scale = m * 2**e, 0.5 <= m < 1
    c = min(multiplier_bits - e, max_shift)
    num, den = scale.as_integer_ratio()  # exact: no float rounding before ours
    # One rounding of the exact scale * 2**c, also when c was capped (rounding the full
    # mantissa first and shifting it again would round twice).
    b = _round_half_up(num << c, den) if c >= 0 else _round_half_up(num, den << -c)
    if b == 2**multiplier_bits:  # the mantissa rounded up to the next power of two
        b, c = b >> 1, c - 1
    if b == 0:
        return 0, 0
    if c < 0:
        # b >= 2**(multiplier_bits - 1) here, so b << -c would not fit in multiplier_bits.
        raise IntqError(f"rescale factor {scale!r} is too large for a dyadic multiplier "
                        f"(b / 2**c with a {multiplier_bits}-bit b and c >= 0 must be below "
                        f"2**{multiplier_bits} - 0.5)")
    return b, c


def dyadic_multipliers(scales, multiplier_bits: int = 31,
                       max_shift: int = 62) -> tuple[np.ndarray, np.ndarray]:
    """`dyadic_multiplier` for each element of `scales` (e.g. per output channel); returns
    int64 arrays b and c of `scales`' shape."""
    scales = np.asarray(scales, dtype=np.float64)
    pairs = [dyadic_multiplier(s, multiplier_bits, max_shift) for s in scales.ravel().tolist()]
    b = np.array([p[0] for p in pairs], dtype=np.int64).reshape(scales.shape)
    c = np.array([p[1] for p in pairs], dtype=np.int64).reshape(scales.shape)
    return b, c


def _int_array(name: str, v, lo: int, hi: int) -> np.ndarray:
    """v as an int64 array, after checking lo <= v < hi (a ValueError: callers are intq's own
    lowering and kernels, so a violation is a bug, not a user error)."""
    a = np.asarray(v)
    if a.dtype.kind not in "iu":
        raise ValueError(f"requantize: {name} must be an integer array, got dtype {a.dtype}")
    # Narrow dtypes cannot leave the range; only scan what could.
    if a.size and not (np.iinfo(a.dtype).min >= lo and np.iinfo(a.dtype).max < hi):
        if int(a.min()) < lo or int(a.max()) >= hi:
            raise ValueError(f"requantize: {name} must lie in [{lo}, {hi}), got values in "
                             f"[{int(a.min())}, {int(a.max())}]")
    return a.astype(np.int64, copy=False)


def requantize(x, b, c, lo, hi, zero_point=0) -> np.ndarray:
    """y = clamp(round(x * b / 2**c) + zero_point, lo, hi) in int64, rounding once, ties
    toward +infinity: round(v) = floor(v + 1/2). In shifts that is ((x*b + 2**(c-1)) >> c)
    for c > 0 and x*b for c = 0, with an arithmetic (flooring) shift; the code computes the
    same value without the overflow that sum could cause. Examples, b = 1, c = 1:

    >>> requantize(np.array([3, -3, -1, 1, -2]), 1, 1, -128, 127).tolist()
    [2, -1, 0, 1, -1]

    3/2 = 1.5 -> 2, -3/2 = -1.5 -> -1, -1/2 = -0.5 -> 0, 1/2 = 0.5 -> 1, -2/2 = -1 -> -1.
    The zero point is added before the clamp:

    >>> requantize(np.array([200, 200]), 1, 1, 0, 127, zero_point=np.array([20, 30])).tolist()
    [120, 127]

    Why this rule: it is one rounding of the exact product, with no intermediate rounding
    of x*b (unlike gemmlowp's SaturatingRoundingDoublingHighMul followed by
    RoundingDivideByPOT, which rounds twice), and it is what TFLite's single-rounding
    reference path and XNNPACK's "rndnu" requantization compute. It deliberately differs
    from numpy's np.round (half to even) and from HAWQ-V3's reference, which computes
    x * b / 2**c in float64 and applies torch.round (also half to even, and inexact once
    |x * b| exceeds 2**53).

    b, c, lo, hi and zero_point broadcast against x (per output channel: give b and c the
    shape (C, 1, 1) for an NCHW tensor). Preconditions, checked: x an integer array with
    |x| < 2**32 (an INT32 accumulator always is), 0 <= b < 2**31, 0 <= c <= 62,
    |zero_point| < 2**31; together they keep every intermediate inside int64.
    """
    x = _int_array("x", x, -MAX_X + 1, MAX_X)
    b = _int_array("b", b, 0, MAX_B)
    c = _int_array("c", c, 0, MAX_C + 1)
    zero_point = _int_array("zero_point", zero_point, -MAX_B + 1, MAX_B)
    xb = x * b  # |x * b| < 2**63 - 2**32
    # (xb + 2**(c-1)) >> c can overflow int64 (2**61 added to up to ~2**63), so shift by
    # c-1 first and add the half afterwards: floor((floor(xb / 2**(c-1)) + 1) / 2) equals
    # floor((xb + 2**(c-1)) / 2**c) exactly. For c = 0 both shifts are 0 and nothing is added.
    h = np.maximum(c - 1, 0)
    y = ((xb >> h) + (c > 0)) >> (c - h)
    return np.asarray(np.clip(y + zero_point, lo, hi), dtype=np.int64)


def requantize_exact(x: int, b: int, c: int) -> int:
    """floor(x * b / 2**c + 1/2) in Python integers: the rounding rule of `requantize`,
    written independently of its shifts, for tests."""
    return _round_half_up(int(x) * int(b), 2 ** int(c))
