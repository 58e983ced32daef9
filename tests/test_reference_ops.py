"""The integer reference ops against naive loops: the im2col geometry (pads with the zero
point, strides, dilations, groups, ceil mode) that every later kernel is checked against
must itself be right. Exact integer equality, hypothesis-generated cases."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from intq.ops.integer import IntAvgPool, IntConv, IntGlobalAvgPool
from intq.ops.pool import AveragePool, MaxPool
from intq.ops.window import output_size


def naive_conv(x, w, b, strides, pads, dilations, groups, zp):
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    pt, pl, pb, pr = pads
    ho = output_size(h, kh, strides[0], dilations[0], pt, pb)
    wo = output_size(wd, kw, strides[1], dilations[1], pl, pr)
    out = np.zeros((n, m, ho, wo), dtype=np.int64)
    per_group = m // groups
    for i in range(n):
        for o in range(m):
            g = o // per_group
            for y in range(ho):
                for xx in range(wo):
                    acc = int(b[o])
                    for ci in range(cg):
                        for ky in range(kh):
                            for kx in range(kw):
                                r = y * strides[0] + ky * dilations[0] - pt
                                s = xx * strides[1] + kx * dilations[1] - pl
                                v = x[i, g * cg + ci, r, s] if 0 <= r < h and 0 <= s < wd else zp
                                acc += int(v) * int(w[o, ci, ky, kx])
                    out[i, o, y, xx] = acc
    return out


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cg = draw(st.integers(1, 3))
    per_group = draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers((kh - 1) * dilations[0] + 1, 7))
    w = draw(st.integers((kw - 1) * dilations[1] + 1, 7))
    bits = draw(st.sampled_from([4, 8]))
    zp = draw(st.integers(0, (1 << bits) - 1))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    qmax = (1 << (bits - 1)) - 1
    x = rng.integers(0, 1 << bits, (2, groups * cg, h, w))
    wt = rng.integers(-qmax, qmax + 1, (groups * per_group, cg, kh, kw))
    b = rng.integers(-2**20, 2**20, groups * per_group)
    return x, wt, b, strides, pads, dilations, groups, zp


@settings(max_examples=150, deadline=None)
@given(conv_cases())
def test_int_conv_equals_naive_loops(case):
    x, w, b, strides, pads, dilations, groups, zp = case
    attrs = {"strides": strides, "pads": pads, "dilations": dilations, "groups": groups,
             "x_zero_point": zp}
    (got,) = IntConv.run(attrs, x, w, b)
    assert got.dtype == np.int64
    assert np.array_equal(got, naive_conv(x, w, b, strides, pads, dilations, groups, zp))


@st.composite
def pool_cases(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = (draw(st.integers(0, k[0] - 1)), draw(st.integers(0, k[1] - 1)),
            draw(st.integers(0, k[0] - 1)), draw(st.integers(0, k[1] - 1)))
    h, w = draw(st.integers(k[0], 7)), draw(st.integers(k[1], 7))
    attrs = {"kernel_shape": k, "strides": s, "pads": pads, "ceil_mode": draw(st.integers(0, 1)),
             "count_include_pad": draw(st.integers(0, 1))}
    x = np.random.default_rng(draw(st.integers(0, 2**31))).integers(-300, 300, (1, 2, h, w))
    return x, attrs


def naive_pool(x, attrs, reducer, include_pad):
    """Windows clipped to the padded input; pad cells count only if include_pad."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = attrs["kernel_shape"], attrs["strides"], attrs["pads"]
    n, c, h, w = x.shape
    ho = output_size(h, kh, sh, 1, pt, pb, attrs["ceil_mode"])
    wo = output_size(w, kw, sw, 1, pl, pr, attrs["ceil_mode"])
    out = np.zeros((n, c, ho, wo), dtype=object)
    for i in range(n):
        for ch in range(c):
            for y in range(ho):
                for xx in range(wo):
                    vals, count = [], 0
                    for ky in range(kh):
                        for kx in range(kw):
                            r, s = y * sh + ky - pt, xx * sw + kx - pl
                            if 0 <= r < h and 0 <= s < w:
                                vals.append(int(x[i, ch, r, s]))
                                count += 1
                            elif -pt <= r < h + pb and -pl <= s < w + pr:
                                count += include_pad
                    out[i, ch, y, xx] = reducer(vals, count)
    return out


@settings(max_examples=150, deadline=None)
@given(pool_cases())
def test_maxpool_and_avgpool_divisor_equal_naive_loops(case):
    x, attrs = case
    (got,) = MaxPool.run(dict(attrs, dilations=(1, 1)), x)
    assert np.array_equal(got, naive_pool(x, attrs, lambda v, c: max(v), 0).astype(np.int64))
    count = naive_pool(x, attrs, lambda v, c: c, attrs["count_include_pad"])[0, 0]
    assert np.array_equal(AveragePool.divisor(attrs, x.shape[2:]), count.astype(np.int64))
    # With multiplier 1 and shift 0 the integer pool returns the raw window sum.
    zp = 5
    iattrs = dict(attrs, in_zero_point=zp, out_zero_point=0, lo=-2**40, hi=2**40)
    (sums,) = IntAvgPool.run(iattrs, x + zp, np.int64(1), np.int64(0))
    want = naive_pool(x, attrs, lambda v, c: sum(v), 0).astype(np.int64)
    assert np.array_equal(sums, want)


def test_global_avgpool_sum_and_keepdims():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    attrs = {"in_zero_point": 7, "out_zero_point": 0, "lo": -2**40, "hi": 2**40, "keepdims": 0}
    (got,) = IntGlobalAvgPool.run(attrs, x, np.int64(1), np.int64(0))
    assert np.array_equal(got, (x - 7).sum(axis=(2, 3)))
    (got,) = IntGlobalAvgPool.run(dict(attrs, keepdims=1), x, np.int64(1), np.int64(0))
    assert got.shape == (2, 3, 1, 1)
