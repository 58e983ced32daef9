"""Which kernel path runs, chosen at import: AMX, AVX-512 VNNI, AVX2 or portable.

* `amx`: the VNNI path, with the dense convolutions that suit it on AMX tiles
  (`conv_amx`); needs AMX-INT8 and the kernel's permission to use tile data, which is
  asked for here (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM)`).
* `vnni`: AVX-512 VNNI (`vpdpbusd`) for every dense convolution.
* `avx2`: 256-bit `vpmaddubsw`/`vpmaddwd` byte dot products for every dense convolution
  (`conv_avx2`), on CPUs with AVX2 but no AVX-512 VNNI (most client CPUs, older servers).
* `portable`: plain loops, any CPU.

`INTQ_KERNELS=portable|avx2|vnni|amx` forces a path (CI uses it to test all of them on one
machine; asking for one the CPU lacks is an error); unset or `auto` picks the best the
host has. All paths compute the same integers: the choice changes speed, never bits.
"""
from __future__ import annotations

import os
import platform

from llvmlite import binding as llvm

from intq.errors import IntqError


def host_features() -> set[str]:
    """LLVM's names of the host CPU's features that are present ("avx512vnni", ...)."""
    try:
        feats = llvm.get_host_cpu_features()
    except RuntimeError:  # not reported on this platform
        return set()
    return {k for k, on in feats.items() if on}


def has_avx2() -> bool:
    return "avx2" in host_features()


def has_vnni() -> bool:
    return {"avx512f", "avx512bw", "avx512vnni"} <= host_features()


_AMX_GRANTED: bool | None = None


def has_amx() -> bool:
    """AMX-INT8 on the CPU (with VNNI, which the rest of the path uses), and the OS lets
    this process use tile data: Linux asks each process to request it once."""
    global _AMX_GRANTED
    if _AMX_GRANTED is None:
        _AMX_GRANTED = has_vnni() and {"amx-tile", "amx-int8"} <= host_features() and _request_amx()
    return _AMX_GRANTED


def _request_amx() -> bool:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # syscall(SYS_arch_prctl = 158, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18)
        return libc.syscall(158, 0x1023, 18) == 0
    except (OSError, AttributeError):
        return False


def choose_path(request: str | None = None) -> str:
    request = (request or os.environ.get("INTQ_KERNELS") or "auto").strip().lower()
    if request not in ("auto", "amx", "vnni", "avx2", "portable"):
        raise IntqError(f"INTQ_KERNELS must be auto, amx, vnni, avx2 or portable, got {request!r}")
    if request == "portable":
        return "portable"
    if request == "avx2":
        if not has_avx2():
            raise IntqError("INTQ_KERNELS=avx2, but this CPU has no AVX2")
        return "avx2"
    if request in ("auto", "amx") and has_amx():
        return "amx"
    if request == "amx":
        raise IntqError("INTQ_KERNELS=amx, but this CPU (or its OS) offers no AMX-INT8")
    if has_vnni():
        return "vnni"
    if request == "vnni":
        raise IntqError("INTQ_KERNELS=vnni, but this CPU has no AVX-512 VNNI")
    return "avx2" if has_avx2() else "portable"


def l2_bytes() -> int:
    """The L2 cache of one core in bytes (Linux sysfs), 1 MiB where it is not reported."""
    try:
        for index in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")):
            d = f"/sys/devices/system/cpu/cpu0/cache/{index}"
            if not index.startswith("index"):
                continue
            with open(f"{d}/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(f"{d}/size") as f:
                size = f.read().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
            return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return 1 << 20


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
