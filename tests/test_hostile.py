"""Hostile and damaged inputs: a changed artifact or ONNX model is refused in one line
(IntqError, exit 2), never half-run, never a traceback, and never allocates what its
declared sizes would need before they were checked."""
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS, make_model
from intq.errors import IntqError
from tools.fuzz_inputs import (ArtifactFuzzer, fuzz_artifacts, fuzz_onnx, pickled_npy,
                               resign, write_entries)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "intq", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("intq: error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


# Runs `intq ARGS` in a fresh interpreter and prints its exit code and how much its peak
# resident memory grew (MiB) while the command ran: imports come before the baseline.
MEASURE = """
import resource, sys
import numpy, intq.artifact, intq.cli, intq.reference, intq.pipeline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    rc = intq.cli.main(sys.argv[1:])
except MemoryError:
    rc = "MemoryError"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(rc, (after - before) // 1024)
"""


def cli_peak_mib(*args, env=None):
    proc = subprocess.run([sys.executable, "-c", MEASURE, *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    rc, grew = proc.stdout.split()[-2:]
    return rc, int(grew), proc.stderr


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory):
    """The two base artifacts (ResNet W4A4 with packed INT4 weights and residual adds;
    Inception INT8 with concats, average and max pools), compiled once."""
    return ArtifactFuzzer(str(tmp_path_factory.mktemp("fuzz")))


@pytest.fixture
def resnet_entries(fuzzer):
    return dict(fuzzer.bases[0][0])


def craft(entries, edit, path, signed=True):
    """An artifact file from `entries` after edit(manifest, arrays) changed the manifest
    dict and/or the arrays dict (key -> ndarray), checksums recomputed unless signed=False."""
    manifest = json.loads(entries["manifest.json"])
    arrays = {}
    edit(manifest, arrays)
    out = dict(entries, **{"manifest.json": json.dumps(manifest).encode()})
    for key, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        out[f"arrays/{key}.npy"] = buf.getvalue()
    write_entries(path, resign(out) if signed else out)
    return path


def nodes(m, op):
    return [n for n in m["integer_graph"]["nodes"] if n["op"] == op]


def constant(m, name):
    return m["integer_graph"]["constants"][name]["array"]


def set_pads(m, a):
    nodes(m, "IntConv")[0]["attrs"]["pads"] = [1 << 26] * 4


def set_multiplier(m, a):
    a[constant(m, nodes(m, "Requantize")[0]["inputs"][1])] = np.full(16, 1 << 31, np.int64)


def set_shift(m, a):
    a[constant(m, nodes(m, "Requantize")[0]["inputs"][2])] = np.full(16, 63, np.int64)


def set_bias(m, a):
    a[constant(m, nodes(m, "IntConv")[0]["inputs"][2])] = np.full(16, 2**31 - 1, np.int32)


def swap_first_nodes(m, a):
    ns = m["integer_graph"]["nodes"]
    ns[1], ns[2] = ns[2], ns[1]


def edit_attr(op, key, value, index=0):
    def edit(m, a):
        nodes(m, op)[index]["attrs"][key] = value
    return edit


def edit_value(name, field, value):
    def edit(m, a):
        m["integer_graph"]["values"][name][field] = value
    return edit


def unknown_op(m, a):
    nodes(m, "IntAdd")[0]["op"] = "Eval"


def lo_above_hi(m, a):
    requant = nodes(m, "Requantize")[1]
    requant["attrs"].update(lo=9, hi=8)  # both inside uint4


def rewire(m, a):
    # The first conv reads a tensor that is only computed later.
    nodes(m, "IntConv")[0]["inputs"][0] = nodes(m, "IntAdd")[0]["outputs"][0]


CRAFTED = {
    "pad 2^26 (the 16 PiB case)": (set_pads, "pads"),
    "stride 0": (edit_attr("IntConv", "strides", [0, 1]), "strides"),
    "dilation -1": (edit_attr("IntConv", "dilations", [1, -1]), "dilations"),
    "groups 3": (edit_attr("IntConv", "groups", 3), "groups"),
    "string stride": (edit_attr("IntConv", "strides", ["1", 1]), "strides"),
    "unknown dtype": (edit_attr("Requantize", "dtype", "int3"), "dtype"),
    "float dtype": (edit_value("/conv1/Conv_output_0", "dtype", "float32"), "not integer-only"),
    "multiplier 2^31": (set_multiplier, "multiplier"),
    "shift 63": (set_shift, "shift"),
    "clamp outside dtype": (edit_attr("Requantize", "hi", 1 << 20), "clamp bound"),
    "clamp lo > hi": (lo_above_hi, "lo 9 > hi 8"),
    "zero point outside dtype": (edit_attr("Requantize", "out_zero_point", -1), "out_zero_point"),
    # Found by the fuzzer once it ran the Numba backend on accepted artifacts: the fused
    # epilogue has no accumulator zero point, the reference subtracted it.
    "accumulator zero point": (edit_attr("Requantize", "in_zero_point", -1), "accumulators have zero point 0"),
    "accumulator overflow": (set_bias, "overflow"),
    "read before written": (rewire, "no earlier node"),
    "nodes out of order": (swap_first_nodes, "no earlier node"),
    "unknown op": (unknown_op, "unknown op"),
    "declared shape": (edit_value("/conv1/Conv_output_0", "shape", [None, 16, 16, 15]), "declared"),
    "float attribute": (edit_attr("IntConv", "x_zero_point", 0.5), "not integer-only"),
    "unknown attribute": (edit_attr("IntConv", "exec", "rm -rf"), "unknown attribute"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_artifact_with_matching_checksums_is_refused_by_validation(tmp_path, resnet_entries, case):
    edit, fragment = CRAFTED[case]
    path = craft(resnet_entries, edit, tmp_path / "crafted.intq")
    from intq.artifact import load_artifact

    with pytest.raises(IntqError) as e:
        load_artifact(path)
    assert fragment in str(e.value) and "checksum" not in str(e.value)


def test_changed_manifest_without_new_checksums_is_corrupt(tmp_path, resnet_entries):
    path = craft(resnet_entries, edit_attr("Requantize", "hi", 14), tmp_path / "a.intq", signed=False)
    assert_user_error(run_cli("report", path), "corrupt artifact", "manifest checksum")


def test_artifact_mutations_without_new_checksums_are_all_refused(fuzzer):
    rng = np.random.default_rng(1)
    outcomes = [fuzzer.case(i, rng, signed=False) for i in range(120)]
    assert all(o == "refused" for o, _, _ in outcomes), [x for x in outcomes if x[0] != "refused"]


def test_artifact_mutations_with_new_checksums_never_crash(fuzzer):
    """A forger recomputes every checksum: each case is refused or runs cleanly (the
    reference executor's own range checks would turn a violated guarantee into a bug)."""
    rng = np.random.default_rng(2)
    outcomes = [fuzzer.case(i, rng, signed=True) for i in range(200)]
    assert not [x for x in outcomes if x[0] == "other"]
    assert sum(o == "refused" for o, _, _ in outcomes) > 100


def test_onnx_mutations_never_crash(tmp_path):
    counts = fuzz_onnx(90, seed=0, workdir=str(tmp_path))
    assert counts["other"] == 0, counts
    assert counts["compiled"] > 0 and counts["refused"] > 0


def test_fuzz_script_counts(tmp_path):
    counts = fuzz_artifacts(20, seed=5, workdir=str(tmp_path))
    assert sum(counts.values()) == 20 and counts[False, "refused"] == 10


def test_old_format_version_asks_to_recompile(tmp_path, resnet_entries):
    def v1(m, a):
        m["version"] = 1
        m.pop("manifest_sha256", None)
    path = craft(resnet_entries, v1, tmp_path / "old.intq", signed=False)
    assert_user_error(run_cli("report", path), "version 1", "recompile")
    assert_user_error(run_cli("export", path, "-o", tmp_path / "old.onnx"), "version 1", "recompile")
    assert not (tmp_path / "old.onnx").exists()


def test_huge_pad_is_refused_before_allocation(tmp_path, resnet_entries):
    """The pad that made numpy ask for 16.4 PiB: refused by validation, memory flat."""
    path = craft(resnet_entries, set_pads, tmp_path / "pad.intq")
    x = tmp_path / "x.npy"
    np.save(x, np.load(MODELS / "digits_test.npz")["x"][:2])
    rc, grew, err = cli_peak_mib("run", path, x, "-o", tmp_path / "y.npy")
    assert rc == "2" and "pads" in err and "Traceback" not in err, err
    assert grew < 64, grew


@pytest.mark.parametrize("member", ["arrays/i00000.npy", "manifest.json"])
def test_zip_bomb_is_refused_before_decompression(tmp_path, resnet_entries, member):
    """256 MiB of zeros (256 KiB compressed) where a small array or the manifest belongs."""
    path = tmp_path / "bomb.intq"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        if member == "manifest.json":
            with z.open(member, "w", force_zip64=True) as f:
                f.write(b"{" + b" " * ((256 << 20) - 2) + b"}")
        for name, blob in resnet_entries.items():
            if name == member:
                if member != "manifest.json":
                    with z.open(name, "w", force_zip64=True) as f:
                        for _ in range(256):
                            f.write(bytes(1 << 20))
            else:
                z.writestr(name, blob)
    assert path.stat().st_size < 4 << 20
    rc, grew, err = cli_peak_mib("report", path)
    assert rc == "2" and "Traceback" not in err and "bytes" in err, err
    assert grew < 64, grew


def test_pickled_array_is_refused_without_unpickling(tmp_path, resnet_entries):
    marker = tmp_path / "pickle-ran"
    entries = dict(resnet_entries)
    entries["arrays/i00000.npy"] = pickled_npy(str(marker))
    manifest = json.loads(entries["manifest.json"])
    for c in manifest["integer_graph"]["constants"].values():
        if c["array"] == "i00000":
            c["numpy_dtype"] = "|O"
    entries["manifest.json"] = json.dumps(manifest).encode()
    write_entries(tmp_path / "p.intq", resign(entries))
    assert_user_error(run_cli("report", tmp_path / "p.intq"), "invalid artifact")
    # Even declared as it is stored, an object array is never handed to numpy.
    entries["manifest.json"] = resnet_entries["manifest.json"]
    write_entries(tmp_path / "q.intq", resign(entries))
    assert_user_error(run_cli("report", tmp_path / "q.intq"), "holds object")
    assert not marker.exists()


def test_run_is_refused_above_the_memory_limit(tmp_path, fuzzer):
    path = tmp_path / "m.intq"
    write_entries(path, fuzzer.bases[0][0])
    x = tmp_path / "x.npy"
    np.save(x, np.repeat(np.load(MODELS / "digits_test.npz")["x"][:1], 1000, axis=0))
    proc = run_cli("run", path, x, "-o", tmp_path / "y.npy", "--batch", "1000", env={"INTQ_MEMORY_LIMIT": "64M"})
    assert_user_error(proc, "batch of 1000", "memory limit of 64.0 MiB", "INTQ_MEMORY_LIMIT")
    assert not (tmp_path / "y.npy").exists()
    proc = run_cli("run", path, x, "-o", tmp_path / "y.npy", env={"INTQ_MEMORY_LIMIT": "lots"})
    assert_user_error(proc, "INTQ_MEMORY_LIMIT")


def test_check_run_memory_counts_from_declared_shapes(fuzzer, tmp_path):
    from intq.artifact import load_artifact
    from intq.validate import check_run_memory

    path = tmp_path / "m.intq"
    write_entries(path, fuzzer.bases[0][0])
    ig = load_artifact(path).integer
    one = check_run_memory(ig, 1)
    assert check_run_memory(ig, 64) > 32 * one
    with pytest.raises(IntqError, match=r"batch of 10000000000 needs .* PiB"):
        check_run_memory(ig, 10**10)
    with pytest.raises(IntqError, match="over the memory limit"):
        check_run_memory(ig, 1, limit=one - 1)


def test_shape_arithmetic_cannot_wrap_around():
    """64 * 5 * 57646075230342349 = 64 * (2^58 + 1) = 2^64 + 64: int64 products call this
    reshape of 64 features valid."""
    from intq.ops.shape_ops import reshape_target

    with pytest.raises(IntqError):
        reshape_target((None, 64), [0, 64, 5, 57646075230342349])


def test_every_registered_op_has_a_validation_rule():
    from intq.ops import known_ops
    from intq.validate import ARITY, SCHEMAS

    assert set(SCHEMAS) == set(known_ops()) == set(ARITY)


# -- ONNX -------------------------------------------------------------------------------
def external_model(folder, location):
    """A Conv whose weight lives in an external file at `location` (relative to folder)."""
    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=str(location))
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("where", ["parent", "absolute", "link"])
def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path, where):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(36, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "w.bin").write_bytes(secret.read_bytes())
    assert run_cli("inspect", external_model(folder, "w.bin")).returncode == 0  # inside: fine
    location = {"parent": "../secret.bin", "absolute": secret, "link": "link.bin"}[where]
    if where == "link":
        (folder / "link.bin").symlink_to(secret)
    assert_user_error(run_cli("inspect", external_model(folder, location)), "outside the model's folder")


def test_onnx_external_data_larger_than_declared_is_refused_before_reading(tmp_path):
    (tmp_path / "w.bin").write_bytes(bytes(64 << 20))   # the weight needs 144 bytes
    rc, grew, err = cli_peak_mib("inspect", external_model(tmp_path, "w.bin"))
    assert rc == "2" and "would read" in err, err
    assert grew < 32


def test_onnx_computed_shape_is_refused_before_folding(tmp_path):
    """ConstantOfShape(Mul(s, 2)): shape inference cannot see the 256 MiB it asks for, the
    constant folder checks it before evaluating."""
    nodes = [helper.make_node("Mul", ["s", "two"], ["s2"]),
             helper.make_node("ConstantOfShape", ["s2"], ["big"]),
             helper.make_node("Add", ["x", "big"], ["y"])]
    init = {"s": np.array([1, 1, 4096, 8192], np.int64), "two": np.array([2, 1, 1, 1], np.int64)}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list("nchw"))],
                              [numpy_helper.from_array(v, k) for k, v in init.items()])
    path = tmp_path / "computed.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    rc, grew, err = cli_peak_mib("inspect", path, env={"INTQ_MEMORY_LIMIT": "64M"})
    assert rc == "2" and "memory limit" in err, err
    assert grew < 64, grew


def test_onnx_absurd_tensor_is_refused_before_allocation(tmp_path):
    """ConstantOfShape asking for 2^46 floats (256 TiB): refused from its inferred shape."""
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["big"]),
             helper.make_node("Add", ["x", "big"], ["y"])]
    model = make_model(nodes, [("x", [1, 1, 8, 8])], [("y", None)],
                       {"s": np.array([1 << 20, 1 << 20, 8, 8], np.int64)})
    path = tmp_path / "big.onnx"
    path.write_bytes(model.SerializeToString())
    rc, grew, err = cli_peak_mib("inspect", path)
    assert rc == "2" and "memory limit" in err and "Traceback" not in err, err
    assert grew < 64


def _huge_npy(declared_shape) -> bytes:
    """An .npy whose header declares `declared_shape` float32 but holds 16 bytes of data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": declared_shape})
    return buf.getvalue() + bytes(16)


def test_input_arrays_declaring_huge_shapes_are_refused_before_reading(tmp_path):
    """`intq run` on an .npy, and compile on an .npz, whose header declares ~1 PiB: one line
    naming the memory limit, not a MemoryError traceback."""
    shape = (1 << 36, 1, 16, 16)
    npy = tmp_path / "x.npy"
    npy.write_bytes(_huge_npy(shape))
    art = tmp_path / "m.intq"
    assert run_cli("compile", MODELS / "resnet.onnx", "-o", art, "--calib",
                   MODELS / "digits_calib.npz").returncode == 0
    proc = run_cli("run", art, npy, "-o", tmp_path / "y.npy")
    assert_user_error(proc, "input", "memory limit", str(shape))
    npz = tmp_path / "calib.npz"
    with zipfile.ZipFile(npz, "w") as z:
        z.writestr("x.npy", _huge_npy(shape))
    proc = run_cli("compile", MODELS / "resnet.onnx", "-o", tmp_path / "m2.intq", "--calib", npz)
    assert_user_error(proc, "calibration data", "memory limit")
    assert not (tmp_path / "y.npy").exists() and not (tmp_path / "m2.intq").exists()


def test_softmax_over_the_batch_axis_is_refused_in_one_line(tmp_path):
    """Found by the ONNX fuzzer: a Softmax whose axis was changed to 0 (the dynamic batch)
    crashed lowering with a TypeError; it is an unsupported form, said in one line."""
    w = np.ones((4, 1, 3, 3), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Softmax", ["c"], ["y"], axis=0)]
    model = make_model(nodes, [("x", ["N", 1, 8, 8])], [("y", None)], {"w": w})
    path = tmp_path / "softmax0.onnx"
    path.write_bytes(model.SerializeToString())
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).random((4, 1, 8, 8), np.float32))
    proc = run_cli("compile", path, "-o", tmp_path / "m.intq", "--calib", calib)
    assert_user_error(proc, "Softmax", "batch axis")


def test_input_array_with_a_malformed_header_is_refused_in_one_line(tmp_path):
    """numpy parses an .npy header as a Python literal: a broken one raised tokenize's
    TokenError through `intq run` as a traceback."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": (1, 1, 16, 16)})
    head = buf.getvalue().replace(b"'shape'", b"'shape(")
    npy = tmp_path / "x.npy"
    npy.write_bytes(head + bytes(1024))
    art = tmp_path / "m.intq"
    assert run_cli("compile", MODELS / "resnet.onnx", "-o", art, "--calib",
                   MODELS / "digits_calib.npz").returncode == 0
    assert_user_error(run_cli("run", art, npy, "-o", tmp_path / "y.npy"), "not a readable .npy array")
    assert not (tmp_path / "y.npy").exists()


def _flip_inside(path, member_index=1, count=24):
    """Copies of the zip at `path`, each with one byte of one member's compressed data
    flipped (the loaders' own mutations change members, not their deflate stream)."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[member_index]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    step = max(1, info.compress_size // count)
    for k in range(start, start + info.compress_size, step):
        yield data[:k] + bytes([data[k] ^ 0x5A]) + data[k + 1:]


def test_damaged_deflate_streams_are_refused_in_one_line(tmp_path, resnet_entries):
    """Found in review: a byte flipped inside an artifact's or an .npz's compressed data
    raised zlib.error through the loaders."""
    from intq.artifact import load_artifact
    from intq.data import load_npz_images

    art = tmp_path / "m.intq"
    write_entries(art, resnet_entries)
    npz = tmp_path / "x.npz"
    np.savez_compressed(npz, x=np.random.default_rng(0).random((8, 1, 16, 16), np.float32))
    for src, load in ((art, load_artifact), (npz, load_npz_images)):
        for i, blob in enumerate(_flip_inside(src, member_index=1 if src is art else 0)):
            bad = tmp_path / f"bad{i}{src.suffix}"
            bad.write_bytes(blob)
            try:
                load(bad)
            except IntqError as e:
                assert "\n" not in str(e)


def test_npz_member_stored_without_npy_suffix_loads(tmp_path):
    """numpy lists a member stored as plain `x` like `x.npy`; the header check opened
    `x.npy` and raised KeyError."""
    from intq.data import load_npz_images

    x = np.random.default_rng(0).random((2, 1, 4, 4), np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    path = tmp_path / "plain.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x", buf.getvalue())
    got, _ = load_npz_images(path)
    assert np.array_equal(got, x)


def test_onnx_model_without_a_real_input_is_refused_in_one_line(tmp_path):
    from intq.data import onnx_input_chw

    w = numpy_helper.from_array(np.ones((1, 1, 4, 4), np.float32), name="w")
    graph = helper.make_graph([helper.make_node("Relu", ["w"], ["y"])], "g",
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])], [w])
    path = tmp_path / "noinput.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    with pytest.raises(IntqError, match="no input besides its initializers"):
        onnx_input_chw(path)
