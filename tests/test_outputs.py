"""`--outputs`: a detector whose graph ends in ops intq does not compile (a TopK over the
scores, as NMS-style post-processing does) compiles once it is ended at its head tensors;
the cut graph computes what onnxruntime computes at those tensors in the whole model; bad
names get one line."""
import json

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import make_model, ort_run, rel_err
from intq.errors import IntqError, UnsupportedOpsError
from intq.float_executor import run_float
from intq.frontend.outputs import cut_at_outputs, parse_outputs
from intq.pipeline import float_graph
from test_input_shapes import one_line_error, run_cli

HEADS = ["boxes", "scores"]


def detector():
    """Backbone conv, two heads (boxes 4 channels, scores 3 classes), then post-processing
    intq has no integer form for: a sigmoid over the flattened scores and a TopK of them."""
    rng = np.random.default_rng(2)
    w = {n: (rng.standard_normal(s) * 0.3).astype(np.float32) for n, s in
         (("W1", (8, 3, 3, 3)), ("Wb", (4, 8, 1, 1)), ("Ws", (3, 8, 1, 1)))}
    w["k"], w["flat"] = np.array([5], np.int64), np.array([1, -1], np.int64)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "Wb"], ["boxes"]),
             helper.make_node("Conv", ["r1", "Ws"], ["scores"]),
             helper.make_node("Reshape", ["scores", "flat"], ["sf"]),
             helper.make_node("Sigmoid", ["sf"], ["prob"]),
             helper.make_node("TopK", ["prob", "k"], ["top", "top_i"])]
    return make_model(nodes, [("x", [None, 3, 8, 8])], [("boxes", [None, 4, 8, 8]), ("top", [1, 5])], w)


def test_whole_detector_stops_at_topk():
    with pytest.raises(UnsupportedOpsError, match="TopK"):
        float_graph(detector())


def test_cut_graph_ends_at_the_heads_and_matches_onnxruntime():
    proto = detector()
    cut = cut_at_outputs(proto, HEADS)
    assert [o.name for o in cut.graph.output] == HEADS
    assert [n.op_type for n in cut.graph.node] == ["Conv", "Relu", "Conv", "Conv"]
    assert {t.name for t in cut.graph.initializer} == {"W1", "Wb", "Ws"}
    onnx.checker.check_model(cut)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = run_float(float_graph(cut), x)
    # The whole model's tensors at the same names: onnxruntime run with them as outputs.
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.append(helper.make_empty_tensor_value_info("scores"))
    whole = ort_run(probe, x)
    assert rel_err(got[0], whole[0]) < 1e-6 and rel_err(got[1], whole[-1]) < 1e-6


def test_api_outputs_compiles_and_verifies():
    import intq
    from intq.twin.verify import verify

    rng = np.random.default_rng(1)
    calib, test = rng.standard_normal((8, 3, 8, 8)).astype(np.float32), \
        rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    model = intq.compile(detector(), calib=calib, outputs="boxes,scores")
    assert model.integer.outputs == HEADS
    assert verify(model, test)["all_exact"]
    ys, refs = model.run_all(test), run_float(model.float, test)
    assert len(ys) == 2 and np.array_equal(ys[0], model.run(test))
    for y, ref in zip(ys, refs):
        assert (y * ref).sum() / np.sqrt((y * y).sum() * (ref * ref).sum()) > 0.99


def test_cli_outputs(tmp_path):
    path = tmp_path / "det.onnx"
    onnx.save(detector(), path)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "det.intq"
    proc = run_cli("compile", path, "--calib", calib, "-o", out, "--outputs", "boxes,scores")
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    proc = run_cli("inspect", path, "--outputs", "scores")
    assert proc.returncode == 0, proc.stderr
    assert "Wb" not in proc.stdout and "TopK" not in proc.stdout
    # Without labels, eval compares every output with the float model: the artifact's own,
    # or the whole ONNX file, ended at the artifact's outputs.
    data = tmp_path / "test.npy"
    np.save(data, np.random.default_rng(1).standard_normal((6, 3, 8, 8)).astype(np.float32))
    for extra in ([], ["--float", path]):
        proc = run_cli("eval", out, "--data", data, "--json", *extra)
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout)["outputs"]
        assert list(res) == HEADS and res["scores"]["shape"] == [3, 8, 8]
        for o in res.values():
            assert o["cosine_min"] > 0.99 and o["max_abs_steps"] >= o["mean_abs_steps"] > 0
    proc = run_cli("eval", out, "--data", data)
    assert proc.returncode == 0 and "boxes" in proc.stdout and "in output steps" in proc.stdout
    one_line_error(run_cli("inspect", path, "--outputs", "score"), "'score'", "no node", "scores")
    one_line_error(run_cli("inspect", path, "--outputs", "x"), "an input")
    one_line_error(run_cli("inspect", path, "--outputs", "W1"), "a constant")
    one_line_error(run_cli("inspect", path, "--outputs", "boxes,boxes"), "twice")


def test_parse_outputs():
    assert parse_outputs(None) is None
    assert parse_outputs(["a,b", "c"]) == ["a", "b", "c"]
    with pytest.raises(IntqError, match="at least one"):
        parse_outputs(" , ")
