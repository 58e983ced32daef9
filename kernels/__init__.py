"""Numba INT4/INT8 kernels (installed as `intq.kernels`): the fast executor of the integer IR.

`plan.Plan` turns an integer graph into kernel calls; `cpu` picks the AMX, VNNI, AVX2 or
portable path; `conv`/`conv_vnni`/`conv_amx`/`conv_avx2` (Conv and Linear; depthwise in
`conv` and `conv_vnni`), `pool` and `elementwise` hold the kernels, `epilogue` the
requantization every layer ends with, and `simd`/`simd_avx2` the instructions LLVM does
not emit from plain loops (VNNI, AMX tiles, the zmm epilogue; AVX2's byte dot products).
Each kernel equals its op's numpy reference `run` in `intq.ops.integer`, and the tests
check that element for element.

Kernels compile with `cache=True`. Numba invalidates a cached kernel only when its own
source file changes, not when a function it inlined from another file does, so a stale
cache could run old arithmetic after an edit. This package therefore keys the cache on a
digest of all its sources and clears cached kernels when the digest changes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path


def _source_digest() -> str:
    here = Path(__file__).parent
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()


# Which kernels these are: the Numba cache below, and anything timed with them (the
# allocator's cached latency tables), is valid for this digest only.
SOURCE_DIGEST = _source_digest()


def _clear_stale_cache(digest: str) -> None:
    here = Path(__file__).parent
    cache = here / "__pycache__"
    stamp = cache / "intq-kernels.digest"
    try:
        if stamp.exists() and stamp.read_text() == digest:
            return
        cache.mkdir(exist_ok=True)
        for f in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            f.unlink(missing_ok=True)
        stamp.write_text(digest)
    except OSError:  # a read-only install: Numba then caches elsewhere or not at all
        pass


_clear_stale_cache(SOURCE_DIGEST)
