"""intq.packing: exact round trips, the nibble order on a hand-worked example, range errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from intq.packing import pack_int4, unpack_int4


def int4_arrays(signed):
    lo, hi = (-8, 7) if signed else (0, 15)
    dtype = st.sampled_from([np.int8, np.int16, np.int32, np.int64] if signed
                            else [np.uint8, np.uint16, np.int32, np.int64])
    shape = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7)
    return dtype.flatmap(lambda dt: hnp.arrays(dt, shape, elements=st.integers(lo, hi)))


@settings(max_examples=500, deadline=None)
@given(st.booleans().flatmap(lambda s: st.tuples(st.just(s), int4_arrays(s))))
def test_round_trip_any_shape(case):
    signed, q = case
    packed = pack_int4(q, signed=signed)
    assert packed.dtype == np.uint8 and packed.shape == ((q.size + 1) // 2,)
    out = unpack_int4(packed, q.size, signed=signed)
    assert out.dtype == np.int8 and out.shape == (q.size,)
    assert np.array_equal(out.reshape(q.shape), q)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-8, 7), min_size=0, max_size=41))
def test_round_trip_odd_and_even_lengths(values):
    packed = pack_int4(np.array(values, dtype=np.int64))
    assert unpack_int4(packed, len(values)).tolist() == values
    if len(values) % 2:
        assert packed[-1] >> 4 == 0  # the padding nibble


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_small_lengths(n):
    q = np.arange(n, dtype=np.int8) - 1
    packed = pack_int4(q)
    assert packed.size == (n + 1) // 2
    assert unpack_int4(packed, n).tolist() == q.tolist()


def test_nibble_order_hand_worked():
    # 1 -> 0x1 (low nibble of byte 0), -2 -> 0xE (high nibble), 7 -> 0x7, then a 0 pad.
    assert pack_int4(np.array([1, -2, 7])).tolist() == [0xE1, 0x07]
    assert unpack_int4(np.array([0xE1, 0x07], dtype=np.uint8), 3).tolist() == [1, -2, 7]
    assert pack_int4(np.array([15, 0, 3, 12]), signed=False).tolist() == [0x0F, 0xC3]
    assert unpack_int4(np.array([0x0F, 0xC3], np.uint8), 4, signed=False).tolist() == [15, 0, 3, 12]
    assert pack_int4(np.array([-8, -1])).tolist() == [0xF8]
    # Multi-dimensional input is flattened in C order, not in memory order.
    q = np.array([[1, 2], [3, 4]], dtype=np.int8).T  # Fortran-contiguous: [[1, 3], [2, 4]]
    assert pack_int4(q).tolist() == [0x31, 0x42]


def test_matches_onnx_int4_tensors():
    helper = pytest.importorskip("onnx.helper")
    from onnx import TensorProto

    if not hasattr(TensorProto, "INT4"):
        pytest.skip("onnx without INT4")
    values = [1, -2, 7, -8, 0, 3, -1]
    t = helper.make_tensor("t", TensorProto.INT4, [len(values)], values)
    stored = bytes(t.raw_data) or bytes(t.int32_data)
    assert pack_int4(np.array(values)).tobytes() == stored


@pytest.mark.parametrize("values,signed", [([8], True), ([-9], True), ([0, 7, 100], True),
                                           ([16], False), ([-1], False),
                                           (np.array([2**64 - 1], dtype=np.uint64), True)])
def test_out_of_range_raises(values, signed):
    with pytest.raises(ValueError, match="does not fit"):
        pack_int4(np.array(values), signed=signed)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        pack_int4(np.array([1.0]))
    packed = pack_int4(np.array([1, 2, 3]))
    for count in (1, 2, 5, -1):  # 2 bytes hold exactly 3 or 4 values
        with pytest.raises(ValueError):
            unpack_int4(packed, count)
    assert unpack_int4(pack_int4(np.array([1, 2, 3, 4])), 4).tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="padding"):
        unpack_int4(np.array([0x21, 0x43], dtype=np.uint8), 3)
    with pytest.raises(ValueError):
        unpack_int4(np.array([0x21], dtype=np.int32), 2)
