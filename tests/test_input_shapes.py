"""`--input-shape`: models exported with symbolic height and width (as detectors are, with
`dynamic_axes` or `dynamic_shapes`, both exporters) compile once their input is fixed; the
shape arithmetic computed from it folds away; bad shapes get one line."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from conftest import export_torch, ort_run
from test_exporters import Composite
from intq.errors import IntqError
from intq.float_executor import run_float
from intq.frontend import import_onnx
from intq.frontend.input_shapes import parse_input_shapes
from intq.passes import run_passes

# Ops that would mean shape arithmetic survived into the graph.
SHAPE_OPS = {"Shape", "Gather", "Range", "Expand", "ConstantOfShape", "Reshape", "Unsqueeze", "Cast"}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "intq", *map(str, args)], capture_output=True, text=True)


def one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("intq: error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module", params=[False, True], ids=["legacy", "dynamo"])
def dynamic_model(request):
    """Composite exported with symbolic batch, height and width."""
    dynamo = request.param
    return export_torch(Composite().eval(), torch.randn(2, 3, 12, 12), dynamo=dynamo,
                        opset=18 if dynamo else 13, dynamic_batch=True, dynamic_hw=True)


def test_the_export_is_dynamic(dynamic_model):
    dims = dynamic_model.graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_value") for d in dims] == [False, True, False, False]
    with pytest.raises(IntqError, match="--input-shape"):
        import_onnx(dynamic_model)


@pytest.mark.parametrize("hw", [12, 20, 31])
def test_fixed_shape_folds_and_matches_onnxruntime(dynamic_model, hw):
    name = dynamic_model.graph.input[0].name
    for spec in ({None: (1, 3, hw, hw)}, parse_input_shapes(f"{name}:1,3,{hw},{hw}")):
        graph = run_passes(import_onnx(dynamic_model, input_shapes=spec))
        assert graph.values[graph.inputs[0]].shape == (None, 3, hw, hw)  # batch stays free
        assert not {n.op for n in graph.nodes} & SHAPE_OPS
        x = np.random.default_rng(hw).standard_normal((2, 3, hw, hw)).astype(np.float32)
        y, ref = run_float(graph, x)[0], ort_run(dynamic_model, x)[0]
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("text,fragment", [
    ("1,3,x16", "whole numbers"), ("1,3,0,16", "positive"), ("", None), ("a:1,3,8,8;a:1,3,8,8", "twice"),
    ("1,3,8,8;b:1,3,8,8", "name")])
def test_parse_errors(text, fragment):
    if fragment is None:
        assert parse_input_shapes(text) is None
        return
    with pytest.raises(IntqError, match=fragment):
        parse_input_shapes(text)


def test_parse_forms():
    assert parse_input_shapes(["1,3,640,640"]) == {None: (1, 3, 640, 640)}
    assert parse_input_shapes("images:1,3,64,96; mask:1,1,64,96") == {
        "images": (1, 3, 64, 96), "mask": (1, 1, 64, 96)}


def test_wrong_shapes_refused(dynamic_model):
    name = dynamic_model.graph.input[0].name
    with pytest.raises(IntqError, match="not an input"):
        import_onnx(dynamic_model, input_shapes={"nope": (1, 3, 8, 8)})
    with pytest.raises(IntqError, match="4 dimensions, 3 given"):
        import_onnx(dynamic_model, input_shapes={name: (1, 3, 8)})
    with pytest.raises(IntqError, match="dimension 1 is fixed at 3"):
        import_onnx(dynamic_model, input_shapes={None: (1, 4, 8, 8)})


@pytest.fixture(scope="module")
def dynamic_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("dyn")
    model = export_torch(Composite().eval(), torch.randn(2, 3, 12, 12), dynamic_batch=True, dynamic_hw=True)
    path = d / "dynamic.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    np.savez(d / "calib.npz", x=rng.standard_normal((16, 3, 24, 20)).astype(np.float32))
    np.save(d / "good.npy", rng.standard_normal((3, 3, 24, 20)).astype(np.float32))
    np.save(d / "bad.npy", rng.standard_normal((3, 3, 12, 12)).astype(np.float32))
    return d


def test_cli_inspect_compile_run(dynamic_file):
    d = dynamic_file
    one_line_error(run_cli("inspect", d / "dynamic.onnx"), "--input-shape")
    proc = run_cli("inspect", d / "dynamic.onnx", "--input-shape", "1,3,24,20", "--json")
    assert proc.returncode == 0, proc.stderr
    table = json.loads(proc.stdout)
    assert "24" in json.dumps(table) and "20" in json.dumps(table)
    proc = run_cli("compile", d / "dynamic.onnx", "--input-shape", "input:1,3,24,20", "-o", d / "m.intq",
                   "--calib", d / "calib.npz")
    assert proc.returncode == 0, proc.stderr
    import intq

    model = intq.load(d / "m.intq")
    assert model.float.values[model.float.inputs[0]].shape == (None, 3, 24, 20)  # recorded
    proc = run_cli("run", d / "m.intq", d / "good.npy", "-o", d / "out.npy")
    assert proc.returncode == 0, proc.stderr
    assert np.load(d / "out.npy").shape == (3, 10)
    one_line_error(run_cli("run", d / "m.intq", d / "bad.npy", "-o", d / "out2.npy"), "24")
    one_line_error(run_cli("compile", d / "dynamic.onnx", "--input-shape", "1,3,24", "-o", d / "x.intq",
                           "--calib", d / "calib.npz"), "3 given")


def test_api_input_shape(dynamic_file):
    import intq

    calib = np.load(dynamic_file / "calib.npz")["x"]
    model = intq.compile(str(dynamic_file / "dynamic.onnx"), calib, input_shape=(1, 3, 24, 20))
    assert model.info["source"].endswith("dynamic.onnx")
    x = np.load(dynamic_file / "good.npy")
    assert np.array_equal(model.run(x, "numba", integer=True), model.run(x, "reference", integer=True))
