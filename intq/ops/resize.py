"""Resize of an NCHW tensor's height and width: nearest (a gather) and bilinear.

The frontend (`intq.frontend.resize`) resolves ONNX's scales or sizes and coordinate
transform into tables once, at import: for nearest, the source row of each output row and
the source column of each output column; for linear, each output row's two source rows
and their weights, and the same for columns. No float arithmetic is left for run time.

`IntResizeLinear` is the integer form: the weights in `frac_bits` (10, as TFLite) fixed
point per axis, w0 = 2^f - w1 so each axis's pair sums to exactly 2^f, the four products
summed exactly in int64, then one rounding: y = floor((S + 2^(2f-1)) / 2^(2f)), halves
toward +infinity like every rescale in intq. Because the weights sum to 2^(2f), a zero
point passes through unchanged, and y lies between the four inputs: the output keeps its
input's quantization and dtype.
"""
import numpy as np

from . import contract as k
from .base import OpSpec, require_rank

INDICES = k.integers(None, 0, k.MAX_DIM)
FRAC_BITS = 10


def _check_tables(node, g, p, tables):
    """Each (attribute, axis) table indexes inside the input's axis."""
    shape = g.values[node.inputs[0]].shape
    if len(shape) != 4:
        p.fail(f"{k.where(node)}: input must be NCHW, got shape {shape}")
        return
    for what, axis in tables:
        idx, size = node.attrs[what], shape[axis]
        if not idx or max(idx) >= size:
            p.fail(f"{k.where(node)}: {what} must index 0..{size - 1}, got max {max(idx, default=None)}")


def _resized_shape(node, ins, rows, cols):
    require_rank(ins[0], 4, f"{node.op} input")
    n, c = ins[0].shape[:2]
    return [((n, c, len(node.attrs[rows]), len(node.attrs[cols])), ins[0].dtype)]


def _taps(attrs, x, rows, cols):
    """The four source grids x[rows_a, cols_b] for a, b in (0, 1)."""
    r = [np.asarray(attrs[f"{rows}{i}"], np.int64)[:, None] for i in (0, 1)]
    c = [np.asarray(attrs[f"{cols}{i}"], np.int64)[None, :] for i in (0, 1)]
    return [[x[:, :, r[a], c[b]] for b in (0, 1)] for a in (0, 1)]


class ResizeNearest(OpSpec):
    """Nearest-neighbour resize of an NCHW tensor: out[n, c, i, j] = x[n, c, rows[i], cols[j]].

    The frontend resolves ONNX's scales or sizes, coordinate_transformation_mode and
    nearest_mode into the source row of every output row and the source column of every
    output column (`intq.frontend.resize`, onnxruntime's float32 arithmetic, at import), so
    the op itself is a gather with no arithmetic and runs unchanged on integers."""

    name = "ResizeNearest"
    integer_graph = True
    tags = frozenset({"movement", "keeps_qparams"})
    attrs = {"rows": INDICES, "cols": INDICES}

    @staticmethod
    def precheck(node, g, p):
        _check_tables(node, g, p, (("rows", 2), ("cols", 3)))

    @staticmethod
    def infer(node, ins, graph):
        return _resized_shape(node, ins, "rows", "cols")

    @staticmethod
    def run(attrs, x):
        rows, cols = np.asarray(attrs["rows"], np.int64), np.asarray(attrs["cols"], np.int64)
        return (np.ascontiguousarray(x[:, :, rows[:, None], cols[None, :]]),)


class ResizeLinear(OpSpec):
    """Bilinear resize: out[n, c, i, j] = sum over a, b in (0, 1) of
    row_w{a}[i] col_w{b}[j] x[n, c, rows{a}[i], cols{b}[j]], with onnxruntime's taps and
    float32 weights (`intq.frontend.resize.linear_taps`). Lowered to `IntResizeLinear`."""

    name = "ResizeLinear"
    attrs = {"rows0": INDICES, "rows1": INDICES, "row_w0": k.finites, "row_w1": k.finites,
             "cols0": INDICES, "cols1": INDICES, "col_w0": k.finites, "col_w1": k.finites}
    tags = frozenset({"keeps_qparams"})

    @staticmethod
    def precheck(node, g, p):
        _check_tables(node, g, p, [(f"{t}{i}", axis) for t, axis in (("rows", 2), ("cols", 3))
                                   for i in (0, 1)])

    @staticmethod
    def infer(node, ins, graph):
        return _resized_shape(node, ins, "rows0", "cols0")

    @staticmethod
    def run(attrs, x):
        t = _taps(attrs, x.astype(np.float64), "rows", "cols")
        wr = [np.asarray(attrs[f"row_w{a}"])[:, None] for a in (0, 1)]
        wc = [np.asarray(attrs[f"col_w{b}"])[None, :] for b in (0, 1)]
        y = sum(wc[b] * wr[a] * t[a][b] for a in (0, 1) for b in (0, 1))
        return (y.astype(x.dtype),)


class IntResizeLinear(OpSpec):
    """Bilinear resize on integers (see the module docstring for the rounding):
    S = sum (2^f - w1 or w1 of the row) (2^f - w1 or w1 of the column) x, y = (S + 2^(2f-1)) >> 2f.
    attrs: rows0, rows1, row_weights (w1 per output row), cols0, cols1, col_weights,
    frac_bits f."""

    name = "IntResizeLinear"
    float_graph, integer_graph = False, True
    attrs = {"rows0": INDICES, "rows1": INDICES, "row_weights": k.integers(None, 0, 1 << 15),
             "cols0": INDICES, "cols1": INDICES, "col_weights": k.integers(None, 0, 1 << 15),
             "frac_bits": k.integer(1, 15)}

    @staticmethod
    def precheck(node, g, p):
        ResizeLinear.precheck(node, g, p)

    @staticmethod
    def check(node, g, p):
        a = node.attrs
        one = 1 << a["frac_bits"]
        for t in ("row", "col"):
            if max(a[f"{t}_weights"]) > one:
                p.fail(f"{k.where(node)}: {t}_weights exceed 2^frac_bits = {one}")
            if not len(a[f"{t}_weights"]) == len(a[f"{t}s0"]) == len(a[f"{t}s1"]):
                p.fail(f"{k.where(node)}: {t} tables of different lengths")

    @staticmethod
    def infer(node, ins, graph):
        return _resized_shape(node, ins, "rows0", "cols0")

    @staticmethod
    def run(attrs, x):
        f = attrs["frac_bits"]
        one = np.int64(1) << f
        t = _taps(attrs, x.astype(np.int64), "rows", "cols")
        w1r = np.asarray(attrs["row_weights"], np.int64)[:, None]
        w1c = np.asarray(attrs["col_weights"], np.int64)[None, :]
        wr, wc = (one - w1r, w1r), (one - w1c, w1c)
        s = sum(wr[a] * wc[b] * t[a][b] for a in (0, 1) for b in (0, 1))
        return ((s + (np.int64(1) << (2 * f - 1))) >> (2 * f),)


def resize_linear_attrs(attrs, frac_bits: int = FRAC_BITS) -> dict:
    """`IntResizeLinear`'s attributes for a `ResizeLinear` node's: the second tap's weight
    of each row and column to the nearest multiple of 2^-f (halves up; compile time, on
    the float32 weights), the first tap's then being 2^f minus it."""
    one = 1 << frac_bits

    def fixed(w0, w1):
        # w1 / (w0 + w1): the float32 weights sum to 1 within a rounding; the ratio is the tap
        return [int(np.floor(b / (a + b) * one + 0.5)) for a, b in zip(w0, w1)]

    return {"rows0": list(attrs["rows0"]), "rows1": list(attrs["rows1"]),
            "row_weights": fixed(attrs["row_w0"], attrs["row_w1"]),
            "cols0": list(attrs["cols0"]), "cols1": list(attrs["cols1"]),
            "col_weights": fixed(attrs["col_w0"], attrs["col_w1"]), "frac_bits": frac_bits}


SPECS = [ResizeNearest, ResizeLinear, IntResizeLinear]
