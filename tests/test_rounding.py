"""Learned weight rounding (`intq.rounding`): each method against round-to-nearest on data
it never saw, GPTQ's update against an enumerated optimum, the one-step promise of the
AdaRound family, and models compiled with learned rounding verified exact on both
backends."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import intq
from conftest import MODELS, export_torch
from intq.pipeline import float_graph
from intq.quant.calibrate import Calibration
from intq.quant.lower import Lowering, lower_to_integer
from intq.quant.scheme import QuantConfig
from intq.reference import run_integer
from intq.rounding import Settings, learn_rounding
from intq.rounding.blocks import blocks
from intq.rounding.gptq import gptq_round
from intq.twin import from_compiled
from intq.twin.verify import verify

FAST = Settings(steps=60, batch=16)


def _images(n, shape, seed):
    """Smooth, channel-correlated random images: under white noise (H = I) round-to-nearest
    is already optimal, and real inputs are anything but white."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    coarse = rng.normal(0, 1, (n, 1, 4, 4)) + 0.5 * rng.normal(0, 1, (n, c, 4, 4))
    x = torch.nn.functional.interpolate(torch.as_tensor(coarse), size=(h, w), mode="bilinear",
                                        align_corners=False)
    return (x.numpy() + 0.1 * rng.normal(0, 1, (n, c, h, w))).astype(np.float32)


def _output_error(fg, ig, x) -> float:
    """Mean squared difference between the integer model's dequantized output and the
    float model's on x."""
    from intq.float_executor import run_float

    out = run_integer(ig, x)[0].astype(np.float64)
    qp = ig.metadata["outputs"][ig.outputs[0]]
    real = qp["scale"] * (out - qp["zero_point"])
    ref = run_float(fg, x)[0]
    return float(((real - ref) ** 2).mean())


def _compiled_error(fg, calib_x, test_x, cfg, method, settings=FAST):
    calib = Calibration(fg, calib_x)
    weights = None
    if method != "nearest":
        weights, _ = learn_rounding(fg, calib_x, cfg, method, calibration=calib, settings=settings,
                                    use_cache=False)
    return _output_error(fg, lower_to_integer(fg, calib, cfg, weights), test_x), weights


class OneConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class ResidualBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.stem = torch.nn.Conv2d(3, 8, 1)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        return torch.relu(s + self.b(torch.relu(self.a(s))))


@pytest.fixture(scope="module")
def one_conv():
    return float_graph(export_torch(OneConv(), torch.zeros(1, 4, 10, 10), dynamic_batch=True))


@pytest.fixture(scope="module")
def residual():
    return float_graph(export_torch(ResidualBlock(), torch.zeros(1, 3, 10, 10), dynamic_batch=True))


# 4-bit weights, 8-bit activations: the error these tests compare is the weights' rounding.
W4 = QuantConfig(default_bits="w4a8", keep_first_last_8=False)


@pytest.mark.parametrize("method", ["gptq", "adaround"])
def test_learned_rounding_lowers_a_layers_output_error(one_conv, method):
    """One 4-bit convolution: the compiled output on 64 unseen images is closer to the float
    layer's with the learned integers than with round-to-nearest."""
    calib, test = _images(64, (4, 10, 10), 0), _images(64, (4, 10, 10), 1)
    nearest, _ = _compiled_error(one_conv, calib, test, W4, "nearest")
    learned, _ = _compiled_error(one_conv, calib, test, W4, method)
    assert learned < 0.9 * nearest, (learned, nearest)


@pytest.mark.parametrize("method", ["brecq", "qdrop"])
def test_learned_rounding_lowers_a_blocks_output_error(residual, method):
    """A residual block (stem, conv-relu-conv, add, relu) at 4 bits, reconstructed as one
    block: its compiled output on unseen images is closer to the float block's."""
    assert [len(b.layers) for b in blocks(residual)] == [3]
    calib, test = _images(64, (3, 10, 10), 2), _images(64, (3, 10, 10), 3)
    nearest, _ = _compiled_error(residual, calib, test, W4, "nearest")
    # the default number of steps: a block's reconstruction needs them (60 do not converge)
    learned, _ = _compiled_error(residual, calib, test, W4, method, Settings(batch=16))
    assert learned < 0.9 * nearest, (learned, nearest)


@pytest.mark.parametrize("method", ["adaround", "brecq", "qdrop"])
def test_reconstruction_rounds_each_weight_down_or_up(residual, method):
    """AdaRound, BRECQ and QDrop only choose a direction: every integer is floor(w / s) or
    ceil(w / s) on the lowering's own grid, inside the symmetric range; and some differ
    from round-to-nearest (the methods did something)."""
    x = _images(32, (3, 10, 10), 4)
    calib = Calibration(residual, x)
    lw = Lowering(residual, calib, W4)
    lw.run()
    weights, _ = learn_rounding(residual, x, W4, method, calibration=calib, settings=FAST,
                                use_cache=False)
    changed = 0
    for node in (n for n in residual.nodes if n.op == "Conv"):
        g = lw.weight_grid[node.name]
        w = residual.constants[node.inputs[1]].astype(np.float64)
        ratio = w / g["scales"].reshape(-1, 1, 1, 1)
        q = weights[node.name].astype(np.int64)
        lo = np.clip(np.floor(ratio), -g["qmax"], g["qmax"])
        hi = np.clip(np.ceil(ratio), -g["qmax"], g["qmax"])
        assert ((q == lo) | (q == hi)).all(), node.name
        changed += int((q != np.clip(np.floor(ratio + 0.5), -g["qmax"], g["qmax"])).sum())
    assert changed > 0


def _schur_cost(e_fixed, h, fixed, free):
    """min over real values of the free columns of (w - u)^T H (w - u), given the error
    e_fixed = w - u on the fixed columns: e^T (H_AA - H_AF H_FF^-1 H_FA) e."""
    s = h[np.ix_(fixed, fixed)]
    if free:
        s = s - h[np.ix_(fixed, free)] @ np.linalg.solve(h[np.ix_(free, free)], h[np.ix_(free, fixed)])
    return float(e_fixed @ s @ e_fixed)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.sampled_from([1, 7, 127]),
       st.booleans())
def test_gptq_update_is_the_enumerated_optimum(seed, d, qmax, act_order):
    """GPTQ's promise, checked by enumeration: column by column (in its order), given the
    integers already chosen, the integer it picks is, of every integer in [-qmax, qmax],
    the one whose error is least once the weights not yet rounded are re-fitted by least
    squares (the Schur complement of H + lambda I). With one column that is round-to-
    nearest; for the last column it is the plain optimum of the output error."""
    rng = np.random.default_rng(seed)
    rows = 3
    x = rng.normal(0, 1, (d, 5 * d)) + rng.normal(0, 1, (d, 1))
    h = x @ x.T / x.shape[1]
    w = rng.normal(0, 1, (rows, d))
    s = np.abs(w).max(axis=1) / qmax * rng.uniform(0.6, 1.0, rows)
    damp = 0.01
    q = gptq_round(torch.as_tensor(w), torch.as_tensor(s), qmax, torch.as_tensor(h)[None],
                   damp=damp, act_order=act_order).numpy()
    assert q.shape == w.shape and np.abs(q).max() <= qmax
    hd = h + damp * np.mean(np.diag(h)) * np.eye(d)
    order = list(np.argsort(-np.diag(hd), kind="stable")) if act_order else list(range(d))
    for r in range(rows):
        for k, col in enumerate(order):
            fixed, free = order[:k + 1], order[k + 1:]

            def cost(v):
                u = np.array([q[r, j] if j != col else v for j in fixed], np.float64) * s[r]
                return _schur_cost(w[r, fixed] - u, hd, fixed, free)
            best = min(cost(v) for v in range(-qmax, qmax + 1))
            assert cost(q[r, col]) <= best * (1 + 1e-9) + 1e-12, (r, col)
    if d == 1:
        assert np.array_equal(q[:, 0], np.clip(np.floor(w[:, 0] / s + 0.5), -qmax, qmax))


@pytest.fixture(scope="module")
def digits():
    z = np.load(MODELS / "digits_calib.npz")["x"]
    return z[:64], np.load(MODELS / "digits_test.npz")["x"][:16]


@pytest.mark.parametrize("name,bits,method", [("resnet", 4, "qdrop"), ("mobilenet", 4, "gptq"),
                                              ("mobilenetv3", 8, "brecq")])
def test_learned_rounding_compiles_to_a_model_that_verifies_exact(name, bits, method, digits):
    calib, images = digits
    model = intq.compile(MODELS / f"{name}.onnx", calib, bits=bits, rounding=method,
                         rounding_options={"settings": Settings(steps=10, batch=16),
                                           "use_cache": False})
    assert model.info["rounding"]["method"] == method
    assert model.integer.metadata["config"]["rounding"] == method
    twin = from_compiled(model)
    for backend in ("reference", "numba"):
        res = verify(model, images, backend, twin=twin)
        assert res["all_exact"], res["first_differing"]


def test_rounding_is_cached_and_the_cache_is_the_result(residual, tmp_path, monkeypatch):
    monkeypatch.setenv("INTQ_CACHE_DIR", str(tmp_path))
    x = _images(16, (3, 10, 10), 6)
    first, info1 = learn_rounding(residual, x, W4, "gptq")
    again, info2 = learn_rounding(residual, x, W4, "gptq")
    assert not info1["cached"] and info2["cached"]
    assert first.keys() == again.keys()
    assert all(np.array_equal(first[k], again[k]) and again[k].dtype == np.int8 for k in first)
    other, info3 = learn_rounding(residual, x[:8], W4, "gptq")
    assert not info3["cached"]   # other data, another entry


def test_float_target_is_the_least_squares_fit_and_w_where_the_input_is_exact():
    """W' (GPTQ's float target) solves W' H = W C, the normal equations of
    min ||W' X_q - W X_f||^2; where the quantized input equals the float one (C = H) it is
    W itself, damping or not."""
    from intq.rounding.gptq import float_target_weights

    rng = np.random.default_rng(11)
    xf = rng.normal(0, 1, (2, 6, 200))
    xq = xf + 0.1 * rng.normal(0, 1, xf.shape)
    h = torch.as_tensor(xq @ xq.transpose(0, 2, 1) / 200)
    c = torch.as_tensor(xf @ xq.transpose(0, 2, 1) / 200)
    w = torch.as_tensor(rng.normal(0, 1, (4, 6)))           # 2 groups of 2 rows
    wp = float_target_weights(w, h, c, damp=0.0).reshape(2, 2, 6)
    lhs, rhs = wp @ h, w.reshape(2, 2, 6) @ c
    assert float((lhs - rhs).abs().max()) < 1e-9 * float(rhs.abs().max())
    same = float_target_weights(w, h, h, damp=0.01)
    assert torch.equal(same, w.double())


@pytest.mark.parametrize("c,g,k,stride,dil,pads", [(6, 1, 3, 1, 1, (1, 1, 1, 1)), (6, 6, 3, 2, 1, (0, 1, 1, 0)),
                                                   (4, 2, 5, 1, 2, (2, 2, 2, 2)), (3, 1, 1, 1, 1, (0, 0, 0, 0))])
def test_hessian_columns_are_the_unfolded_input(c, g, k, stride, dil, pads):
    """GPTQ's columns (gathered at the output positions, so a large map is never unfolded
    whole) are exactly torch's unfold of the padded input, per group."""
    from types import SimpleNamespace

    from intq.rounding.gptq import layer_columns

    node = SimpleNamespace(op="Conv", attrs={"groups": g, "strides": (stride, stride),
                                             "dilations": (dil, dil), "pads": pads})
    x = torch.randn(2, c, 11, 9, generator=torch.Generator().manual_seed(3))
    got = layer_columns(node, x, (4, c // g, k, k))
    pt, pl, pb, pr = pads
    ref = torch.nn.functional.unfold(torch.nn.functional.pad(x, (pl, pr, pt, pb)), (k, k),
                                     dilation=dil, stride=stride)
    b, d, n = ref.shape
    assert torch.equal(got, ref.reshape(b, g, d // g, n).permute(1, 2, 0, 3).reshape(g, d // g, b * n))
