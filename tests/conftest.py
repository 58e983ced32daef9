"""Shared test helpers: build ONNX graphs by hand, export torch modules, compare with onnxruntime."""
from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
sys.path.insert(0, str(ROOT))  # `import models.zoo`

os.environ.setdefault("OMP_NUM_THREADS", "2")


def make_model(nodes, inputs, outputs, initializers=(), opset=13):
    """An ONNX model from helper nodes; inputs/outputs are (name, shape) pairs."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), name=k) for k, v in dict(initializers).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    # Outputs given without a shape get the inferred one (old IR versions require it).
    inferred = onnx.shape_inference.infer_shapes(model)
    for out, inf in zip(model.graph.output, inferred.graph.output):
        out.CopyFrom(inf)
    onnx.checker.check_model(model)
    return model


def ort_run(model, x):
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def rel_err(y, ref) -> float:
    return float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-12))


def export_torch(module, x, dynamo=False, opset=13, dynamic_batch=False, keep_bn=True,
                 dynamic_hw=False):
    """Export a torch module to an in-memory ModelProto with either exporter; dynamic_hw
    makes height and width symbolic too (as detectors are exported)."""
    import torch

    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            kw = {"optimize": not keep_bn, "verbose": False}
            dims = {}
            if dynamic_batch:
                dims[0] = torch.export.Dim("batch", min=1, max=1024)
            if dynamic_hw:
                dims.update({2: torch.export.Dim("height", min=8, max=4096),
                             3: torch.export.Dim("width", min=8, max=4096)})
            if dims:
                kw["dynamic_shapes"] = (dims,)
            prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, **kw)
            return prog.model_proto
        f = io.BytesIO()
        kw = {}
        if keep_bn:
            kw = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
        axes = ({0: "batch"} if dynamic_batch else {}) | ({2: "height", 3: "width"} if dynamic_hw else {})
        if axes:
            kw["dynamic_axes"] = {"input": axes, "output": {0: "batch"} if dynamic_batch else {}}
        torch.onnx.export(module, (x,), f, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"], **kw)
        return onnx.load_from_string(f.getvalue())


def export_full_size(name, res, prepare=None):
    """A zoo.FULL_SIZE net (seeded weights, eval mode, `prepare` applied) exported at
    res x res by the legacy exporter (opset 13, dynamic batch) as a ModelProto."""
    import torch
    from models import zoo

    torch.manual_seed(0)
    model = zoo.FULL_SIZE[name][0]().eval()
    model = prepare(model) if prepare else model
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, res, res),), f, dynamo=False, opset_version=13,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    return onnx.load_from_string(f.getvalue())


def bundled_onnx_files():
    return sorted(MODELS.glob("*.onnx"))


@pytest.fixture(scope="session")
def digits_test():
    path = MODELS / "digits_test.npz"
    if not path.exists():
        pytest.skip("models/digits_test.npz not built")
    d = np.load(path)
    return d["x"], d["y"]


@pytest.fixture(scope="session")
def full_size_graphs():
    """Full-size nets exported once per session at their native resolution."""
    import torch
    from models import zoo

    from intq.pipeline import float_graph

    graphs = {}
    for name, (ctor, res) in zoo.FULL_SIZE.items():
        torch.manual_seed(0)
        model = ctor().eval()
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(1, 3, res, res),), f, dynamo=False, opset_version=13)
        graphs[name] = (float_graph(onnx.load_from_string(f.getvalue())),
                        zoo.count_macs(model, (1, 3, res, res)), zoo.count_params(model))
    return graphs
