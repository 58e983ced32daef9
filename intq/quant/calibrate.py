"""Activation ranges from calibration data: min-max, percentile and MSE; and the mean
input each Conv/Linear weight sees, for bias correction.

The float graph runs over the calibration images in batches; per tensor we keep the running
min and max and a bounded random sample of values (for the percentile and MSE methods).
`Calibration.range(name, bits, method)` then picks the float range one tensor is quantized
over; MSE needs the bit width, so ranges are chosen during lowering, not here.

Per Conv/Linear layer we also keep, for every input channel and kernel tap, the mean of the
value that tap multiplies, over every output position of every image, zero padding
included (`input_means`): E[x] of `scheme.bias_correction`, exact at the borders and for
any stride and dilation.
"""
from __future__ import annotations

import numpy as np

from ..errors import IntqError
from ..float_executor import batches, run_float
from ..ops.window import windows

SAMPLE = 100_000


class Calibration:
    """Per-tensor statistics of a float graph over calibration data."""

    def __init__(self, graph, data: np.ndarray, batch: int = 64, seed: int = 0):
        """A model exported with a fixed batch runs in batches of exactly that size: the last
        one is padded with copies of its first image, and the padding is left out of every
        statistic, so any number of images calibrates it."""
        data = np.asarray(data)
        if data.dtype.kind not in "fiu":
            raise IntqError(f"calibration data must be numeric, got {data.dtype}")
        if data.ndim != 4 or len(data) == 0:
            raise IntqError(f"calibration data must be a non-empty NCHW array, got shape {data.shape}")
        if not np.isfinite(data).all():
            raise IntqError("calibration data contains NaN or infinity")
        rng = np.random.default_rng(seed)
        self.lo, self.hi, self.samples = {}, {}, {}
        layers = [n for n in graph.nodes if n.op in ("Conv", "Linear")]
        tap_sums: dict[str, np.ndarray] = {}
        positions: dict[str, int] = {}
        self.count = len(data)
        runs = list(batches(graph, data.astype(np.float32, copy=False), batch))
        keep = max(1, SAMPLE // len(runs))
        for xb, n in runs:
            env = run_float(graph, xb, trace=True)
            for name, value in env.items():
                if name in graph.constants or value.dtype.kind != "f":
                    continue
                if n < len(xb) and value.ndim and value.shape[0] == len(xb):
                    value = value[:n]
                self.lo[name] = min(self.lo.get(name, np.inf), float(value.min()))
                self.hi[name] = max(self.hi.get(name, -np.inf), float(value.max()))
                flat = value.ravel()
                pick = flat if flat.size <= keep else flat[rng.integers(0, flat.size, keep)]
                self.samples.setdefault(name, []).append(pick)
            for node in layers:
                x = env[node.inputs[0]][:n]
                if node.op == "Conv":
                    a, kernel = node.attrs, graph.values[node.inputs[1]].shape[2:]
                    # Sum over the images first: each tap's sum is then a strided sum over
                    # one map per channel (the windows are the same for every image).
                    total = x.sum(axis=0, dtype=np.float64)[None]
                    win = windows(total, kernel, a["strides"], a["pads"], a["dilations"])
                    s = win.sum(axis=(0, 2, 3)).reshape(x.shape[1], -1)
                    count = len(x) * win.shape[2] * win.shape[3]
                else:
                    s, count = x.sum(axis=0, dtype=np.float64).reshape(-1, 1), len(x)
                tap_sums[node.name] = tap_sums.get(node.name, 0.0) + s
                positions[node.name] = positions.get(node.name, 0) + count
        self.samples = {k: np.concatenate(v) for k, v in self.samples.items()}
        self._input_means = {k: v / positions[k] for k, v in tap_sums.items()}

    def input_means(self, layer: str) -> np.ndarray:
        """(input channels, kernel taps) float64: the mean input each weight of Conv/Linear
        `layer` multiplies on the calibration data (taps in the weight's kh x kw order)."""
        return self._input_means[layer]

    def range(self, name: str, bits: int, method: str, percentile: float = 99.99):
        lo, hi = self.lo[name], self.hi[name]
        if method == "minmax":
            return lo, hi
        x = self.samples[name]
        if method == "percentile":
            plo, phi = np.percentile(x, [100 - percentile, percentile])
            return (min(float(plo), 0.0) if lo < 0 else 0.0), float(phi)
        return self._mse_range(x, lo, hi, bits)

    @staticmethod
    def _mse_range(x, lo, hi, bits):
        """The [lo, hi] * alpha (alpha in (0.3, 1]) with the least quantization MSE on x."""
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        levels = (1 << bits) - 1
        best, best_err = (lo, hi), np.inf
        for alpha in np.linspace(0.3, 1.0, 50):
            a, b = lo * alpha, hi * alpha
            if b - a <= 0:
                continue
            s = (b - a) / levels
            q = np.clip(np.floor((x - a) / s + 0.5), 0, levels) * s + a
            err = float(((q - x) ** 2).mean())
            if err < best_err:
                best, best_err = (a, b), err
        return best
