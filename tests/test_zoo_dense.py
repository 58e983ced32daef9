"""The dense-prediction zoo (models/zoo.py DENSE), full architectures with seeded weights at
reduced resolution: a YOLOv8n-style detector with its DFL head and box decode, a
YOLOX-style one, a DBNet-style text detector and a U-Net. Each exporter's file imports and
computes what torch computes; at INT8 and at a mixed W8A8/W4A8 bit table each compiles,
runs the same integers on both backends, verifies exact against the twin, and every output
agrees with float at a cosine of at least 0.99; the YOLOv8 class scores, concatenated with
pixel-sized boxes in one output, keep a mean absolute error of at most 0.02."""
import numpy as np
import pytest
import torch

from conftest import export_torch, rel_err
from intq.float_executor import run_float
from intq.pipeline import float_graph

RES = {"yolov8n_style": 128, "yolox_style": 128, "dbnet_style": 128, "unet": 64}


def seeded(name):
    from models import zoo

    torch.manual_seed(0)
    return zoo.sane_random_batchnorm(zoo.DENSE[name][0](RES[name]).eval())


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return a @ b / np.sqrt((a @ a) * (b @ b))


@pytest.mark.parametrize("name", list(RES))
def test_dense_network_compiles_runs_on_both_backends_and_verifies(name):
    import intq
    from intq.twin.verify import verify

    model = seeded(name)
    res = RES[name]
    proto = export_torch(model, torch.randn(2, 3, res, res), dynamic_batch=True, keep_bn=False)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((8, 3, res, res)).astype(np.float32)
    test = rng.standard_normal((3, 3, res, res)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.as_tensor(test)).numpy()
    fg = float_graph(proto)
    assert rel_err(run_float(fg, test)[0], want) < 1e-5
    convs = [n.name for n in fg.nodes if n.op == "Conv"]
    mixed = {layer: ("w4a8" if i % 2 else "w8a8") for i, layer in enumerate(convs)}
    for bits in (8, mixed):
        m = intq.compile(proto, calib=calib, bits=bits)
        if bits is mixed:
            assert any(m.integer.values[n.inputs[1]].dtype == "int4"
                       for n in m.integer.nodes if n.op == "IntConv")
        q = m.run(test, integer=True)
        assert np.array_equal(q, m.run(test, "reference", integer=True))
        assert verify(m, test[:2])["all_exact"]
        y, ref = m.run(test), run_float(m.float, test)[0]
        assert cosine(y, ref) >= 0.99, cosine(y, ref)
        if name == "yolov8n_style":   # (N, 4 + 80, anchors): boxes in pixels, then scores
            assert cosine(y[:, :4], ref[:, :4]) >= 0.99
            assert np.abs(y[:, 4:] - ref[:, 4:]).mean() <= 0.02


@pytest.mark.parametrize("name", ["yolov8n_style", "yolox_style"])
def test_dynamo_exports_of_the_detectors_import(name):
    """Unoptimized, the dynamo exporter writes torch's chunk as SplitToSequence + SequenceAt."""
    model = seeded(name)
    res = RES[name]
    x = torch.randn(2, 3, res, res)
    proto = export_torch(model, x, dynamo=True, opset=18, keep_bn=True)
    assert "SplitToSequence" in {n.op_type for n in proto.graph.node}
    fg = float_graph(proto)
    assert not {"SplitToSequence", "SequenceAt"} & {n.op for n in fg.nodes}
    with torch.no_grad():
        assert rel_err(run_float(fg, x.numpy())[0], model(x).numpy()) < 1e-5
