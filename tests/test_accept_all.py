"""`intq allocate` and `intq qat` accept every graph that `intq compile` accepts: the opset-9
ShuffleNet of the onnx wheel's model zoo (fixed batch, channel-shuffle reshapes and
transposes, softmax), the digits MobileNetV3 (hard-swish, hard-sigmoid SE gates, SE products,
softmax) and every full-size zoo architecture at reduced resolution. Tiny runs (two images,
one training step, a couple of sensitivity samples): the point is that each is accepted and
runs; on MobileNetV3 an untrained conversion also equals `intq compile` bit for bit, and the
one-step model verifies exact."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import intq
from conftest import MODELS, export_full_size
from intq.alloc.allocate import allocate
from intq.quant.scheme import QuantConfig
from intq.twin.qat import QATModel, float_graph_with_batchnorms, train
from intq.twin.verify import verify

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "intq", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("model,shape,classes", [
    (LIGHT / "light_shufflenet.onnx", (3, 224, 224), 1000),
    (MODELS / "mobilenetv3.onnx", (1, 16, 16), 10)], ids=["shufflenet_opset9", "mobilenetv3"])
def test_cli_qat_and_allocate_accept_what_compile_accepts(model, shape, classes, tmp_path):
    r = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=r.uniform(0, 1, (2,) + shape).astype(np.float32), y=r.integers(0, classes, 2))
    assert run_cli("compile", model, "--calib", data, "-o", tmp_path / "c.intq").returncode == 0
    proc = run_cli("qat", model, "--data", data, "--epochs", "1", "--batch", "2",
                   "-o", tmp_path / "q.intq")
    assert proc.returncode == 0, proc.stderr
    assert intq.load(tmp_path / "q.intq").info["calibration"]["method"] == "qat"
    proc = run_cli("allocate", model, "--calib", data, "--data", data, "--images", "2",
                   "--max-size-mb", "50%", "-o", tmp_path / "bits.json",
                   env={"INTQ_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    bits = json.loads((tmp_path / "bits.json").read_text())
    assert set(bits.values()) <= {"w8a8", "w4a8", "w4a4"} and set(bits.values()) - {"w8a8"}


def test_mobilenetv3_untrained_conversion_equals_compile_and_trained_verifies():
    calib = np.load(MODELS / "digits_calib.npz")["x"]
    d = np.load(MODELS / "digits_test.npz")
    x = d["x"][:64]
    path = MODELS / "mobilenetv3.onnx"
    fg, bns = float_graph_with_batchnorms(path)
    converted = QATModel(fg, bns, QuantConfig(default_bits=8), calib).convert(calib)
    # QAT's scheme: max clipping, no bias correction (it trains the rounding itself)
    compiled = intq.compile(path, calib, bits=8, weight_clip="max", bias_correction=False)
    assert np.array_equal(converted.run(x, integer=True), compiled.run(x, integer=True))
    a, b = converted.integer, compiled.integer
    assert [n.op for n in a.nodes] == [n.op for n in b.nodes]
    assert {"IntLookup", "IntMul", "IntSoftmax"} <= {n.op for n in a.nodes}
    for na, nb in zip(a.nodes, b.nodes):
        assert na.attrs == nb.attrs, na.name
        for ta, tb in zip(na.inputs, nb.inputs):
            if ta in a.constants:
                assert np.array_equal(a.constants[ta], b.constants[tb]), (na.name, ta)
    model, history = train(path, d["x"][:64], d["y"][:64], QuantConfig(default_bits=4), epochs=1,
                           batch=32, calib=calib, log=None)
    assert np.isfinite(history[0]["loss"])
    res = verify(model, d["x"][64:96], "reference")
    assert res["all_exact"], res["first_differing"]


FULL_SIZE = [("resnet18", 64), ("resnet50", 64), ("resnet50_v1", 64), ("inception_v3", 91),
             ("mobilenet_v2", 64), ("squeezenet1_0", 64), ("shufflenet_v2_x1_0", 64),
             ("densenet121", 64), ("mobilenet_v3_large", 64), ("efficientnet_b0", 64),
             ("efficientnet_lite0", 64)]


def test_the_list_is_every_full_size_architecture():
    from models import zoo

    assert {n for n, _ in FULL_SIZE} == set(zoo.FULL_SIZE)


@pytest.mark.parametrize("i,name,res", [(i, n, r) for i, (n, r) in enumerate(FULL_SIZE)],
                         ids=[n for n, _ in FULL_SIZE])
def test_full_size_architecture_trains_converts_and_allocates(i, name, res, tmp_path, monkeypatch):
    """One QAT step and its conversion, and an allocation by both sensitivities (alternating
    over the list, each on two images)."""
    from models import zoo

    monkeypatch.setenv("INTQ_CACHE_DIR", str(tmp_path / "cache"))
    proto = export_full_size(name, res, zoo.sane_random_batchnorm)
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 3, res, res)).astype(np.float32)
    y = r.integers(0, 1000, 2)
    model, history = train(proto, x, y, QuantConfig(default_bits=8), epochs=1, batch=2, log=None)
    assert np.isfinite(history[0]["loss"])
    assert model.run(x).shape == (2, 1000)
    method = ("perturbation", "hessian")[i % 2]
    res_ = allocate(proto, x, x, y, limits={"size_mb": (0.5, True)}, method=method, images=2,
                    samples=2)
    assert "w8a8" in res_["bits"].values() and set(res_["bits"].values()) - {"w8a8"}
    assert all(np.isfinite(r_[f"omega_{c}"]) for r_ in res_["layers"] for c in ("w8a8", "w4a8", "w4a4"))
