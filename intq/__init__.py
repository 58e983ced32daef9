"""intq: an integer-only inference compiler for quantized convolutional networks.

Data flows one way: ONNX file -> `intq.frontend` (float IR) -> `intq.passes` (BN folding,
fusion, canonicalisation) -> integer lowering -> executors (numpy reference, Numba kernels).
"""
__version__ = "0.1.0"
