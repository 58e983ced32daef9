"""The quantization scheme: what is quantized how, per tensor and per layer.

`QuantConfig` bundles the choices (profile, each layer's weight and input bits -- W8A8,
W4A8 or W4A4, see `parse_choice` --, calibration method, residual stream width, bias
correction); `QParams` describes one integer tensor (bits, signedness,
scale, zero point) and maps a calibrated float range to one; `quantize_weights` gives
per-channel symmetric weights and `bias_correction` the mean shift their rounding causes.
Profiles:

* ``hawq`` (HAWQ-V3): per-output-channel symmetric weights; activations unsigned with zero
  point 0 after ReLU/ReLU6, otherwise asymmetric; 31-bit dyadic multipliers.
* ``pot`` (power of two, as TVM on ARM and CMSIS-NN require, MQBench Table 2): per-tensor
  symmetric weights and activations whose scales are powers of two, so every rescale is a
  1-bit multiplier and a pure shift.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import IntqError

PROFILES = ("hawq", "pot")
# How weights are put on their grid: round-to-nearest, or learned from calibration data
# (`intq.rounding`). "learned" names the best method measured (see the README).
ROUNDINGS = ("nearest", "gptq", "adaround", "brecq", "qdrop")
LEARNED_ROUNDING = "gptq"


# The (weight bits, activation bits) pairs a Conv/Linear layer can take, smallest first:
# the kernels intq has run 8-bit containers for both, so any of the three runs anywhere.
CHOICES = ("w4a4", "w4a8", "w8a8")
_ALIASES = {4: "w4a4", 8: "w8a8", "4": "w4a4", "8": "w8a8"}
ALLOWED = "8, 4, w8a8, w4a8 or w4a4"


def parse_choice(value, where: str = "bits") -> tuple[int, int]:
    """(w_bits, a_bits) of a layer's bit-width choice: 8 (= W8A8), 4 (= W4A4, weights and
    input at 4 bits), or one of the names "w8a8", "w4a8", "w4a4" (any case). Anything else
    is an IntqError naming `where` and the allowed values."""
    v = value.strip().lower() if isinstance(value, str) else value
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        v = None  # True == 1 would otherwise pass as an int
    name = _ALIASES.get(v, v)
    if name not in CHOICES:
        raise IntqError(f"{where}: {value!r} is not a bit width; allowed: {ALLOWED}")
    return int(name[1]), int(name[3])


def choice_name(w_bits: int, a_bits: int) -> str:
    """The name of a (w_bits, a_bits) pair: choice_name(4, 8) == "w4a8"."""
    name = f"w{w_bits}a{a_bits}"
    if name not in CHOICES:
        raise IntqError(f"W{w_bits}A{a_bits} is not a bit-width choice; allowed: {ALLOWED}")
    return name


def normalise_choice(value, where: str = "bits") -> str:
    """A choice as its canonical name: 4 -> "w4a4", "W4A8" -> "w4a8"."""
    return choice_name(*parse_choice(value, where))


@dataclass
class QuantConfig:
    """Every choice the lowering makes. `bits` maps Conv/Linear node names to a bit-width
    choice (8, 4, "w8a8", "w4a8" or "w4a4", see `parse_choice`); `default_bits` is the
    choice of every other layer (the first and last stay W8A8 when `keep_first_last_8`)."""

    profile: str = "hawq"
    default_bits: int | str = 8
    bits: dict = field(default_factory=dict)
    residual_bits: int = 16
    output_bits: int = 16
    calib_method: str = "minmax"
    weight_clip: str = "auto"         # "max", "mse", or "auto": mse at 4 bits, max at 8
    percentile: float = 99.99
    keep_first_last_8: bool = True
    bias_correction: bool = True      # see `bias_correction` below; the README's evidence
    rounding: str = "nearest"         # one of ROUNDINGS, or "learned"

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise IntqError(f"unknown profile {self.profile!r}; choose from {', '.join(PROFILES)}")
        if self.residual_bits not in (8, 16, 32):
            raise IntqError("residual bits must be 8, 16 or 32")
        if self.rounding == "learned":
            self.rounding = LEARNED_ROUNDING
        if self.rounding not in ROUNDINGS:
            raise IntqError(f"unknown rounding {self.rounding!r}; choose from learned, "
                            f"{', '.join(ROUNDINGS)}")
        if self.calib_method not in ("minmax", "percentile", "mse"):
            raise IntqError(f"unknown calibration method {self.calib_method!r}")
        if self.weight_clip not in ("auto", "max", "mse"):
            raise IntqError(f"unknown weight clipping {self.weight_clip!r}; choose auto, max or mse")
        parse_choice(self.default_bits, "default bits")
        if not isinstance(self.bits, dict):
            raise IntqError(f"bits must map layer names to bit widths ({ALLOWED})")
        for name, b in self.bits.items():
            parse_choice(b, f"layer {name}")

    @property
    def multiplier_bits(self) -> int:
        return 1 if self.profile == "pot" else 31

    @property
    def per_channel(self) -> bool:
        return self.profile != "pot"

    def layer_wa_bits(self, name: str, first_or_last: bool) -> tuple[int, int]:
        """(w_bits, a_bits) of layer `name`: its weights' width and its input's."""
        if name in self.bits:
            return parse_choice(self.bits[name], f"layer {name}")
        if first_or_last and self.keep_first_last_8:
            return 8, 8
        return parse_choice(self.default_bits, "default bits")

    @staticmethod
    def parse_bits(spec: str) -> tuple[int | str, dict]:
        """`--bits` value: 8, 4, w8a8, w4a8, w4a4 (every layer but the first and last), or a
        JSON file mapping layer names to those (8 and 4 as numbers or strings)."""
        s = str(spec).strip()
        if s.lower() in CHOICES or s in ("4", "8"):
            return normalise_choice(s, "--bits"), {}
        try:
            with open(spec) as f:
                table = json.load(f)
        except FileNotFoundError:
            raise IntqError(f"--bits: {spec!r} is neither a bit width (allowed: {ALLOWED}) nor "
                            f"an existing JSON file") from None
        except IsADirectoryError:
            raise IntqError(f"--bits: {spec} is a directory, not a JSON file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IntqError(f"--bits: {spec} is not valid JSON: {e}") from None
        if not isinstance(table, dict):
            raise IntqError(f"--bits: {spec} must map layer names to bit widths ({ALLOWED})")
        for name, v in table.items():
            parse_choice(v, f"--bits {spec}: layer {name}")
        return 8, table

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class QParams:
    """An integer tensor's meaning: real = scale * (q - zero_point), q in [qmin, qmax]."""

    bits: int
    signed: bool
    scale: float
    zero_point: int = 0

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def dtype(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    def clamp_bounds(self, act_min=None, act_max=None) -> tuple[int, int]:
        """Integer clamp bounds, tightened by a fused activation's float bounds."""
        lo, hi = self.qmin, self.qmax
        if act_min is not None:
            lo = max(lo, min(hi, self.zero_point + math.ceil(act_min / self.scale - 1e-9)))
        if act_max is not None:
            hi = min(hi, max(lo, self.zero_point + math.floor(act_max / self.scale + 1e-9)))
        return lo, hi

    def to_dict(self) -> dict:
        return {"bits": self.bits, "signed": self.signed, "scale": self.scale,
                "zero_point": self.zero_point}


def _pow2_ceil(x: float) -> float:
    return 2.0 ** math.ceil(math.log2(x))


def activation_qparams(lo: float, hi: float, bits: int, profile: str, narrow: bool) -> QParams:
    """QParams for a tensor whose calibrated float range is [lo, hi].

    A non-negative range (after ReLU/ReLU6) is unsigned with zero point 0. Otherwise narrow
    tensors (the 4/8-bit inputs of Conv/Linear) are unsigned asymmetric and wide tensors
    (residual stream, pools, logits) signed asymmetric. 32-bit tensors are signed and
    symmetric (zero point 0), so every difference q - zero_point stays inside INT32. The
    range always includes 0, so zero padding is exact.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise IntqError("calibration produced a non-finite activation range")
    levels = (1 << bits) - 1
    symmetric = profile == "pot" or bits == 32
    if hi - lo <= 1e-12:
        return QParams(bits, not narrow, 1.0, 0)
    if lo >= 0 and bits < 32:
        scale = hi / levels
        return QParams(bits, False, _pow2_ceil(scale) if profile == "pot" else scale, 0)
    if symmetric:
        scale = max(-lo, hi) / ((1 << (bits - 1)) - 1)
        return QParams(bits, True, _pow2_ceil(scale) if profile == "pot" else scale, 0)
    signed = not narrow
    scale = (hi - lo) / levels
    qmin = -(1 << (bits - 1)) if signed else 0
    # Keep the zero point strictly inside the range: q - zero_point then fits bits + 1.
    zp = int(np.clip(qmin - round(lo / scale), qmin + 1, qmin + levels - 1))
    return QParams(bits, signed, scale, zp)


def quantize_weights(w: np.ndarray, bits: int, profile: str, clip: str = "max",
                     min_scales=None):
    """Symmetric signed weights: (q int8 array, per-channel scales float64 array (M,)).

    q lies in [-(2^(b-1) - 1), 2^(b-1) - 1] (restricted range, so -q is representable).
    `clip="mse"` searches, per channel, the clipping threshold that minimises the squared
    quantization error (80 candidates between 30% and 100% of max|w|); "auto" is mse at
    4 bits (of 15 levels one outlier wastes many) and max at 8.
    `min_scales` (M,) is a floor under each channel's scale (see `bias_scale_floor`); a
    channel raised to it quantizes its weights to fewer levels (a dead channel's to 0).
    """
    qmax = (1 << (bits - 1)) - 1
    if clip == "auto":
        clip = "mse" if bits <= 4 else "max"
    m = w.shape[0]
    flat = w.reshape(m, -1).astype(np.float64)
    if profile == "pot":
        amax = max(float(np.abs(flat).max()), 1e-12)
        scales = np.full(m, _pow2_ceil(amax / qmax))
    else:
        amax = np.maximum(np.abs(flat).max(axis=1), 1e-12)
        scales = amax / qmax
        if clip == "mse":
            best = np.full(m, np.inf)
            for frac in np.linspace(0.3, 1.0, 80):
                s = amax * frac / qmax
                q = np.clip(np.floor(flat / s[:, None] + 0.5), -qmax, qmax)
                err = ((q * s[:, None] - flat) ** 2).sum(axis=1)
                better = err < best
                best[better], scales[better] = err[better], s[better]
    if min_scales is not None:
        floor = np.broadcast_to(np.asarray(min_scales, dtype=np.float64), (m,))
        if profile == "pot":
            scales = np.full(m, max(scales[0], _pow2_ceil(max(float(floor.max()), 1e-300))))
        else:
            scales = np.maximum(scales, floor)
    q = np.clip(np.floor(flat / scales[:, None] + 0.5), -qmax, qmax).astype(np.int8)
    return q.reshape(w.shape), scales


def bias_correction(w: np.ndarray, wq: np.ndarray, scales: np.ndarray, groups: int,
                    input_means: np.ndarray) -> np.ndarray:
    """The (M,) float64 shift that weight quantization adds to a layer's mean output,
    Delta_W E[x] (Qualcomm white paper eq. 25-27; Nagel et al. 2019), to be subtracted from
    the float bias before it is quantized.

    w (M, C/groups, ...) are the float weights, wq * scales their quantized values, and
    `input_means` (C, taps) the mean input each weight multiplies on the calibration data,
    over every output position, zero padding included (`Calibration.input_means`). With
    the bias so corrected, the quantized layer's mean output over the calibration data,
    computed on the float inputs, equals the float layer's: exactly the empirical bias
    correction of eq. 27, without running the quantized layer. Rounding a depthwise
    layer's 9 weights per channel leaves such a shift; a per-tensor one of hundreds of
    weights, far less.
    """
    m, cg = w.shape[0], w.shape[1]
    err = wq.astype(np.float64) * scales.reshape((m,) + (1,) * (w.ndim - 1)) - w
    err = err.reshape(m, cg, -1)
    means = np.asarray(input_means, np.float64).reshape(groups, cg, -1)
    group_of = np.arange(m) // (m // groups)
    return np.einsum("mct,mct->m", err, means[group_of])


BIAS_BUDGET = 1 << 30  # |INT32 bias| may use half of INT32; sum(w * x) gets the other half


def bias_scale_floor(bias: np.ndarray, x_scale: float) -> np.ndarray:
    """Per channel, the smallest weight scale s_w with |round(bias / (x_scale * s_w))| <=
    2^30, half of INT32 (what onnxruntime's quantizer does for INT32 biases, with a stated
    bound). Real weights need it: after BatchNorm folding a dead channel (gamma ~ 0) has
    weights ~1e-9 and a bias of order 1, and a pruned channel has weights exactly 0, so
    max|w| / 127 would make the bias overflow INT32. Raised to this floor, such a channel's
    weights quantize to 0 or +-1 and it outputs its bias, rounded once by the output DN.
    For a live channel the floor is far below max|w| / 127 and changes nothing.
    """
    return np.abs(np.asarray(bias, dtype=np.float64)) / (float(x_scale) * BIAS_BUDGET)
