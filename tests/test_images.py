"""Image folders as --calib / --data: the three named preprocessings on images whose
result is known exactly, class subfolders as labels, and the CLI end to end on the digits
written out as PNG files (8-bit pixels, so top-1 matches the .npz evaluation closely)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import MODELS
from intq.errors import IntqError

Image = pytest.importorskip("PIL.Image")
from intq.images import image_batches, list_images, load_image  # noqa: E402


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def test_preprocessings_on_known_images(tmp_path):
    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0, 128, 255
    save(tmp_path / "flat.png", rgb)
    a = load_image(tmp_path / "flat.png", (3, 224, 224), "imagenet")
    assert a.shape == (3, 224, 224) and a.dtype == np.float32
    want = (np.array([0, 128, 255]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    assert np.allclose(a[:, 0, 0], want, atol=1e-6) and np.ptp(a, axis=(1, 2)).max() == 0
    b = load_image(tmp_path / "flat.png", (3, 299, 299), "inception")
    assert b.shape == (3, 299, 299) and np.allclose(b[:, 0, 0], 2 * np.array([0, 128, 255]) / 255 - 1, atol=1e-6)
    # Center crop: a marker in the exact center survives, the border does not.
    img = np.zeros((256, 320, 3), np.uint8)
    img[128, 160] = 255
    save(tmp_path / "dot.png", img)
    c = load_image(tmp_path / "dot.png", (3, 224, 224), "inception")
    assert c.max() > -1 and c[:, 0, 0].max() == -1
    grey = np.arange(16 * 16).reshape(16, 16) % 256
    save(tmp_path / "g.png", grey)
    d = load_image(tmp_path / "g.png", (1, 16, 16), "none")
    assert np.array_equal(d[0], (grey / 255).astype(np.float32))
    with pytest.raises(IntqError, match="expects 8x8"):
        load_image(tmp_path / "g.png", (1, 8, 8), "none")


def test_class_subfolders_are_labels_in_sorted_order(tmp_path):
    for cls, n in (("cat", 2), ("ant", 3)):
        for i in range(n):
            save(tmp_path / cls / f"{i}.png", np.full((8, 8), i))
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    files, labels = list_images(tmp_path)
    assert labels == [0, 0, 0, 1, 1] and all(f.endswith(".png") for f in files)
    batches = list(image_batches(tmp_path, (1, 8, 8), "none", batch=2))
    assert [len(x) for x, _ in batches] == [2, 2, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(IntqError, match="no images"):
        list_images(tmp_path / "empty")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "intq", *map(str, args)], capture_output=True, text=True)


def test_cli_compile_and_eval_from_image_folders(tmp_path):
    d = np.load(MODELS / "digits_test.npz")
    calib = np.load(MODELS / "digits_calib.npz")["x"][:64]
    for i, img in enumerate(calib):
        save(tmp_path / "calib" / f"{i:03d}.png", np.round(img[0] * 255))
    for i, (img, y) in enumerate(zip(d["x"], d["y"])):
        save(tmp_path / "test" / f"{y}" / f"{i:03d}.png", np.round(img[0] * 255))
    out = tmp_path / "m.intq"
    proc = run_cli("compile", MODELS / "resnet.onnx", "-o", out, "--calib", tmp_path / "calib",
                   "--preprocess", "none")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("eval", out, "--data", tmp_path / "test", "--preprocess", "none", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["images"] == 360 and res["int_top1"] > 0.98 and res["top1_agreement"] > 0.98
    # Without labels, eval compares the outputs with the artifact's float model instead.
    proc = run_cli("eval", out, "--data", tmp_path / "calib", "--preprocess", "none", "--json")
    assert proc.returncode == 0, proc.stderr
    (logits,) = json.loads(proc.stdout)["outputs"].values()
    assert logits["cosine_min"] > 0.99 and "int_top1" not in json.loads(proc.stdout)
    # A truncated and a non-image file among the labelled ones: skipped and counted, the
    # other 360 still evaluated; calibration skips them the same way.
    (tmp_path / "test" / "3" / "zz_truncated.png").write_bytes((tmp_path / "test" / "3").glob("*.png")
                                                             .__next__().read_bytes()[:40])
    (tmp_path / "test" / "5" / "zz_text.jpg").write_text("not an image")
    (tmp_path / "calib" / "zz_text.png").write_text("not an image")
    proc = run_cli("eval", out, "--data", tmp_path / "test", "--preprocess", "none", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["images"] == 360 and res["unreadable"] == 2, res
    assert "skipped 2 unreadable image(s)" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("compile", MODELS / "resnet.onnx", "-o", tmp_path / "m2.intq", "--calib",
                   tmp_path / "calib", "--preprocess", "none")
    assert proc.returncode == 0 and "skipped 1 unreadable image(s)" in proc.stderr, proc.stderr


def test_folder_without_a_readable_image_is_an_error(tmp_path):
    for i in range(3):
        (tmp_path / "bad" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bad" / "a" / f"{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(IntqError, match="none of its 3 images can be read"):
        list(image_batches(tmp_path / "bad", (1, 8, 8), "none"))


def test_decompression_bomb_is_an_unreadable_image(tmp_path):
    """Found in review: Pillow's DecompressionBombError (a 20000 x 20000 header) is not an
    OSError and escaped as a traceback."""
    import struct
    import zlib

    save(tmp_path / "a" / "small.png", np.zeros((1, 1)))
    png = bytearray((tmp_path / "a" / "small.png").read_bytes())
    ihdr = png[12:29]  # b"IHDR" + width, height, depth, colour, ...
    ihdr[4:12] = struct.pack(">II", 20000, 20000)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    (tmp_path / "a" / "small.png").write_bytes(bytes(png))
    with pytest.raises(IntqError, match="none of its 1 images can be read"):
        list(image_batches(tmp_path, (1, 8, 8), "none"))
