"""AdaRound's learned rounding direction (Nagel et al. 2020), as BRECQ and QDrop use it.

Each weight w on its channel's grid step s is floor(w / s) + h(V), h the rectified
sigmoid clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1), zeta = 1.1, gamma = -0.1, one V
per weight, initialised so that h(V) = w / s - floor(w / s) (the soft weight starts at w).
The reconstruction loss plus lambda * sum(1 - |2 h(V) - 1|^beta), beta annealed from 20
to 2, drives every h to 0 or 1; the hard weight is floor(w / s) + [V >= 0] (h >= 1/2
exactly when V >= 0), clamped to [-qmax, qmax]. So the integer is always the floor or the
ceiling of w / s: at most one step from round-to-nearest.
"""
from __future__ import annotations

import numpy as np
import torch

ZETA, GAMMA = 1.1, -0.1


class SoftRounding(torch.nn.Module):
    """The learnable rounding of one layer's weights w (float64 numpy, (M, ...)) on the grid
    of per-channel scales (M,) and symmetric bound qmax."""

    def __init__(self, w: np.ndarray, scales: np.ndarray, qmax: int):
        super().__init__()
        shape = (-1,) + (1,) * (w.ndim - 1)
        ratio = w.astype(np.float64) / np.asarray(scales, np.float64).reshape(shape)
        base = np.floor(ratio)
        rest = np.clip(ratio - base, 1e-4, 1 - 1e-4)
        v0 = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1)
        self.register_buffer("base", torch.as_tensor(base, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scales, np.float64).reshape(shape),
                                                      dtype=torch.float32))
        self.v = torch.nn.Parameter(torch.as_tensor(v0, dtype=torch.float32))
        self.qmax = qmax

    def h(self):
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def soft(self):
        return self.scale * torch.clamp(self.base + self.h(), -self.qmax, self.qmax)

    def hard_integers(self) -> np.ndarray:
        q = torch.clamp(self.base + (self.v.detach() >= 0).float(), -self.qmax, self.qmax)
        return q.cpu().numpy().astype(np.int8)

    def regularizer(self, beta: float):
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()


def beta_schedule(step: int, steps: int, warmup: float = 0.2, start: float = 20.0,
                  end: float = 2.0):
    """None during the warm-up (no regularizer), then beta decaying linearly start -> end."""
    w = int(warmup * steps)
    if step < w:
        return None
    t = (step - w) / max(1, steps - w)
    return end + (start - end) * max(0.0, 1 - t)
