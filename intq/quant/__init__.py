"""Quantization: the scheme (`scheme`), calibration of activation ranges (`calibrate`)
and the lowering of a folded float graph to an integer-only graph (`lower`)."""
