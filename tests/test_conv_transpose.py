"""ConvTranspose as the plain convolution it equals (zeros inserted between the input's
elements by Pad's interior padding, the kernel flipped): the float graph computes what
onnxruntime computes for strides, pads, output padding, output_shape, auto_pad, groups
and dilation; the interior padding kernel equals its reference on every dtype; a U-Net
style model with a transposed convolution compiles, verifies exact and converts by QAT;
both torch exporters' ConvTranspose2d import."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from conftest import export_torch, make_model, ort_run, rel_err
from intq.errors import IntqError
from intq.float_executor import run_float
from intq.ir import Graph
from intq.kernels import cpu
from intq.kernels.fuse import run_reference
from intq.kernels.plan import Plan
from intq.ops import infer_shapes
from intq.ops.integer import dtype_range
from intq.pipeline import float_graph

PATHS = ["portable"] + (["avx2"] if cpu.has_avx2() else []) + (["vnni"] if cpu.has_vnni() else [])

CASES = [  # (in C, out C, groups, kernel, attributes)
    (4, 6, 1, (2, 2), {"strides": [2, 2]}),
    (4, 6, 1, (4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    (4, 4, 1, (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    (3, 5, 1, (3, 2), {"strides": [3, 2], "pads": [0, 1, 2, 0], "output_padding": [2, 1]}),
    (4, 6, 2, (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    (6, 6, 6, (4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    (4, 3, 1, (3, 3), {"strides": [2, 2], "dilations": [2, 2], "pads": [2, 1, 0, 3]}),
    (4, 3, 1, (3, 3), {}),
    (4, 3, 1, (3, 3), {"strides": [2, 2], "output_shape": [10, 11]}),
    (4, 3, 1, (3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    (4, 3, 1, (4, 3), {"strides": [2, 3], "auto_pad": "SAME_LOWER"}),
    (4, 3, 1, (3, 3), {"strides": [2, 2], "auto_pad": "VALID"}),
]


def transpose_model(cin, cout, groups, kernel, attrs, bias=True, hw=(5, 6)):
    rng = np.random.default_rng(cin * 7 + cout)
    w = {"W": rng.standard_normal((cin, cout // groups, *kernel)).astype(np.float32)}
    inputs = ["x", "W"]
    if bias:
        w["B"] = rng.standard_normal(cout).astype(np.float32)
        inputs.append("B")
    node = helper.make_node("ConvTranspose", inputs, ["y"], group=groups, **attrs)
    return make_model([node], [("x", [None, cin, *hw])], [("y", None)], w)


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c[4].items()) or "plain")
def test_float_conv_transpose_matches_onnxruntime(case):
    cin, cout, groups, kernel, attrs = case
    model = transpose_model(cin, cout, groups, kernel, attrs)
    x = np.random.default_rng(0).standard_normal((2, cin, 5, 6)).astype(np.float32)
    want = ort_run(model, x)[0]
    fg = float_graph(model)
    assert "ConvTranspose" not in {n.op for n in fg.nodes}
    got = run_float(fg, x)[0]
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.sampled_from(["uint4", "uint8", "int8", "int16", "int32"]), st.integers(1, 3),
       st.integers(1, 20), st.integers(1, 5), st.integers(1, 5), st.integers(0, 3),
       st.integers(0, 3), st.lists(st.integers(0, 3), min_size=4, max_size=4), st.integers(0, 2**16))
def test_interior_pad_kernel_equals_reference(dtype, n, c, h, w, ih, iw, pads, seed):
    rng = np.random.default_rng(seed)
    lo, hi = dtype_range(dtype)
    value = int(rng.choice([lo, hi, rng.integers(lo, hi + 1)]))
    g = Graph("interior")
    g.add_input("x", (n, c, h, w), dtype)
    g.add_node("IntPad", ["x"], ["y"], {"pads": pads, "value": value, "interior": [ih, iw]}, name="pad")
    g.outputs = ["y"]
    infer_shapes(g)
    x = rng.integers(lo, hi + 1, (n, c, h, w))
    x.reshape(-1)[::2] = hi
    (want,) = run_reference(g, {"x": x})
    t, l = pads[0], pads[1]
    # The rule, written out: x[i, j] lands at (t + i (ih + 1), l + j (iw + 1)); the rest is value.
    spelled = np.full(want.shape, value)
    for i in range(h):
        for j in range(w):
            spelled[:, :, t + i * (ih + 1), l + j * (iw + 1)] = x[:, :, i, j]
    assert np.array_equal(want, spelled)
    for path in PATHS:
        (got,) = Plan(g, path).run({"x": x})
        assert np.array_equal(got, want), path


def unet_model():
    """Encoder conv (stride 2), a transposed convolution back up, the skip concatenated."""
    rng = np.random.default_rng(4)
    w = {n: (rng.standard_normal(s) * 0.3).astype(np.float32) for n, s in
         (("W1", (8, 3, 3, 3)), ("W2", (16, 8, 3, 3)), ("WT", (16, 8, 2, 2)), ("BT", (8,)),
          ("W3", (4, 16, 3, 3)))}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("ConvTranspose", ["r2", "WT", "BT"], ["up"], strides=[2, 2]),
             helper.make_node("Relu", ["up"], ["ru"]),
             helper.make_node("Concat", ["ru", "r1"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "W3"], ["y"], pads=[1, 1, 1, 1])]
    return make_model(nodes, [("x", [None, 3, 8, 12])], [("y", None)], w)


def test_model_with_conv_transpose_compiles_verifies_and_trains():
    import intq
    from intq.quant.scheme import QuantConfig
    from intq.reference import run_integer
    from intq.twin.qat import QATModel, float_graph_with_batchnorms
    from intq.twin.verify import verify
    from intq.validate import validate_integer_graph

    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, 3, 8, 12)).astype(np.float32)
    test = rng.standard_normal((6, 3, 8, 12)).astype(np.float32)
    proto = unet_model()
    assert rel_err(run_float(float_graph(proto), test)[0], ort_run(proto, test)[0]) < 1e-5
    for bits in (8, 4):
        model = intq.compile(proto, calib=calib, bits=bits)
        ops = {n.op for n in model.integer.nodes}
        assert "IntPad" in ops and "ConvTranspose" not in ops
        validate_integer_graph(model.integer)
        want = run_integer(model.integer, test)[0]
        assert np.array_equal(model.run(test, integer=True), want)
        assert verify(model, test)["all_exact"]
    model8 = intq.compile(proto, calib=calib, bits=8)
    y, ref = model8.run(test), run_float(model8.float, test)[0]
    assert (y * ref).sum() / np.sqrt((y * y).sum() * (ref * ref).sum()) > 0.99
    fg, bns = float_graph_with_batchnorms(proto)
    qm = QATModel(fg, bns, QuantConfig(default_bits=8), calib)
    plain8 = intq.compile(proto, calib=calib, bits=8, weight_clip="max", bias_correction=False)
    assert np.array_equal(qm.convert(calib).run(test, integer=True), plain8.run(test, integer=True))


class Up(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.down = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.up = torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)

    def forward(self, x):
        return self.up(torch.relu(self.bn(self.down(x))))


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_torch_conv_transpose_exports_import(dynamo):
    torch.manual_seed(0)
    m = Up().eval()
    x = torch.randn(2, 3, 16, 16)
    proto = export_torch(m, x, dynamo=dynamo, opset=18 if dynamo else 13)
    got = run_float(float_graph(proto), x.numpy())[0]
    with torch.no_grad():
        want = m(x).numpy()
    assert got.shape == want.shape and rel_err(got, want) < 1e-5


def test_pads_beyond_the_kernel_fail_in_one_line():
    model = transpose_model(4, 3, 1, (3, 3), {"strides": [2, 2], "pads": [3, 0, 0, 0]})
    with pytest.raises(IntqError, match="larger than the dilated kernel"):
        float_graph(model)
