"""Which kernel path runs: the AVX-512 VNNI path or the portable one, chosen at import.

`INTQ_KERNELS=portable` forces the portable path (CI uses it to test both on one machine);
`INTQ_KERNELS=vnni` insists on VNNI and fails on a CPU without it; unset or `auto` picks
VNNI when the host CPU has it. Both paths compute the same integers: the choice changes
speed, never bits.
"""
from __future__ import annotations

import os
import platform

from llvmlite import binding as llvm


def host_features() -> set[str]:
    """LLVM's names of the host CPU's features that are present ("avx512vnni", ...)."""
    try:
        feats = llvm.get_host_cpu_features()
    except RuntimeError:  # not reported on this platform
        return set()
    return {k for k, on in feats.items() if on}


def has_vnni() -> bool:
    return {"avx512f", "avx512bw", "avx512vnni"} <= host_features()


def choose_path(request: str | None = None) -> str:
    request = (request or os.environ.get("INTQ_KERNELS") or "auto").strip().lower()
    if request not in ("auto", "vnni", "portable"):
        raise ValueError(f"INTQ_KERNELS must be auto, vnni or portable, got {request!r}")
    if request == "portable":
        return "portable"
    if has_vnni():
        return "vnni"
    if request == "vnni":
        raise RuntimeError("INTQ_KERNELS=vnni, but this CPU has no AVX-512 VNNI")
    return "portable"


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo gives it (LLVM's name where that is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or llvm.get_host_cpu_name()


PATH = choose_path()
