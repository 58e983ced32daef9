"""User errors: one clear line on stderr, exit code 2, never a traceback."""
import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

from conftest import make_model
from intq.errors import IntqError, UnsupportedOpsError
from intq.frontend import import_onnx


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "intq", *map(str, args)], capture_output=True, text=True)


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("intq: error: ")
    for f in fragments:
        assert f in lines[0]


@pytest.fixture(scope="module")
def good_model_file(tmp_path_factory):
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                        helper.make_node("Relu", ["c"], ["y"])], [("x", [1, 3, 16, 16])],
                       [("y", None)], {"W": w})
    path = tmp_path_factory.mktemp("m") / "good.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_good_file_works(good_model_file):
    proc = run_cli("inspect", good_model_file)
    assert proc.returncode == 0 and "Conv+relu" in proc.stdout


def test_missing_file(tmp_path):
    assert_user_error(run_cli("inspect", tmp_path / "nope.onnx"), "no such file")


def test_directory(tmp_path):
    assert_user_error(run_cli("inspect", tmp_path), "directory")


def test_empty_file(tmp_path):
    (tmp_path / "e.onnx").write_bytes(b"")
    assert_user_error(run_cli("inspect", tmp_path / "e.onnx"), "empty")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_file(tmp_path, good_model_file, fraction):
    data = good_model_file.read_bytes()
    path = tmp_path / "t.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert_user_error(run_cli("inspect", path), str(path))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "r.onnx"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_user_error(run_cli("inspect", path), str(path))


def test_text_file(tmp_path):
    path = tmp_path / "readme.onnx"
    path.write_text("this is not a model\n" * 20)
    assert_user_error(run_cli("inspect", path))


def unsupported_model():
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv1"),
             helper.make_node("LRN", ["c"], ["s1"], name="lrn_a", size=3),
             helper.make_node("LRN", ["s1"], ["s2"], name="lrn_b", size=3),
             helper.make_node("Erf", ["s2"], ["m"], name="erf"),
             helper.make_node("Floor", ["m"], ["y"], name="floor")]
    return make_model(nodes, [("x", [1, 4, 8, 8])], [("y", None)],
                      {"W": np.ones((4, 4, 1, 1), np.float32)})


def test_unsupported_ops_listed_all_at_once_with_node_names():
    with pytest.raises(UnsupportedOpsError) as e:
        import_onnx(unsupported_model())
    assert e.value.unsupported == {"Erf": ["erf"], "Floor": ["floor"], "LRN": ["lrn_a", "lrn_b"]}


def test_unsupported_ops_cli(tmp_path):
    path = tmp_path / "u.onnx"
    path.write_bytes(unsupported_model().SerializeToString())
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.zeros((2, 4, 8, 8), np.float32))
    assert_user_error(run_cli("compile", path, "-o", tmp_path / "u.intq", "--calib", calib),
                      "LRN (lrn_a, lrn_b)", "Erf (erf)", "Floor (floor)")


def test_inspect_shows_and_marks_what_cannot_be_compiled(tmp_path):
    """inspect reads the whole graph: nodes without an importer, nodes whose importer
    rejects them (reflect padding) and nodes without an integer lowering (a Concat
    with a constant) are listed and marked, and it exits 0; only an unreadable file fails."""
    import json

    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect", name="reflect"),
             helper.make_node("Conv", ["p", "W"], ["c"], name="conv1"),
             helper.make_node("LRN", ["c"], ["l"], name="lrn", size=3),
             helper.make_node("Concat", ["l", "pix"], ["y"], name="const_concat", axis=1)]
    model = make_model(nodes, [("x", [1, 4, 8, 8])], [("y", None)],
                       {"W": np.ones((4, 4, 3, 3), np.float32), "pix": np.ones((1, 1, 8, 8), np.float32),
                        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}, opset=13)
    path = tmp_path / "u.onnx"
    path.write_bytes(model.SerializeToString())
    proc = run_cli("inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["layers"]}
    assert "unsupported" not in rows["conv1"] and rows["conv1"]["macs"] == 4 * 8 * 8 * 36
    assert rows["lrn"]["op"] == "LRN" and "no importer" in rows["lrn"]["unsupported"]
    assert "constant zero padding" in rows["reflect"]["unsupported"]
    assert "Concat with a constant input" in rows["const_concat"]["unsupported"]
    text = run_cli("inspect", path)
    assert text.returncode == 0 and "! LRN" in text.stdout and "3 node(s) cannot be compiled" in text.stdout


def test_shape_arithmetic_on_constants_does_not_count_as_unsupported():
    # Mul and Sigmoid on constants fold away before the op check.
    nodes = [helper.make_node("Sigmoid", ["W0"], ["W1"], name="s"),
             helper.make_node("Mul", ["W1", "two"], ["W"], name="m"),
             helper.make_node("Conv", ["x", "W"], ["y"])]
    g = import_onnx(make_model(nodes, [("x", [1, 4, 8, 8])], [("y", None)],
                               {"W0": np.zeros((4, 4, 1, 1), np.float32), "two": np.float32(2)}))
    assert [n.op for n in g.nodes] == ["Conv"]
    assert np.all(g.constants[g.nodes[0].inputs[1]] == 1.0)


def test_bad_shapes_are_user_errors():
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"])]
    bad = make_model(nodes, [("x", [1, 4, 8, 8])], [("y", [3, 85])], {"s": np.array([3, -1])})
    with pytest.raises(IntqError):
        import_onnx(bad)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"])]
    bad = make_model(nodes, [("x", [1, 4, 8, 8])], [("y", [1, 2, 8, 8])],
                     {"W": np.ones((2, 3, 1, 1), np.float32)})
    with pytest.raises(IntqError):
        import_onnx(bad)


def test_non_4d_input_rejected():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 16])], [("y", None)], {})
    with pytest.raises(IntqError, match="NCHW"):
        import_onnx(model)


def test_bad_bit_width_choices_are_one_line(tmp_path, good_model_file):
    """--bits, a bits file's values and --choices: one line naming the value (and the layer)
    and the allowed choices, before any calibration or measuring."""
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.zeros((2, 3, 16, 16), np.float32))
    out = tmp_path / "m.intq"
    allowed = "allowed: 8, 4, w8a8, w4a8 or w4a4"
    assert_user_error(run_cli("compile", good_model_file, "-o", out, "--calib", calib,
                              "--bits", "w8a4"), "--bits", "w8a4", allowed)
    bits = tmp_path / "bits.json"
    for value in ("w2a2", 16, True, [4, 8]):
        bits.write_text(json.dumps({"c_conv": value}))
        assert_user_error(run_cli("compile", good_model_file, "-o", out, "--calib", calib,
                                  "--bits", bits), "layer c_conv", repr(value), allowed)
    assert not out.exists()
    proc = run_cli("allocate", good_model_file, "--calib", calib, "-o", tmp_path / "b.json",
                   "--choices", "w8a8,w4a2")
    assert_user_error(proc, "--choices", "'w4a2'", allowed)
    assert not (tmp_path / "b.json").exists()


def test_bad_bit_width_in_the_python_api_is_checked_before_the_data():
    import intq

    with pytest.raises(IntqError, match="default bits: 'w5a5' is not a bit width; allowed"):
        intq.compile("no-such-model.onnx", "no-such-calib.npz", bits="w5a5")
    with pytest.raises(IntqError, match="layer conv1: 'W8A2' is not a bit width"):
        intq.compile("no-such-model.onnx", "no-such-calib.npz", bits={"conv1": "W8A2"})
