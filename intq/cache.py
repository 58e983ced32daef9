"""Where measurements that take minutes are kept between runs (sensitivities, latency
tables, learned roundings), and the digest that keys them."""
from __future__ import annotations

import hashlib
import os

import numpy as np


def cache_dir() -> str | None:
    """The cache folder, created if needed; None when it cannot be (nothing is cached then)."""
    d = os.environ.get("INTQ_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "intq")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:
        return None
    return d


def digest(*parts) -> str:
    """24 hex digits of SHA-256 over the parts: arrays by shape, dtype and bytes, anything
    else by repr."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.shape, p.dtype)).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:24]
