"""Digit scenes: scikit-learn's digits placed on a 64x64 canvas, for a small trained
detector and segmenter whose integer accuracy CI can measure.

A scene holds one to three digits, each upscaled 2x or 3x by pixel repetition (16 or 24
pixels square), at random positions that do not overlap. Scenes for training and
calibration are drawn from the digits split's training images; test scenes only from its
held-out test images (`models.digits.load_split`), so no test digit was seen in training
or calibration.

Labels: boxes (x1, y1, x2, y2, class) per scene for the detector; a (64, 64) map of class
+ 1 on the digit's ink (pixels above 0.25) and 0 elsewhere for the segmenter.

The detector is CenterNet-style at stride 4: a class heatmap (N, 10, 16, 16) after a
sigmoid, and per cell the box (N, 4, 16, 16): centre offset in the cell and width and
height, in cells. `decode` turns both into boxes (a 3x3 peak above the threshold), `match`
pairs two sets of boxes at IoU >= 0.5 with the same class. Numpy only, like
`models.digits`.
"""
from __future__ import annotations

import numpy as np

SIZE, STRIDE, CLASSES = 64, 4, 10
GRID = SIZE // STRIDE


def make_scenes(images, labels, count: int, seed: int):
    """(x float32 (count, 1, 64, 64), boxes list of (k, 5) int arrays, masks int64
    (count, 64, 64)) from preprocessed 16x16 digits `images` (N, 1, 16, 16)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((count, 1, SIZE, SIZE), np.float32)
    masks = np.zeros((count, SIZE, SIZE), np.int64)
    boxes = []
    for i in range(count):
        placed = []
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(len(images)))
            scale = int(rng.choice([2, 3]))   # the 8x8 original, 16 or 24 pixels square
            digit = np.kron(images[j, 0, ::2, ::2], np.ones((scale, scale), np.float32))
            s = digit.shape[0]
            for _ in range(20):   # rejection: no overlap with the digits already placed
                x0, y0 = (int(v) for v in rng.integers(0, SIZE - s + 1, 2))
                if all(x0 >= b[2] or x0 + s <= b[0] or y0 >= b[3] or y0 + s <= b[1] for b in placed):
                    break
            else:
                continue
            x[i, 0, y0:y0 + s, x0:x0 + s] = np.maximum(x[i, 0, y0:y0 + s, x0:x0 + s], digit)
            masks[i, y0:y0 + s, x0:x0 + s][digit > 0.25] = int(labels[j]) + 1
            placed.append((x0, y0, x0 + s, y0 + s, int(labels[j])))
        boxes.append(np.array(placed, np.int64).reshape(-1, 5))
    return x, boxes, masks


def detector_targets(boxes, count: int):
    """Heatmap targets (Gaussian peaks at the box centres' cells) and box targets with
    their mask (count, 1, 16, 16): the cells a loss reads."""
    heat = np.zeros((count, CLASSES, GRID, GRID), np.float32)
    box = np.zeros((count, 4, GRID, GRID), np.float32)
    mask = np.zeros((count, 1, GRID, GRID), np.float32)
    ys, xs = np.mgrid[0:GRID, 0:GRID]
    for i, bs in enumerate(boxes):
        for x1, y1, x2, y2, c in bs:
            cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
            gx, gy = min(int(cx), GRID - 1), min(int(cy), GRID - 1)
            sigma = (x2 - x1) / STRIDE / 6
            heat[i, c] = np.maximum(heat[i, c], np.exp(-((xs - gx) ** 2 + (ys - gy) ** 2) / (2 * sigma ** 2)))
            box[i, :, gy, gx] = (cx - gx, cy - gy, (x2 - x1) / STRIDE, (y2 - y1) / STRIDE)
            mask[i, 0, gy, gx] = 1
    return heat, box, mask


def decode(heat, box, threshold: float = 0.3):
    """Boxes (x1, y1, x2, y2, class, score) per image from the detector's two outputs: each
    cell whose score is the largest of its 3x3 neighbourhood in its class and above the
    threshold."""
    out = []
    n, c, h, w = heat.shape
    pad = np.pad(heat, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    peak = np.max([pad[:, :, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
    for i in range(n):
        keep = np.argwhere((heat[i] >= peak[i]) & (heat[i] > threshold))
        rows = []
        for cls, gy, gx in keep:
            ox, oy, bw, bh = box[i, :, gy, gx]
            cx, cy = (gx + ox) * STRIDE, (gy + oy) * STRIDE
            rows.append((cx - bw * STRIDE / 2, cy - bh * STRIDE / 2, cx + bw * STRIDE / 2,
                         cy + bh * STRIDE / 2, cls, heat[i, cls, gy, gx]))
        out.append(np.array(rows, np.float64).reshape(-1, 6))
    return out


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(found, wanted, threshold: float = 0.5) -> tuple[int, int, int]:
    """(matched, len(found), len(wanted)) over all images: greedy one-to-one pairs of the
    same class at IoU >= threshold, highest-scoring found boxes first."""
    hit = total_found = total_wanted = 0
    for f, w in zip(found, wanted):
        total_found += len(f)
        total_wanted += len(w)
        used = set()
        for row in sorted(f, key=lambda r: -r[5]) if len(f) and f.shape[1] > 5 else f:
            best, best_j = threshold, None
            for j, t in enumerate(w):
                if j not in used and int(t[4]) == int(row[4]):
                    v = iou(row, t)
                    if v >= best:
                        best, best_j = v, j
            if best_j is not None:
                used.add(best_j)
                hit += 1
    return hit, total_found, total_wanted


def mask_iou(a, b) -> float:
    """IoU of two class maps over their digit pixels: |same class on ink in both| /
    |ink in either|."""
    fg = (a > 0) | (b > 0)
    return float(((a == b) & fg).sum() / max(fg.sum(), 1))
