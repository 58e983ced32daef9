"""The twin's arithmetic primitives, in torch: the dyadic rescale of exact mode and the float
fake quantization of naive mode.

These restate intq's rounding rule independently of `intq.dyadic` (the twin must not call
the numpy specification): an exact rescale is

    DN_b,c(x) = floor(x * b / 2**c + 1/2)        (one rounding, ties toward +infinity)

computed on int64 tensors as ((x*b >> (c-1)) + 1) >> 1 for c > 0 and x*b for c = 0, with
arithmetic (flooring) shifts. Shifting by c-1 first and adding the half afterwards gives the
same integer as (x*b + 2**(c-1)) >> c without the overflow that sum could cause; |x| < 2**32
and 0 <= b < 2**31 (the validator's bounds) keep x*b inside int64.
"""
from __future__ import annotations

import torch

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def rescale(x: torch.Tensor, b, c) -> torch.Tensor:
    """floor(x * b / 2**c + 1/2) on int64 tensors (b, c broadcast against x), no clamp."""
    b = torch.as_tensor(b, dtype=torch.int64, device=x.device)
    c = torch.as_tensor(c, dtype=torch.int64, device=x.device)
    xb = x * b
    h = torch.clamp(c - 1, min=0)
    return ((xb >> h) + (c > 0).to(torch.int64)) >> (c - h)


def requantize(x, b, c, lo, hi, zero_point=0) -> torch.Tensor:
    """clamp(DN_b,c(x) + zero_point, lo, hi): the rescale every rounding point of exact mode
    applies (Requantize, each add/concat branch, pools, affine maps, products)."""
    return torch.clamp(rescale(x, b, c) + zero_point, lo, hi)


def fake_quantize(v: torch.Tensor, scale: float, zero_point: int, lo: int, hi: int) -> torch.Tensor:
    """Naive mode's quantization point, as float fake quantization (torch.ao's FakeQuantize)
    does it: S * (clamp(round(v / S) + z, lo, hi) - z) in float32, round half to even."""
    q = torch.clamp(torch.round(v / scale) + zero_point, lo, hi)
    return (q - zero_point) * scale
