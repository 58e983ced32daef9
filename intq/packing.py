"""INT4 packing, in one place: two 4-bit values per byte.

The array is flattened in C order; element 2i goes in the LOW nibble of byte i and element
2i+1 in the HIGH nibble; an odd count leaves the last high nibble 0. Signed values (-8..7)
are stored as two's-complement nibbles, unsigned ones (0..15) as they are. So [1, -2, 7]
packs to bytes [0xE1, 0x07]. This is the order of ONNX's INT4/UINT4 tensors and TensorRT's
INT4 weights; HAWQ-V3's TVM export packs the other way round (most significant nibble
first), so its packed weights must be unpacked with their own order, not with this module.
"""
from __future__ import annotations

import numpy as np


def _nibble_range(signed: bool) -> tuple[int, int]:
    return (-8, 7) if signed else (0, 15)


def pack_int4(q, signed: bool = True) -> np.ndarray:
    """Pack the integer array `q` (any shape, C order) into a 1-D uint8 array of
    ceil(q.size / 2) bytes. Raises ValueError if a value is outside -8..7 (signed) or
    0..15 (unsigned)."""
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise ValueError(f"pack_int4: expected an integer array, got dtype {q.dtype}")
    lo, hi = _nibble_range(signed)
    flat = q.ravel(order="C")
    if flat.size and (int(flat.min()) < lo or int(flat.max()) > hi):
        bad = flat[(flat < lo) | (flat > hi)][0]
        kind = "signed" if signed else "unsigned"
        raise ValueError(f"pack_int4: value {bad} does not fit in a {kind} 4-bit integer "
                         f"({lo}..{hi})")
    flat = flat.astype(np.int64)  # in range now, so the cast is exact
    nibbles = (flat & 0xF).astype(np.uint8)  # & 0xF on int64 is the two's-complement nibble
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack_int4(packed, count: int, signed: bool = True) -> np.ndarray:
    """The first `count` values packed by `pack_int4`, as a 1-D int8 array (reshape it to
    the original shape). `packed` must hold exactly ceil(count / 2) bytes, and for an odd
    count the unused high nibble must be 0; anything else raises ValueError (a wrong count
    or a foreign nibble order, rather than silently wrong weights)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise ValueError(f"unpack_int4: expected uint8 bytes, got dtype {packed.dtype}")
    packed = packed.ravel()
    if count < 0 or packed.size != (count + 1) // 2:
        raise ValueError(f"unpack_int4: {packed.size} bytes cannot hold exactly {count} "
                         f"4-bit values (need {(max(count, 0) + 1) // 2})")
    if count % 2 and packed[-1] >> 4:
        raise ValueError("unpack_int4: the padding nibble after the last value is not 0")
    nibbles = np.empty(2 * packed.size, dtype=np.int8)
    nibbles[0::2] = packed & 0xF
    nibbles[1::2] = packed >> 4
    nibbles = nibbles[:count]
    if signed:
        nibbles = np.where(nibbles >= 8, nibbles - 16, nibbles).astype(np.int8)
    return nibbles
