"""intq: an integer-only inference compiler for quantized convolutional networks.

Data flows one way: ONNX file -> `intq.frontend` (float IR) -> `intq.passes` (BN folding,
fusion, canonicalisation) -> integer lowering -> executors (numpy reference, Numba kernels).

Python API: `intq.compile(onnx, calib, bits=...)` and `intq.load(path)` return an
`intq.model.Model` with `.run(x, backend=...)`, `.evaluate`, `.report()` and `.save(path)`.
"""
__version__ = "0.1.0"


def compile(model, calib, bits=8, **options):  # noqa: A001  (the API's name)
    """See `intq.model.compile`."""
    from .model import compile as _compile
    return _compile(model, calib, bits, **options)


def load(path):
    """See `intq.model.load`."""
    from .model import load as _load
    return _load(path)
