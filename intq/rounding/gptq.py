"""GPTQ (Frantar et al. 2023): one-shot Hessian-aware rounding of one layer.

A layer's output error on its calibration inputs X is (W - Q) X; its squared norm is
sum over output channels of (w - q)^T H (w - q) with H = X X^T / n, one H per convolution
group (a depthwise channel has its own 9 x 9 H). GPTQ rounds the input columns one at a
time (in order of decreasing H diagonal, "act order") and after each rounding moves the
not-yet-rounded weights of the same output channel by the least-squares compensation of
that rounding's error (Optimal Brain Surgeon on the inverse Hessian's Cholesky factor).
The weights end on intq's grid: q = clamp(floor(v / s + 1/2), -qmax, qmax) with the
lowering's per-channel scale s, so the integers are the ones compiled. They may lie more
than one step from round-to-nearest of the original weight: the compensation moves them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _pad(x, pads):
    pt, pl, pb, pr = pads
    return F.pad(x, (pl, pr, pt, pb)) if any(pads) else x


def layer_columns(node, x, weight_shape, positions: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The layer's input as the matrix its weights multiply, per group: (G, D, columns)
    float32, D = C/G * kh * kw in the weight's (c, kh, kw) order; zero padding included.
    `positions` keeps that many output positions per image, drawn at random (a 9 x 9
    depthwise Hessian needs no 3 million samples; the unfolded input of a 112 x 112 layer
    would fill gigabytes)."""
    if node.op == "Linear" or x.dim() == 2:
        return x.reshape(x.shape[0], -1).float().T[None]
    a = node.attrs
    g = a["groups"]
    kh, kw = weight_shape[2:]
    xp = _pad(x.float(), a["pads"])
    (sh, sw), (dh, dw) = a["strides"], a["dilations"]
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    count = oh * ow
    pick = torch.arange(count)
    if positions is not None and count > positions:
        # sample before gathering: unfolding a 112 x 112 map whole would fill gigabytes
        pick = torch.randperm(count, generator=generator)[:positions]
    oy, ox = pick // ow, pick % ow
    ty = torch.arange(kh).repeat_interleave(kw) * dh
    tx = torch.arange(kw).repeat(kh) * dw
    rows = (oy[:, None] * sh + ty[None, :]).to(xp.device)       # (P, kh*kw)
    cols = (ox[:, None] * sw + tx[None, :]).to(xp.device)
    b, c = xp.shape[:2]
    patches = xp[:, :, rows, cols]                               # (B, C, P, kh*kw)
    p_ = patches.shape[2]
    patches = patches.permute(0, 1, 3, 2).reshape(b, g, (c // g) * kh * kw, p_)
    return patches.permute(1, 2, 0, 3).reshape(g, (c // g) * kh * kw, b * p_)


class Hessian:
    """Running H = X X^T / n (or a cross term) per group over calibration batches."""

    def __init__(self):
        self.h, self.n = None, 0

    def add(self, cols: torch.Tensor, left: torch.Tensor | None = None):
        """Add cols cols^T, or with `left` the cross term left cols^T (GPTQ's C)."""
        h = ((cols if left is None else left) @ cols.transpose(1, 2)).double()
        self.h = h if self.h is None else self.h + h
        self.n += cols.shape[2]

    def value(self) -> torch.Tensor:
        return self.h / max(self.n, 1)


def gptq_round(w, scales, qmax: int, h, damp: float = 0.01, act_order: bool = True,
               block: int = 128, return_updated: bool = False):
    """Integer weights (float64 tensor of integers, shape of w) for w (M, ...) with
    per-channel scales (M,) and per-group Hessians h (G, D, D), D = w[0].numel().
    return_updated: also the compensated weights, each as it stood when it was rounded
    (the integers are their nearest grid points; reconstruction can start from them).

    damp adds damp * mean(diag H) to the diagonal (GPTQ's dampening; the objective is
    then (w - q)^T (H + lambda I) (w - q)); a column no input ever reaches (zero diagonal)
    is rounded to nearest."""
    m = w.shape[0]
    g, d = h.shape[0], h.shape[1]
    rows = m // g
    W = w.double().reshape(g, rows, d).clone()
    s = scales.double().reshape(g, rows, 1)
    H = h.double().clone()
    dead = torch.diagonal(H, dim1=1, dim2=2) <= 0
    idx = torch.arange(d)
    H[:, idx, idx] += dead.double()
    mean_diag = torch.diagonal(H, dim1=1, dim2=2).mean(dim=1)
    H[:, idx, idx] += (damp * mean_diag)[:, None]
    if act_order:
        perm = torch.argsort(torch.diagonal(H, dim1=1, dim2=2), dim=1, descending=True)
    else:
        perm = idx.expand(g, d)
    inv = torch.argsort(perm, dim=1)
    W = torch.gather(W, 2, perm[:, None, :].expand(g, rows, d))
    H = torch.gather(torch.gather(H, 1, perm[:, :, None].expand(g, d, d)), 2,
                     perm[:, None, :].expand(g, d, d))
    # U: upper Cholesky factor of H^-1 (row i holds the OBS update of column i's error).
    L = torch.linalg.cholesky(H)
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    Q = torch.zeros_like(W)
    before = torch.zeros_like(W)
    for b0 in range(0, d, block):
        b1 = min(b0 + block, d)
        Wb = W[:, :, b0:b1].clone()
        Err = torch.zeros_like(Wb)
        Ub = U[:, b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = Wb[:, :, i]
            before[:, :, b0 + i] = col
            q = torch.clamp(torch.floor(col / s[..., 0] + 0.5), -qmax, qmax)
            Q[:, :, b0 + i] = q
            e = (col - q * s[..., 0]) / Ub[:, i, i][:, None]
            Wb[:, :, i:] -= e[:, :, None] * Ub[:, i, i:][:, None, :]
            Err[:, :, i] = e
        W[:, :, b1:] -= Err @ U[:, b0:b1, b1:]
    Q = torch.gather(Q, 2, inv[:, None, :].expand(g, rows, d)).reshape(w.shape)
    if return_updated:
        return Q, torch.gather(before, 2, inv[:, None, :].expand(g, rows, d)).reshape(w.shape)
    return Q


def float_target_weights(w, h, cross, damp: float = 0.01) -> torch.Tensor:
    """W' = W + W (C - H)(H + lambda I)^-1 per group (C = X_f X_q^T / n, H = X_q X_q^T / n):
    the least-squares weights whose output on the quantized input X_q matches W on the float
    input X_f (W C H^-1), written as a correction of W so that the damping only damps the
    correction: where the input carries no error (C = H) W' is W itself, not W shrunk
    towards 0 along H's small eigenvalues. GPTQ on (W', H) then minimizes
    ||Q X_q - W X_f||^2. lambda as in `gptq_round`."""
    g, d = h.shape[0], h.shape[1]
    m = w.shape[0]
    W = w.double().reshape(g, m // g, d)
    H = h.double().clone()
    idx = torch.arange(d)
    dead = torch.diagonal(H, dim1=1, dim2=2) <= 0
    Hd = H.clone()
    Hd[:, idx, idx] += dead.double()
    Hd[:, idx, idx] += (damp * torch.diagonal(Hd, dim1=1, dim2=2).mean(dim=1))[:, None]
    # (W (C - H) Hd^-1)^T = Hd^-1 (C - H)^T W^T
    delta = cross.double() - H
    corr = torch.linalg.solve(Hd, delta.transpose(1, 2) @ W.transpose(1, 2)).transpose(1, 2)
    return (W + corr).reshape(w.shape)
