"""Resource limits, in one place: how much memory a run or a load may claim.

The limit is `INTQ_MEMORY_LIMIT` (bytes, optionally with a K/M/G/T suffix, powers of 1024)
or, unset, half of the machine's physical memory. Callers compute what they need from
validated, declared sizes *before* allocating, and refuse with one line that gives both
numbers, so a hostile file can never make intq allocate its way into the OOM killer.
"""
from __future__ import annotations

import os

from .errors import IntqError

ENV = "INTQ_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; exact byte counts stay in the messages beside it."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_bytes(text: str) -> int:
    """'512M' -> 536870912; a plain number is bytes. Raises IntqError on anything else."""
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = s[-1:] if s[-1:] in _UNITS and s[-1:] else ""
    number = s[: len(s) - len(unit)].strip()
    try:
        value = float(number)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise IntqError(f"{ENV}={text!r}: expected a positive size such as 4000000000 or 4G")
    return int(value * _UNITS[unit])


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        return 8 << 30


def memory_limit(limit: int | None = None) -> int:
    """The limit in bytes: `limit` if given, else $INTQ_MEMORY_LIMIT, else half the RAM."""
    if limit is not None:
        return int(limit)
    env = os.environ.get(ENV)
    if env:
        return parse_bytes(env)
    return physical_memory() // 2


def check_bytes(need: int, what: str, limit: int | None = None) -> None:
    """Refuse, in one line, a need of `need` bytes above the memory limit."""
    cap = memory_limit(limit)
    if need > cap:
        raise IntqError(f"{what} needs {format_bytes(need)} ({need} bytes), over the memory "
                        f"limit of {format_bytes(cap)} ({cap} bytes; set {ENV} to change it)")
