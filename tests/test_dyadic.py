"""intq.dyadic against exact references: requantize against Python-integer arithmetic (exact
equality, never allclose), dyadic_multiplier against exact Fractions."""
import doctest
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import intq.dyadic
from intq.dyadic import dyadic_multiplier, dyadic_multipliers, requantize, requantize_exact
from intq.errors import IntqError

INT32_MIN, INT32_MAX = -2**31, 2**31 - 1
I64_MIN, I64_MAX = -2**63, 2**63 - 1  # clamp bounds that never bite


def exact_vectorised(x, b, c):
    """floor(x*b / 2**c + 1/2) elementwise in Python integers (object arrays): a floor
    division, no shifts, so it shares no code with requantize."""
    pow2 = np.array([1 << k for k in range(64)], dtype=object)
    den = pow2[np.asarray(c)]
    num = 2 * np.asarray(x).astype(object) * np.asarray(b).astype(object) + den
    return num // (2 * den)


def fraction_round(v: Fraction) -> int:
    return math.floor(v + Fraction(1, 2))


def test_docstring_examples():
    result = doctest.testmod(intq.dyadic, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0


# -- requantize ---------------------------------------------------------------------------

def test_one_million_random_cases_match_exact_integers():
    rng = np.random.default_rng(20240607)
    n = 1_000_000

    def mix(parts):
        out = np.concatenate(parts).astype(np.int64)
        assert out.size == n
        return rng.permutation(out)

    def sign(k):
        return rng.choice(np.array([-1, 1]), k)

    x = mix([rng.integers(INT32_MIN, INT32_MAX, 600_000, endpoint=True),
             rng.integers(-1000, 1000, 150_000, endpoint=True),
             np.where(sign(150_000) > 0, INT32_MAX - rng.integers(0, 1000, 150_000),
                      INT32_MIN + rng.integers(0, 1000, 150_000)),
             # past int32, up to the documented precondition |x| < 2**32
             rng.integers(-2**32 + 1, 2**32, 90_000),
             sign(10_000) * (2**32 - 1 - rng.integers(0, 100, 10_000))])
    b = mix([rng.integers(0, 2**31, 800_000),
             2**31 - 1 - rng.integers(0, 100, 100_000),  # worst case for int64 overflow
             rng.integers(0, 16, 100_000)])
    c = rng.integers(0, 62, n, endpoint=True)

    y = requantize(x, b, c, I64_MIN, I64_MAX)
    assert y.dtype == np.int64
    ref = exact_vectorised(x, b, c).astype(np.int64)  # fits: |ref| <= |x*b| < 2**63
    bad = np.flatnonzero(y != ref)
    assert bad.size == 0, (f"{bad.size} mismatches, first: x={x[bad[0]]} b={b[bad[0]]} "
                           f"c={c[bad[0]]}: {y[bad[0]]} != {ref[bad[0]]}")
    # The reference itself, against the Fraction definition on a subsample.
    for i in rng.choice(n, 2000, replace=False):
        assert ref[i] == fraction_round(Fraction(int(x[i]) * int(b[i]), 2 ** int(c[i])))
        assert ref[i] == requantize_exact(int(x[i]), int(b[i]), int(c[i]))


def test_exact_ties_round_toward_plus_infinity():
    rng = np.random.default_rng(1)
    for _ in range(3000):
        b = int(rng.integers(1, 2**31))
        t = (b & -b).bit_length() - 1  # trailing zero bits: b = b_odd * 2**t
        b_odd = b >> t
        c = int(rng.integers(t + 1, min(t + 32, 62), endpoint=True))
        s = c - 1 - t
        # x = m * 2**s with m odd makes x*b / 2**c = m*b_odd / 2 = k + 1/2 exactly.
        m = 2 * rng.integers(-2**(31 - s), 2**(31 - s), 16) + 1
        x = m << s
        expected = (m.astype(object) * b_odd + 1) // 2  # k + 1, exact
        assert np.all(np.abs(x) < 2**32)
        assert requantize(x, b, c, I64_MIN, I64_MAX).tolist() == expected.tolist()
        for xi, ki1 in zip(x.tolist(), expected.tolist()):
            assert Fraction(xi * b, 2**c) == ki1 - Fraction(1, 2)
        # Either side of the tie: one unit of x moves the value by b / 2**c.
        near = np.concatenate([x - 1, x + 1])
        near = near[np.abs(near) < 2**32]
        assert (requantize(near, b, c, I64_MIN, I64_MAX).tolist()
                == [requantize_exact(v, b, c) for v in near.tolist()])
        if b <= 2**c:  # a step of at most 1: below the tie gives k, above gives k + 1
            assert requantize(x - 1, b, c, I64_MIN, I64_MAX).tolist() == (expected - 1).tolist()
            assert requantize(x + 1, b, c, I64_MIN, I64_MAX).tolist() == expected.tolist()


def test_ties_and_their_neighbours_with_b_one():
    for c in range(1, 32):
        lim = 2**(31 - c)  # keeps |x| < 2**32
        k = np.arange(-lim, lim - 1, max(1, lim // 500))
        tie = (2 * k + 1) << (c - 1)  # x / 2**c = k + 1/2
        assert requantize(tie, 1, c, I64_MIN, I64_MAX).tolist() == (k + 1).tolist()
        assert requantize(tie - 1, 1, c, I64_MIN, I64_MAX).tolist() == k.tolist()
        assert requantize(tie + 1, 1, c, I64_MIN, I64_MAX).tolist() == (k + 1).tolist()


def test_worked_examples():
    y = requantize(np.array([3, -3, -1, 1, 0, -2, 2]), 1, 1, -128, 127)
    assert y.tolist() == [2, -1, 0, 1, 0, -1, 1]
    # numpy's half-to-even and HAWQ's float64 torch.round differ exactly here.
    assert np.round(np.array([1.5, -1.5, -0.5, 0.5, 2.5])).tolist() == [2, -2, -0, 0, 2]
    assert requantize(np.array([5]), 1, 1, -128, 127).tolist() == [3]  # 2.5 -> 3


GEMMLOWP_VALUES = sorted({v for v in [INT32_MIN, INT32_MIN + 1, INT32_MAX, INT32_MAX - 1, 0, 1, -1]
                          + [s * (2**i + d) for i in range(32) for d in (-2, -1, 0, 1, 2)
                             for s in (1, -1)]
                          if INT32_MIN <= v <= INT32_MAX})


@pytest.mark.parametrize("b", [2**31 - 1, 2**31 - 2, 2**30, 1, 0, 1518500250])
def test_gemmlowp_accumulator_values(b):
    x = np.array(GEMMLOWP_VALUES, dtype=np.int32)
    for c in range(63):
        got = requantize(x, b, c, I64_MIN, I64_MAX).tolist()
        assert got == [requantize_exact(v, b, c) for v in GEMMLOWP_VALUES], c
    # The extremes of the precondition, |x| = 2**32 - 1, with the largest b.
    edge = np.array([2**32 - 1, -(2**32 - 1), 2**32 - 2, -(2**32 - 2)], dtype=np.int64)
    for c in range(63):
        assert (requantize(edge, b, c, I64_MIN, I64_MAX).tolist()
                == [requantize_exact(v, b, c) for v in edge.tolist()])


def test_clamp_applies_after_the_zero_point():
    # -260/2 = -130; + 10 = -120 is in range. Clamping first would give -128 + 10 = -118.
    assert requantize(np.array([-260]), 1, 1, -128, 127, zero_point=10).tolist() == [-120]
    # 200/2 = 100; + 30 = 130 -> 127 (not 100 + 30 after a clamp to [0, 127] either way).
    assert requantize(np.array([200]), 1, 1, 0, 127, zero_point=30).tolist() == [127]
    assert requantize(np.array([200]), 1, 1, 0, 127, zero_point=-120).tolist() == [0]
    # Unsigned 4-bit and 8-bit output ranges against the exact reference.
    rng = np.random.default_rng(2)
    x = rng.integers(-2**20, 2**20, 20_000)
    for lo, hi, zp in [(0, 15, 0), (-8, 7, 0), (0, 255, 128), (-128, 127, -5), (0, 0, 3)]:
        y = requantize(x, 12345, 20, lo, hi, zero_point=zp)
        ref = np.clip(exact_vectorised(x, 12345, 20).astype(np.int64) + zp, lo, hi)
        assert np.array_equal(y, ref)
        assert y.min() >= lo and y.max() <= hi


def test_per_channel_broadcasting():
    rng = np.random.default_rng(3)
    x = rng.integers(INT32_MIN, INT32_MAX, (2, 4, 5, 5), endpoint=True).astype(np.int32)
    b = rng.integers(0, 2**31, 4).reshape(4, 1, 1)
    c = rng.integers(20, 62, 4).reshape(4, 1, 1)
    zp = rng.integers(-10, 10, 4).reshape(4, 1, 1)
    y = requantize(x, b, c, -2**40, 2**40, zero_point=zp)
    assert y.shape == x.shape and y.dtype == np.int64
    for k in range(4):
        yk = requantize(x[:, k], int(b[k, 0, 0]), int(c[k, 0, 0]), -2**40, 2**40,
                        zero_point=int(zp[k, 0, 0]))
        assert np.array_equal(y[:, k], yk)
        ref = exact_vectorised(x[:, k], int(b[k, 0, 0]), int(c[k, 0, 0])).astype(np.int64)
        assert np.array_equal(yk, np.clip(ref + zp[k, 0, 0], -2**40, 2**40))
    # Per-channel clamp bounds broadcast too.
    lo = np.array([-1, -2, -3, -4]).reshape(4, 1, 1)
    y2 = requantize(x, b, c, lo, 5, zero_point=zp)
    assert np.array_equal(y2, np.clip(y, lo, 5))


def test_accepts_any_integer_dtype_and_returns_int64():
    for dt in (np.int8, np.uint8, np.int16, np.int32, np.uint32, np.int64, np.uint64):
        x = np.array([0, 1, 5, 100], dtype=dt)
        y = requantize(x, np.int32(3), np.uint8(2), -128, 127)
        assert y.dtype == np.int64 and y.tolist() == [0, 1, 4, 75]
    assert requantize(np.zeros((0, 3), np.int32), 1, 1, 0, 1).shape == (0, 3)
    assert requantize(7, 1, 1, -128, 127).tolist() == 4  # 0-d in, 0-d out


@pytest.mark.parametrize("args", [
    (np.array([1.0]), 1, 1),                       # float accumulator
    (np.array([2**32]), 1, 1),                     # |x| >= 2**32
    (np.array([-2**32]), 1, 1),
    (np.array([2**64 - 1], dtype=np.uint64), 1, 1),
    (np.array([1]), 2**31, 1),                     # b >= 2**31
    (np.array([1]), -1, 1),                        # b < 0
    (np.array([1]), 1.5, 1),
    (np.array([1]), 1, 63),                        # c > 62
    (np.array([1]), 1, -1),
    (np.array([1]), np.array([1, 2**31]), 1),
])
def test_rejects_inputs_outside_the_precondition(args):
    with pytest.raises(ValueError):
        requantize(*args, I64_MIN, I64_MAX)


def test_rejects_zero_point_outside_int32():
    with pytest.raises(ValueError):
        requantize(np.array([1]), 1, 1, I64_MIN, I64_MAX, zero_point=2**31)


# -- dyadic_multiplier ---------------------------------------------------------------------

def check_multiplier(s, mb=31, max_shift=62):
    b, c = dyadic_multiplier(s, mb, max_shift)
    assert type(b) is int and type(c) is int
    assert 0 <= b < 2**mb and 0 <= c <= max_shift
    if b == 0:
        assert c == 0 and s < 2.0 ** -(max_shift + 1)  # flushed: rounds to 0 at max_shift
        return b, c
    err = abs(Fraction(b, 2**c) - Fraction(s))
    assert err <= Fraction(1, 2**(c + 1))  # b is the nearest integer to s * 2**c
    if s >= 2.0 ** (mb - max_shift - 1):  # c not capped: full precision
        assert b >= 2**(mb - 1)
        assert err / Fraction(s) <= Fraction(1, 2**mb)  # implies <= 2**-(mb - 1)
    return b, c


def log_uniform(lo_exp, hi_exp):
    return st.builds(math.ldexp, st.floats(0.5, 1.0, exclude_max=True),
                     st.integers(lo_exp, hi_exp))


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.floats(1e-12, 1e6), log_uniform(-40, 20)).filter(lambda s: 1e-12 <= s <= 1e6))
def test_multiplier_relative_error_over_many_decades(s):
    check_multiplier(s)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.floats(0, 1e12), log_uniform(-80, 40)),
       st.integers(1, 31), st.integers(0, 62))
def test_multiplier_any_profile(s, mb, max_shift):
    if s >= 2**mb - 0.5:  # rounds to b >= 2**mb at c = 0: not representable
        with pytest.raises(IntqError, match="too large for a dyadic multiplier"):
            dyadic_multiplier(s, mb, max_shift)
    else:
        check_multiplier(s, mb, max_shift)


def test_mantissa_rounding_up_moves_to_the_next_power_of_two():
    s = (2**31 - 0.25) / 2**31 * 2**-5  # mantissa rounds to 2**31 at 31 bits
    assert dyadic_multiplier(s) == (2**30, 35)
    assert dyadic_multiplier(math.nextafter(1.0, 0)) == (2**30, 30)
    assert dyadic_multiplier((2**31 - 0.5) / 2**31) == (2**30, 30)    # a tie goes up
    assert dyadic_multiplier((2**31 - 0.75) / 2**31) == (2**31 - 1, 31)  # below the tie


def test_scales_at_and_above_one():
    assert dyadic_multiplier(1.0) == (2**30, 30)
    assert dyadic_multiplier(3.0) == (3 * 2**29, 29)
    assert dyadic_multiplier(1e6) == (2048000000, 11)
    assert dyadic_multiplier(0.5) == (2**30, 31)
    assert dyadic_multiplier(2**31 - 1.0) == (2**31 - 1, 0)
    assert dyadic_multiplier(2**31 - 0.75) == (2**31 - 1, 0)
    for s in (2**31 - 0.5, 2.0**31, 1e10, 1e300):
        with pytest.raises(IntqError, match="too large for a dyadic multiplier"):
            dyadic_multiplier(s)


def test_tiny_scales_reduce_precision_then_flush_to_zero():
    assert dyadic_multiplier(1e-25) == (0, 0)
    assert dyadic_multiplier(5e-324) == (0, 0)
    b, c = dyadic_multiplier(1e-12)  # needs c = 70 for full precision
    assert c == 62 and b == fraction_round(Fraction(1e-12) * 2**62) == 4611686
    assert dyadic_multiplier(2.0**-63) == (1, 62)  # exactly half of 2**-62: ties go up
    assert dyadic_multiplier(2.0**-64) == (0, 0)
    assert dyadic_multiplier(2.0**-32) == (2**30, 62)  # the smallest at full precision
    assert dyadic_multiplier(1e-3, max_shift=16) == (66, 16)
    # A single rounding from the exact scale, not the 31-bit mantissa rounded again: this
    # scale is just below b = 2.5 at c = 62, and its 31-bit mantissa rounds up to the tie.
    s = (2.5 - 2**-30) * 2.0**-62
    assert dyadic_multiplier(s) == (2, 62)


def test_zero_and_invalid_scales():
    assert dyadic_multiplier(0.0) == (0, 0)
    assert dyadic_multiplier(-0.0) == (0, 0)
    for s in (-1.0, -1e-30, math.nan, math.inf, -math.inf):
        with pytest.raises(IntqError, match="rescale factor"):
            dyadic_multiplier(s)
    with pytest.raises(ValueError):
        dyadic_multiplier(0.5, multiplier_bits=0)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.floats(2.0**-70, 1.5, exclude_max=True), log_uniform(-70, 0))
       .filter(lambda s: s < 1.5))
def test_one_bit_profile_is_the_nearest_power_of_two(s):
    b, c = dyadic_multiplier(s, multiplier_bits=1)
    if b == 0:
        assert s < 2.0**-63  # nearer to 0 than to 2**-62 (the smallest power with c <= 62)
        return
    assert b == 1
    p = Fraction(1, 2**c)
    # No other power of two is nearer; a tie (s = 1.5 * 2**k) goes to the larger one.
    for k in range(max(0, c - 3), min(62, c + 3) + 1):  # c <= max_shift = 62
        q = Fraction(1, 2**k)
        assert abs(p - Fraction(s)) <= abs(q - Fraction(s))
        if abs(p - Fraction(s)) == abs(q - Fraction(s)) and q != p:
            assert p > q


def test_one_bit_profile_examples():
    assert dyadic_multiplier(0.75, 1) == (1, 0)      # tie between 1/2 and 1: up
    assert dyadic_multiplier(0.7499, 1) == (1, 1)
    assert dyadic_multiplier(0.72, 1) == (1, 1)      # nearer 1/2, though log2(0.72) rounds to 0
    assert dyadic_multiplier(1.0, 1) == (1, 0)
    assert dyadic_multiplier(0.3, 1) == (1, 2)
    with pytest.raises(IntqError):
        dyadic_multiplier(1.5, 1)


def test_vectorised_multipliers_match_the_scalar_ones():
    rng = np.random.default_rng(4)
    scales = np.exp(rng.uniform(np.log(1e-12), np.log(1e6), (3, 7)))
    b, c = dyadic_multipliers(scales)
    assert b.shape == c.shape == (3, 7) and b.dtype == c.dtype == np.int64
    for i in np.ndindex(scales.shape):
        assert (int(b[i]), int(c[i])) == dyadic_multiplier(float(scales[i]))
    b1, c1 = dyadic_multipliers(scales[scales < 1.5], multiplier_bits=1)
    assert set(b1.tolist()) == {1}
    with pytest.raises(IntqError):
        dyadic_multipliers(np.array([0.5, -0.5]))


# -- end to end ------------------------------------------------------------------------------
# For s in [1e-6, 1) the multiplier is at full precision: |b/2**c - s| <= s * 2**-31, so for
# |x| <= 2**31 the exact x*b/2**c lies within |x| * s * 2**-31 <= s < 1 of x*s. Two reals less
# than 1 apart round (by any tie rule) to integers at most 1 apart.

@settings(max_examples=1000, deadline=None)
@given(st.integers(INT32_MIN, INT32_MAX), st.floats(1e-6, 1.0, exclude_max=True))
def test_requantize_with_a_dyadic_multiplier_is_within_one_of_round(x, s):
    b, c = dyadic_multiplier(s)
    y = int(requantize(np.array([x], dtype=np.int32), b, c, I64_MIN, I64_MAX)[0])
    assert abs(y - round(x * Fraction(s))) <= 1


def test_requantize_with_dyadic_multipliers_vectorised():
    rng = np.random.default_rng(5)
    n = 50_000
    s = np.exp(rng.uniform(np.log(1e-6), 0, n))
    x = rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)
    b, c = dyadic_multipliers(s)
    y = requantize(x, b, c, I64_MIN, I64_MAX)
    ref = [round(int(xi) * Fraction(si)) for xi, si in zip(x.tolist(), s.tolist())]
    assert np.max(np.abs(y - np.array(ref, dtype=np.int64))) <= 1
