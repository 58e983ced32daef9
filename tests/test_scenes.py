"""The trained digit-scene detector and segmenter (models/scenes/, `python
models/train_scenes.py`): compiled at INT8 from calibration scenes of training digits, on
test scenes of held-out digits the INT8 detector recovers at least 95% of the FP32
detector's boxes (IoU >= 0.5, same class), the INT8 segmenter's class map keeps a mask IoU
of at least 0.95 with the FP32 one's, and both verify exact. The decoding and matching
rules themselves are checked on hand-made boxes."""
from pathlib import Path

import numpy as np
import pytest

from models import scenes

SCENES = Path(__file__).resolve().parents[1] / "models" / "scenes"


@pytest.fixture(scope="module")
def split():
    from models.train_scenes import scenes_split

    _, calib, test = scenes_split(n_train=1)
    return calib, test


def test_match_pairs_same_class_boxes_at_iou_half():
    wanted = [np.array([[0, 0, 10, 10, 3], [20, 20, 30, 30, 5]])]
    found = [np.array([[1, 1, 11, 11, 3, 0.9], [20, 20, 30, 30, 4, 0.8], [0, 0, 10, 10, 3, 0.7]])]
    assert scenes.match(found, wanted) == (1, 3, 2)   # class 4 is wrong, the duplicate unmatched
    assert scenes.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)


def test_decode_finds_the_peaks():
    heat = np.zeros((1, 10, 16, 16), np.float32)
    heat[0, 7, 4, 5], heat[0, 7, 4, 6] = 0.9, 0.5    # a peak and a neighbour it suppresses
    box = np.zeros((1, 4, 16, 16), np.float32)
    box[0, :, 4, 5] = (0.5, 0.5, 4, 4)
    (found,) = scenes.decode(heat, box)
    assert found.shape == (1, 6)
    assert found[0, :5].tolist() == [14.0, 10.0, 30.0, 26.0, 7.0]


def test_scenes_hold_their_digits():
    from models.digits import load_split

    x_tr, y_tr, _, _ = load_split()
    x, boxes, masks = scenes.make_scenes(x_tr, y_tr, 20, seed=0)
    for img, bs, m in zip(x, boxes, masks):
        assert 1 <= len(bs) <= 3
        for x1, y1, x2, y2, c in bs:
            assert x2 - x1 in (16, 24) and (m[y1:y2, x1:x2] == c + 1).any()
        assert ((img[0] > 0.25) == (m > 0)).all()


def test_int8_detector_recovers_the_float_boxes(split):
    import intq

    calib, test = split
    model = intq.compile(SCENES / "digits_detector.onnx", calib=calib[0], bits=8)
    heat_q, box_q = model.run_all(test[0])
    heat_f, box_f = intq.float_executor.run_float(model.float, test[0])
    found_q, found_f = scenes.decode(heat_q, box_q), scenes.decode(heat_f, box_f)
    hit, n_q, n_f = scenes.match(found_q, found_f)
    assert n_f > 300 and hit / n_f >= 0.95, (hit, n_q, n_f)
    true_hit, _, n_true = scenes.match(found_f, test[1])
    assert true_hit / n_true >= 0.9   # the float detector is trained, not a constant
    from intq.twin.verify import verify
    assert verify(model, test[0][:4])["all_exact"]


def test_int8_segmenter_keeps_the_float_masks(split):
    """The INT8 segmenter's class map against the FP32 one's on test scenes of held-out
    digits: mask IoU (same class on ink in either) at least 0.95."""
    import intq
    from intq.twin.verify import verify

    calib, test = split
    model = intq.compile(SCENES / "digits_segmenter.onnx", calib=calib[0], bits=8)
    assert {"IntResizeLinear", "IntConcat"} <= {n.op for n in model.integer.nodes}
    seg_q = model.run(test[0]).argmax(1)
    seg_f = intq.float_executor.run_float(model.float, test[0])[0].argmax(1)
    agree = np.mean([scenes.mask_iou(a, b) for a, b in zip(seg_q, seg_f)])
    assert agree >= 0.95, agree
    truth = np.mean([scenes.mask_iou(a, b) for a, b in zip(seg_f, test[2])])
    assert truth >= 0.5, truth   # the float segmenter is trained, not a constant
    assert verify(model, test[0][:4])["all_exact"]
