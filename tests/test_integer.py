"""Integer lowering end to end: integer-only graphs, accuracy against the float model,
the overflow guard, artifact round trips and corruption, bad calibration data, and the
size/BOPS report against HAWQ-V3 Table 1."""
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from onnx import helper

from conftest import MODELS, export_full_size, make_model
from intq.artifact import load_artifact, save_artifact
from intq.errors import IntqError
from intq.float_executor import run_float
from intq.ops.integer import INTEGER_DTYPES
from intq.pipeline import compile_model, float_graph
from intq.quant.calibrate import Calibration
from intq.quant.lower import lower_to_integer, validate_integer_graph
from intq.quant.scheme import QuantConfig
from intq.reference import dequantize, run_integer
from intq.report import cost_table

SMALL = ["resnet", "inception", "mobilenet", "mobilenetv3"]
BUNDLED = SMALL + [f"{n}.dynamo" for n in SMALL]   # both exporters


@pytest.fixture(scope="module")
def calib():
    return np.load(MODELS / "digits_calib.npz")["x"]


@pytest.fixture(scope="module")
def compiled(calib):
    """Every bundled ONNX file compiled at 8 bits, the legacy exports also at 4 bits."""
    out = {}
    for name in BUNDLED:
        for bits in (8, 4) if name in SMALL else (8,):
            out[name, bits] = compile_model(MODELS / f"{name}.onnx", calib, QuantConfig(default_bits=bits))
    return out


def cosine(a, b):
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("key", [(n, 8) for n in BUNDLED] + [(n, 4) for n in SMALL], ids=str)
def test_integer_only_after_the_input(compiled, key):
    ig, _, _ = compiled[key]
    validate_integer_graph(ig)
    assert [n.op for n in ig.nodes if n.op == "QuantizeInput"] == ["QuantizeInput"]
    for t, v in ig.values.items():
        assert t in ig.inputs or v.dtype in INTEGER_DTYPES, t
    for node in ig.nodes[1:]:
        for k, v in node.attrs.items():
            assert not isinstance(v, float), (node.name, k)
    assert all(a.dtype.kind in "iu" for a in ig.constants.values())


def test_validator_rejects_a_float_op(compiled):
    ig = compiled["resnet", 8][0].copy()
    ig.nodes[3].op = "Conv"
    with pytest.raises(IntqError, match="not integer-only"):
        validate_integer_graph(ig)


def logits(ig, fg, x):
    """Dequantized integer and float logits; for a net ending in Softmax, its input."""
    if ig.nodes[-1].op != "IntSoftmax":
        return (dequantize(run_integer(ig, x)[0], ig.metadata["outputs"][ig.outputs[0]]),
                run_float(fg, x)[0])
    t = ig.nodes[-1].inputs[0]
    q = ig.metadata["qparams"][t]
    return (dequantize(run_integer(ig, x, trace=True)[t], q),
            run_float(fg, x, trace=True)[fg.nodes[-1].inputs[0]])


@pytest.mark.parametrize("name", BUNDLED)
def test_int8_logits_agree_with_float(compiled, name, digits_test):
    x, y = digits_test
    ig, fg, _ = compiled[name, 8]
    li, lf = logits(ig, fg, x)
    per_image = (li * lf).sum(1) / np.linalg.norm(li, axis=1) / np.linalg.norm(lf, axis=1)
    assert per_image.min() > 0.99
    top1_int = (run_integer(ig, x)[0].argmax(1) == y).mean()
    assert abs(top1_int - (run_float(fg, x)[0].argmax(1) == y).mean()) <= 0.005


def test_dynamo_export_compiles_to_the_same_integers(compiled, calib, digits_test):
    x, _ = digits_test
    ig_legacy = compiled["resnet", 8][0]
    ig_dynamo = compiled["resnet.dynamo", 8][0]
    a, b = run_integer(ig_legacy, x[:50])[0], run_integer(ig_dynamo, x[:50])[0]
    assert (a == b).mean() > 0.95   # same net, two exporters: float rounding may differ slightly


def test_any_batch_size(compiled, digits_test):
    x, _ = digits_test
    ig = compiled["mobilenet", 4][0]
    whole = run_integer(ig, x[:9])[0]
    parts = np.concatenate([run_integer(ig, x[:1])[0], run_integer(ig, x[1:9])[0]])
    assert np.array_equal(whole, parts)


def overflow_model():
    k = 80 * 1000
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    return make_model(nodes, [("x", [1, 1, 80, 1000])], [("y", None)],
                      {"W": np.ones((2, k), np.float32)})


def test_overflow_guard_fires():
    # 80,000 inputs at 255 times weights at 127: the accumulator can reach 2.6e9 > 2^31.
    model = overflow_model()
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 80, 1000)).astype(np.float32)
    with pytest.raises(IntqError, match=r"layer .*accumulator may overflow INT32"):
        compile_model(model, x, QuantConfig(default_bits=8))


def test_overflow_guard_quiet_when_safe():
    # Same layer at 4 bits: 80,000 * 15 * 7 = 8.4e6, far from the limit.
    model = overflow_model()
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 80, 1000)).astype(np.float32)
    compile_model(model, x, QuantConfig(default_bits=4, keep_first_last_8=False))


def test_save_load_run_same_bytes(tmp_path, compiled, digits_test):
    x, _ = digits_test
    for key in [("resnet", 4), ("inception", 8)]:
        ig, fg, info = compiled[key]
        path = tmp_path / "m.intq"
        save_artifact(path, ig, fg, info)
        art = load_artifact(path)
        assert np.array_equal(run_integer(ig, x)[0], run_integer(art.integer, x)[0])
        assert np.array_equal(run_float(fg, x)[0], run_float(art.float, x)[0])
        for name, arr in ig.constants.items():
            assert np.array_equal(arr, art.integer.constants[name]), name


def test_int4_weights_are_packed(tmp_path, compiled):
    ig, fg, info = compiled["resnet", 4]
    save_artifact(tmp_path / "m.intq", ig, fg, info)
    manifest = json.loads(zipfile.ZipFile(tmp_path / "m.intq").read("manifest.json"))
    consts = manifest["integer_graph"]["constants"]
    packed = [c for c in consts.values() if c["packed_int4"]]
    assert packed and all(c["dtype"] == "int4" for c in packed)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "intq", *map(str, args)], capture_output=True, text=True)


def assert_user_error(proc, fragment=""):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert fragment in proc.stderr


@pytest.fixture(scope="module")
def artifact_file(tmp_path_factory, compiled):
    path = tmp_path_factory.mktemp("a") / "resnet.intq"
    save_artifact(path, *compiled["resnet", 8])
    return path


def test_corrupt_artifacts(tmp_path, artifact_file):
    data = artifact_file.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "random": np.random.default_rng(0).bytes(5000),
             "empty": b""}
    for name, blob in cases.items():
        p = tmp_path / f"{name}.intq"
        p.write_bytes(blob)
        assert_user_error(run_cli("report", p), str(p))
    # A flipped byte inside an array fails its checksum.
    p = tmp_path / "flipped.intq"
    with zipfile.ZipFile(artifact_file) as src, zipfile.ZipFile(p, "w") as dst:
        for item in src.infolist():
            blob = src.read(item.filename)
            if item.filename.endswith("00003.npy"):
                blob = blob[:-1] + bytes([blob[-1] ^ 1])
            dst.writestr(item, blob)
    assert_user_error(run_cli("report", p), "checksum")
    # An artifact from another format version.
    p = tmp_path / "future.intq"
    with zipfile.ZipFile(artifact_file) as src, zipfile.ZipFile(p, "w") as dst:
        for item in src.infolist():
            blob = src.read(item.filename)
            if item.filename == "manifest.json":
                m = json.loads(blob)
                m["version"] = 99
                blob = json.dumps(m).encode()
            dst.writestr(item, blob)
    assert_user_error(run_cli("eval", p, "--data", MODELS / "digits_test.npz"), "version 99")
    # A zip that is not an artifact.
    p = tmp_path / "other.intq"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "hi")
    assert_user_error(run_cli("run", p, "x.npy", "-o", tmp_path / "o.npy"), "not an intq artifact")


def test_bad_calibration_data(tmp_path):
    model = MODELS / "resnet.onnx"
    out = tmp_path / "m.intq"
    x = np.load(MODELS / "digits_calib.npz")["x"]
    bad = {"nan": {"x": np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x)},
           "shape": {"x": x[:, :, :8, :8]}, "rank": {"x": x[:, 0]}, "key": {"images": x}}
    expect = {"nan": "NaN", "shape": "expects", "rank": "4-D", "key": "no array named"}
    for name, arrays in bad.items():
        p = tmp_path / f"{name}.npz"
        np.savez(p, **arrays)
        assert_user_error(run_cli("compile", model, "-o", out, "--calib", p), expect[name])
        assert not out.exists()
    p = tmp_path / "broken.npz"
    p.write_bytes(b"not a zip")
    assert_user_error(run_cli("compile", model, "-o", out, "--calib", p), "npz")
    assert not out.exists()
    assert not list(tmp_path.glob(".intq-*"))


def test_bits_file_mixed_precision_and_unknown_layer(tmp_path, calib):
    fg = float_graph(MODELS / "resnet.onnx")
    layers = [n.name for n in fg.nodes if n.op in ("Conv", "Linear")]
    table = {layers[0]: 4, layers[1]: 8, layers[2]: 4}
    ig, _, _ = compile_model(MODELS / "resnet.onnx", calib, QuantConfig(bits=table))
    got = {r["name"]: r["w_bits"] for r in cost_table(ig)["layers"]}
    assert all(got[k] == v for k, v in table.items())
    with pytest.raises(IntqError, match="unknown layers: nope"):
        compile_model(MODELS / "resnet.onnx", calib, QuantConfig(bits={"nope": 4}))


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_calibration_methods(calib, digits_test, method):
    x, y = digits_test
    ig, fg, _ = compile_model(MODELS / "inception.onnx", calib,
                              QuantConfig(default_bits=4, calib_method=method))
    li = run_integer(ig, x)[0]
    assert (li.argmax(1) == y).mean() > 0.9


def test_pot_profile_uses_pure_shifts(calib, digits_test):
    x, y = digits_test
    ig, fg, _ = compile_model(MODELS / "resnet.onnx", calib, QuantConfig(profile="pot"))
    bs = np.concatenate([ig.constants[n].ravel() for n in ig.constants if n.endswith(".b")])
    assert set(np.unique(bs)) <= {0} | {1 << k for k in range(31)}
    assert (run_integer(ig, x)[0].argmax(1) == y).mean() > 0.9


def test_cli_compile_run_eval_report(tmp_path):
    out = tmp_path / "m.intq"
    proc = run_cli("compile", MODELS / "mobilenet.onnx", "-o", out, "--calib",
                   MODELS / "digits_calib.npz", "--bits", "4")
    assert proc.returncode == 0, proc.stderr
    x = np.load(MODELS / "digits_test.npz")["x"][:5]
    np.save(tmp_path / "x.npy", x)
    assert run_cli("run", out, tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--int").returncode == 0
    art = load_artifact(out)
    assert np.array_equal(np.load(tmp_path / "y.npy"), run_integer(art.integer, x)[0])
    proc = run_cli("eval", out, "--data", MODELS / "digits_test.npz", "--json")
    res = json.loads(proc.stdout)
    assert res["images"] == 360 and 0.9 < res["int_top1"] <= 1
    proc = run_cli("report", out, "--json")
    rep = json.loads(proc.stdout)
    assert rep["card"]["mixed_precision"] and rep["totals"]["size_mb"] > 0


def test_quantization_card_declares_feature_maps_and_accuracy_drop():
    """The largest feature map of the digits ResNet is a full-resolution INT32 accumulator:
    16 channels x 16 x 16 x 4 bytes. The drop is baseline minus quantized top-1."""
    from intq.report import quantization_card

    x = np.load(MODELS / "digits_calib.npz")["x"]
    ig, _, info = compile_model(MODELS / "resnet.onnx", x, QuantConfig(default_bits=8))
    card = quantization_card(ig, {**info, "accuracy": {"float_top1": 0.99, "int_top1": 0.98}})
    assert card["feature_map_bytes"]["max_bytes"] == 16 * 16 * 16 * 4
    assert 0 < card["feature_map_bytes"]["mean_bytes"] < card["feature_map_bytes"]["max_bytes"]
    assert card["top1_drop"] == pytest.approx(0.01)
    assert "uniform" in card["method"] and card["first_last_layer_bits"] == ["W8A8", "W8A8"]
    assert card["layers_per_bit_width"] == {"W8A8": 10}
    assert quantization_card(ig, info)["top1_drop"] is None


# HAWQ-V3 Table 1: (size MB, GBOPS) at INT8 and at INT4 with first and last layers at 8.
HAWQ_TABLE1 = {"resnet18": {8: (11.1, 116), 4: (5.8, 34)},
               "resnet50_v1": {8: (24.5, 247), 4: (13.1, 67)}}
# One cell misses 2%: ResNet18 INT4 BOPS counts to 34.71 G (conv1 0.118 G MACs x 64 + fc
# 0.0005 G x 64 + the rest 1.6955 G x 16); Table 1 prints 34. The same count gives the
# table's other three BOPS to 0.7% (116.1, 246.9, 67.5), so the convention is the same and
# the printed 34 is the outlier. The paper disagrees with itself here: its Table 2 gives the
# same ResNet18 as 11.2 MB / 114 G at INT8 and 5.6 MB / 28 G at INT4. We keep our exact
# count and allow 2.5% for that cell only.
TOLERANCE = {("resnet18", 4, "bops"): 0.025}


@pytest.mark.parametrize("name", sorted(HAWQ_TABLE1))
def test_report_reproduces_hawq_table1(full_size_graphs, name):
    fg = full_size_graphs[name][0]
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)
    cal = Calibration(fg, x)
    for bits, (size, bops) in HAWQ_TABLE1[name].items():
        totals = cost_table(lower_to_integer(fg, cal, QuantConfig(default_bits=bits)))["totals"]
        assert abs(totals["size_mb"] - size) / size < TOLERANCE.get((name, bits, "size"), 0.02)
        assert abs(totals["bops_g"] - bops) / bops < TOLERANCE.get((name, bits, "bops"), 0.02)


@pytest.mark.parametrize("residual_bits", [8, 32])
@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_residual_stream_widths(calib, digits_test, name, residual_bits):
    x, _ = digits_test
    ig, fg, _ = compile_model(MODELS / f"{name}.onnx", calib, QuantConfig(residual_bits=residual_bits))
    validate_integer_graph(ig)
    wide = {v.dtype for v in ig.values.values() if v.dtype.endswith(str(residual_bits))}
    assert wide, "no tensor at the residual width"
    li = dequantize(run_integer(ig, x)[0], ig.metadata["outputs"][ig.outputs[0]])
    assert cosine(li, run_float(fg, x)[0]) > 0.99


@pytest.mark.parametrize("bits,narrow", [(4, True), (8, True), (8, False), (16, False), (32, False)])
def test_activation_qparams_rules(bits, narrow):
    from intq.quant.scheme import activation_qparams

    relu = activation_qparams(0.0, 3.0, bits, "hawq", narrow)
    if bits < 32:
        assert not relu.signed and relu.zero_point == 0 and relu.qmax * relu.scale == pytest.approx(3.0)
    else:
        assert relu.signed and relu.zero_point == 0
    asym = activation_qparams(-1.0, 3.0, bits, "hawq", narrow)
    assert asym.signed == (not narrow)
    assert asym.qmin < asym.zero_point < asym.qmax
    # 0.0 is exactly representable, and both ends of the range are covered.
    assert asym.scale * (asym.qmin - asym.zero_point) <= -1.0 + asym.scale
    assert asym.scale * (asym.qmax - asym.zero_point) >= 3.0 - asym.scale
    if bits == 32:
        assert asym.zero_point == 0


def test_fixed_batch_model_compiles_and_evaluates(tmp_path):
    """A model exported with batch 4 calibrates and evaluates in batches of 4 (360 = 90 x 4,
    and 10 images leave a padded last batch)."""
    import torch
    from conftest import export_torch
    from models.zoo import DigitsMobileNetV2

    net = DigitsMobileNetV2()
    net.load_state_dict(torch.load(MODELS / "mobilenet.pt"))
    path = tmp_path / "fixed.onnx"
    path.write_bytes(export_torch(net, torch.zeros(4, 1, 16, 16)).SerializeToString())
    out = tmp_path / "fixed.intq"
    assert run_cli("compile", path, "-o", out, "--calib", MODELS / "digits_calib.npz").returncode == 0
    d = np.load(MODELS / "digits_test.npz")
    np.savez(tmp_path / "ten.npz", x=d["x"][:10], y=d["y"][:10])
    proc = run_cli("eval", out, "--data", tmp_path / "ten.npz", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"] == 10
    card = json.loads(run_cli("report", out, "--json").stdout)["card"]
    assert card["calibration"]["data"].endswith("digits_calib.npz")


def test_fixed_batch_calibration_takes_any_count_and_ignores_padding():
    """Ten images through a batch-4 model: the padded last batch (copies of image 8) must
    neither drop images 8 and 9 nor count its padding. Image 9 is made the brightest, so
    dropping it lowers the max; the counts show the padding is not sampled."""
    import torch
    from conftest import export_torch
    from models.zoo import DigitsResNet

    net = DigitsResNet()
    net.load_state_dict(torch.load(MODELS / "resnet.pt"))
    fixed = float_graph(export_torch(net, torch.zeros(4, 1, 16, 16)))
    dynamic = float_graph(export_torch(net, torch.zeros(4, 1, 16, 16), dynamic_batch=True))
    x = np.load(MODELS / "digits_calib.npz")["x"][:10].copy()
    x[9] *= 3
    a, b = Calibration(fixed, x), Calibration(dynamic, x)
    ia, ib = fixed.inputs[0], dynamic.inputs[0]
    assert a.hi[ia] == b.hi[ib] == x.max() and a.lo[ia] == b.lo[ib] == x.min()
    assert a.samples[ia].size == b.samples[ib].size == x.size
    oa, ob = fixed.outputs[0], dynamic.outputs[0]
    assert np.isclose(a.hi[oa], b.hi[ob], rtol=1e-5) and np.isclose(a.lo[oa], b.lo[ob], rtol=1e-5)


@pytest.mark.parametrize("name,res", [("inception_v3", 107), ("mobilenet_v2", 96), ("resnet50_v1", 96)])
def test_full_size_architectures_lower_and_run(name, res):
    """InceptionV3 (pools with count_include_pad, four-way concats), MobileNetV2 (linear
    bottlenecks, ReLU6) and ResNet50 lower to integer-only graphs that track the float
    model. Random weights and inputs, so the bar is agreement, not accuracy."""
    fg = float_graph(export_full_size(name, res))
    x = np.random.default_rng(0).standard_normal((4, 3, res, res)).astype(np.float32)
    ig = lower_to_integer(fg, Calibration(fg, x), QuantConfig(default_bits=8))
    validate_integer_graph(ig)
    li = dequantize(run_integer(ig, x[:2])[0], ig.metadata["outputs"][ig.outputs[0]])
    assert cosine(li, run_float(fg, x[:2])[0]) > 0.98


@pytest.mark.parametrize("name,res", [("squeezenet1_0", 96), ("shufflenet_v2_x1_0", 96),
                                      ("densenet121", 64), ("mobilenet_v3_large", 96),
                                      ("efficientnet_b0", 96)])
def test_classic_architectures_keep_logit_cosine_at_int8(name, res):
    """SqueezeNet (fire concats), ShuffleNetV2 (channel split and shuffle), DenseNet-121
    (pre-activation BatchNorms as IntAffine), MobileNetV3-Large (hard-swish tables,
    SE products) and EfficientNet-B0 (SiLU tables, sigmoid SE gates), seeded random weights
    and sane BN statistics, fixed batch 2: INT8 logits keep cosine > 0.99 with float."""
    from models import zoo

    fg = float_graph(export_full_size(name, res, zoo.sane_random_batchnorm))
    x = np.random.default_rng(0).standard_normal((4, 3, res, res)).astype(np.float32)
    ig = lower_to_integer(fg, Calibration(fg, x), QuantConfig(default_bits=8))
    validate_integer_graph(ig)
    li = dequantize(run_integer(ig, x[:2])[0], ig.metadata["outputs"][ig.outputs[0]])
    lf = run_float(fg, x[:2])[0]
    assert min(cosine(a, b) for a, b in zip(li, lf)) > 0.99


def test_unwritable_outputs_fail_before_any_work(tmp_path, artifact_file):
    missing = tmp_path / "no" / "such" / "m.intq"
    assert_user_error(run_cli("compile", MODELS / "resnet.onnx", "-o", missing, "--calib",
                              MODELS / "digits_calib.npz"), "does not exist")
    assert_user_error(run_cli("compile", MODELS / "resnet.onnx", "-o", tmp_path, "--calib",
                              MODELS / "digits_calib.npz"), "is a directory")
    np.save(tmp_path / "x.npy", np.load(MODELS / "digits_test.npz")["x"][:2])
    assert_user_error(run_cli("run", artifact_file, tmp_path / "x.npy", "-o", missing), "does not exist")


def test_atomic_write_leaves_old_file_and_no_temporary_on_failure(tmp_path):
    from intq.artifact import atomic_write

    target = tmp_path / "out.npy"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and not list(tmp_path.glob(".intq-*"))
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and not list(tmp_path.glob(".intq-*"))
