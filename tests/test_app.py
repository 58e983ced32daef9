"""The application layer: `intq run` streams a memory-mapped input in batches (memory one
batch's, not the file's), every command and `Model.evaluate` read the same data sources
(arrays, .npy, .npz, image folders), qat and allocate take image folders, and a missing
matplotlib costs only the plots, in one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

import intq
from conftest import MODELS, make_model
from intq.validate import run_memory

Image = pytest.importorskip("PIL.Image")


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "intq", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("intq: error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def tiny_224_model():
    """Conv 3->4 (stride 2) + ReLU + global pool + linear: an ImageNet-sized input whose
    run memory per image (6 MiB, mostly the convolution's im2col) is what makes a whole
    file of them too big for one run."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "L"], ["y"], transB=1)]
    return make_model(nodes, [("x", ["N", 3, 224, 224])], [("y", None)],
                      {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                       "L": rng.standard_normal((10, 4)).astype(np.float32)})


def test_run_streams_a_file_that_one_run_could_not_hold(tmp_path):
    """256 images at 224 x 224 under a memory limit that a batch of 32 fits and a run of
    the whole file exceeds: the default run streams and gives exactly the integers (and
    the dequantized logits) of one run over all 256 images under a high limit."""
    rng = np.random.default_rng(1)
    model = intq.compile(tiny_224_model(), rng.random((8, 3, 224, 224), np.float32))
    art = tmp_path / "m.intq"
    model.save(art)
    x = tmp_path / "x.npy"
    np.save(x, rng.standard_normal((256, 3, 224, 224)).astype(np.float32))
    limit = 512 << 20
    assert x.stat().st_size < limit and run_memory(model.integer, 32) < limit < run_memory(model.integer, 256)
    small = {"INTQ_MEMORY_LIMIT": str(limit)}
    # One go under the small limit: refused before anything is written.
    proc = run_cli("run", art, x, "-o", tmp_path / "whole.npy", "--batch", "256", env=small)
    assert_user_error(proc, "batch of 256", "memory limit")
    assert not (tmp_path / "whole.npy").exists()
    for flag in ([], ["--int"]):
        kind = "int" if flag else "float"
        want, got = tmp_path / f"want.{kind}.npy", tmp_path / f"got.{kind}.npy"
        proc = run_cli("run", art, x, "-o", want, "--batch", "256", *flag, env={"INTQ_MEMORY_LIMIT": "8G"})
        assert proc.returncode == 0, proc.stderr
        proc = run_cli("run", art, x, "-o", got, *flag, env=small)  # default --batch
        assert proc.returncode == 0, proc.stderr
        a, b = np.load(want), np.load(got)
        assert a.shape == (256, 10) and a.dtype == (np.int32 if flag else np.float32)
        assert np.array_equal(a, b)
        assert got.read_bytes() == want.read_bytes()  # the streamed header is np.save's
        assert len(np.unique(a[:, 0])) > 1  # not a constant output


def test_run_batches_equal_one_run_and_refuse_bad_input_in_one_line(tmp_path):
    """An odd batch size (the last batch shorter) gives np.save's bytes of one whole run;
    a wrong shape, an empty file and a bad --batch are one line with no output."""
    art = tmp_path / "r.intq"
    model = intq.compile(MODELS / "resnet.onnx", MODELS / "digits_calib.npz", bits=4)
    model.save(art)
    x = np.load(MODELS / "digits_test.npz")["x"][:45]
    np.save(tmp_path / "x.npy", x)
    proc = run_cli("run", art, tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--int", "--batch", "7")
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "y.npy"), model.run(x, integer=True).astype(np.int32))
    np.save(tmp_path / "bad.npy", x[:, :, :8])
    np.save(tmp_path / "empty.npy", x[:0])
    for name, extra, frag in [("bad.npy", [], "the model expects"), ("empty.npy", [], "no images"),
                              ("x.npy", ["--batch", "0"], "--batch must be at least 1")]:
        proc = run_cli("run", art, tmp_path / name, "-o", tmp_path / "o.npy", *extra)
        assert_user_error(proc, frag)
    assert not (tmp_path / "o.npy").exists()


def save_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(path)


def png_folder(folder, x, y=None):
    """The digits as 8-bit PNGs (class subfolders when labelled), and the arrays the folder
    decodes to under --preprocess none."""
    for i, img in enumerate(x):
        save_png(folder / (f"{y[i]}/{i:03d}.png" if y is not None else f"{i:03d}.png"), img)
    return (np.round(x * 255).astype(np.uint8).astype(np.float32) / 255.0).astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    d, c = np.load(MODELS / "digits_test.npz"), np.load(MODELS / "digits_calib.npz")
    return d["x"], d["y"], c["x"]


def test_model_evaluate_takes_arrays_npz_and_folders_alike(tmp_path, digits):
    x, y, calib = digits
    model = intq.compile(MODELS / "resnet.onnx", MODELS / "digits_calib.npz")
    assert model.evaluate(MODELS / "digits_test.npz") == model.evaluate(x, y)
    xf = png_folder(tmp_path / "test", x[:40], y[:40])
    order = np.argsort(y[:40], kind="stable")  # the folder lists class by class
    got = model.evaluate(tmp_path / "test", preprocess="none")
    assert got == model.evaluate(xf[order], y[:40][order]) and got["images"] == 40
    # compile's calibration folder is the same data as its arrays
    png_folder(tmp_path / "calib", calib[:32])
    from_folder = intq.compile(MODELS / "resnet.onnx", tmp_path / "calib", preprocess="none")
    from_arrays = intq.compile(MODELS / "resnet.onnx", png_folder(tmp_path / "unused", calib[:32]))
    assert np.array_equal(from_folder.run(x, integer=True), from_arrays.run(x, integer=True))


def labelled_sets(tmp_path, digits, n_train=60, n_eval=40):
    """The same digits as class-subfolder PNGs and as an .npz of what they decode to."""
    x, y, _ = digits
    xt = png_folder(tmp_path / "train", x[:n_train], y[:n_train])
    xe = png_folder(tmp_path / "eval", x[-n_eval:], y[-n_eval:])
    ot, oe = np.argsort(y[:n_train], kind="stable"), np.argsort(y[-n_eval:], kind="stable")
    np.savez(tmp_path / "train.npz", x=xt[ot], y=y[:n_train][ot])
    np.savez(tmp_path / "eval.npz", x=xe[oe], y=y[-n_eval:][oe])
    return tmp_path / "train", tmp_path / "eval"


def test_qat_takes_image_folders(tmp_path, digits):
    """--data, --calib and --eval-data as folders (labels from the class subfolders) train
    the same model as the .npz of the same images."""
    train, ev = labelled_sets(tmp_path, digits)
    outs = {}
    for kind, data, evd in (("folder", train, ev), ("npz", tmp_path / "train.npz", tmp_path / "eval.npz")):
        outs[kind] = tmp_path / f"{kind}.intq"
        proc = run_cli("qat", MODELS / "resnet.onnx", "--data", data, "--calib", data, "--eval-data", evd,
                       "-o", outs[kind], "--epochs", "1", "--batch", "32", "--preprocess", "none")
        assert proc.returncode == 0, proc.stderr
    a, b = intq.load(outs["folder"]), intq.load(outs["npz"])
    assert a.info["accuracy"]["int_top1"] == b.info["accuracy"]["int_top1"] > 0.5
    x = digits[0][:32]
    assert np.array_equal(a.run(x, integer=True), b.run(x, integer=True))
    # a folder without class subfolders has no labels to train on
    png_folder(tmp_path / "flat", digits[0][:4])
    proc = run_cli("qat", MODELS / "resnet.onnx", "--data", tmp_path / "flat", "-o", tmp_path / "o.intq",
                   "--epochs", "1", "--preprocess", "none")
    assert_user_error(proc, "no labels (no class subfolders)")


def test_allocate_takes_image_folders(tmp_path, digits):
    """--calib and --data as folders choose the same bits, from the same sensitivities, as
    the .npz files of the same images; --sweep --eval-data reads a folder too."""
    train, ev = labelled_sets(tmp_path, digits, n_train=32, n_eval=20)
    np.savez(tmp_path / "calib.npz", x=np.load(tmp_path / "train.npz")["x"])
    res = {}
    for kind, calib, data in (("folder", train, train),
                              ("npz", tmp_path / "calib.npz", tmp_path / "train.npz")):
        proc = run_cli("allocate", MODELS / "resnet.onnx", "--calib", calib, "--data", data,
                       "--max-size-mb", "50%", "--images", "32", "-o", tmp_path / f"{kind}.json",
                       "--preprocess", "none", "--json",
                       env={"INTQ_CACHE_DIR": str(tmp_path / f"cache-{kind}")})
        assert proc.returncode == 0, proc.stderr
        res[kind] = json.loads(proc.stdout)
    assert res["folder"]["bits"] == res["npz"]["bits"] and set(res["folder"]["bits"].values()) - {"w8a8"}
    assert res["folder"]["totals"] == res["npz"]["totals"]
    proc = run_cli("allocate", MODELS / "resnet.onnx", "--calib", train, "--max-size-mb", "50%",
                   "--images", "32", "-o", tmp_path / "s.json", "--sweep", tmp_path / "s.png",
                   "--eval-data", ev, "--preprocess", "none", "--json",
                   env={"INTQ_CACHE_DIR": str(tmp_path / "cache-folder")})
    assert proc.returncode == 0, proc.stderr
    assert all(0 <= p["top1"] <= 1 for p in json.loads(proc.stdout)["sweep"])


def test_plots_without_matplotlib_are_one_line_before_any_work(tmp_path):
    """matplotlib is optional (only the PNGs need it): asking for a plot without it is one
    line naming the extra, before anything is measured or written."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "matplotlib.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])}
    art = tmp_path / "m.intq"
    intq.compile(MODELS / "resnet.onnx", MODELS / "digits_calib.npz").save(art)
    proc = run_cli("verify", art, "--inputs", MODELS / "digits_test.npz", "--naive", "--plot",
                   tmp_path / "d.png", env=env)
    assert_user_error(proc, "--plot", "matplotlib", "intq[plot]")
    proc = run_cli("allocate", MODELS / "resnet.onnx", "--calib", MODELS / "digits_calib.npz",
                   "--max-size-mb", "50%", "-o", tmp_path / "b.json", "--sweep", tmp_path / "s.png",
                   env=env)
    assert_user_error(proc, "--sweep", "matplotlib")
    assert not any((tmp_path / p).exists() for p in ("d.png", "b.json", "s.png"))
    # without a plot, verify needs no matplotlib
    proc = run_cli("verify", art, "--inputs", MODELS / "digits_test.npz", "--images", "8", env=env)
    assert proc.returncode == 0, proc.stderr
