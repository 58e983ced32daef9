"""Learned weight rounding (GPTQ, AdaRound, BRECQ, QDrop) for `intq compile --rounding`:
a consumer of the float graph and the calibration data that hands the lowering the integer
weights to compile (`Lowering(..., weights=...)`). See `learn`."""
from .learn import (LEARNED, METHODS, Settings, check_device, learn_rounding, resolve_method,
                    weight_provider)

__all__ = ["LEARNED", "METHODS", "Settings", "check_device", "learn_rounding", "resolve_method",
           "weight_provider"]
