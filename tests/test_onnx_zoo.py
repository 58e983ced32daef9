"""The classic ONNX model-zoo architectures (opset 9) that ship inside the onnx wheel, with
dummy weights: each compiles and runs integer-only, except the three with LRN, which fail
with one line naming it. Dummy weights make accuracy meaningless here; the full-size
definitions in models/zoo.py with random weights carry the accuracy checks."""
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import ort_run, rel_err
from intq.errors import UnsupportedOpsError
from intq.executor import make_executor
from intq.float_executor import run_float
from intq.pipeline import compile_model
from intq.quant.lower import validate_integer_graph
from intq.quant.scheme import QuantConfig
from intq.reference import dequantize

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SUPPORTED = ["resnet50", "squeezenet", "vgg19", "shufflenet", "densenet121", "inception_v2"]
WITH_LRN = ["bvlc_alexnet", "zfnet512", "inception_v1"]


@pytest.mark.parametrize("name", SUPPORTED)
def test_zoo_model_compiles_and_runs_integer_only(name):
    path = LIGHT / f"light_{name}.onnx"
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)
    ig, fg, _ = compile_model(path, x, QuantConfig(default_bits=8))
    validate_integer_graph(ig)
    # Dummy weights give SqueezeNet logits of ~1e10, whose float32 rounding step (1024)
    # makes any softmax of them noise: where the model ends in Softmax, its input (the
    # logits) is compared, and the softmax is only checked to be the integer one.
    proto = onnx.load(str(path))
    last = proto.graph.node[-1]
    checked = last.input[0] if last.op_type == "Softmax" else proto.graph.output[0].name
    if last.op_type == "Softmax":
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(checked))
        assert ig.nodes[-1].op == "IntSoftmax"
        assert ig.metadata["outputs"][ig.outputs[0]]["scale"] == 1 / 256
    want = run_float(fg, x, trace=True)[checked]
    assert rel_err(want, ort_run(proto, x)[-1 if last.op_type == "Softmax" else 0]) < 1e-4
    oq = ig.metadata["qparams"][checked]
    # The Numba executor: it equals the reference bit for bit (tests/test_backend.py), and
    # VGG19's 20 GMACs take the int64 reference half a minute.
    got = dequantize(make_executor(ig, "numba").run(x, trace=True)[checked], oq)
    assert got.shape == want.shape and got.shape[:2] == (1, 1000)
    assert np.abs(got - want).max() <= 0.01 * np.abs(want).max() + oq["scale"]


@pytest.mark.parametrize("name", WITH_LRN)
def test_zoo_models_with_lrn_fail_naming_it(name):
    with pytest.raises(UnsupportedOpsError, match=r"^unsupported ops: LRN \(") as e:
        compile_model(LIGHT / f"light_{name}.onnx", np.zeros((1, 3, 224, 224), np.float32),
                      QuantConfig())
    assert list(e.value.unsupported) == ["LRN"]
