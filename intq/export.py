"""Export of an integer graph to a standard ONNX file that onnxruntime runs bit for bit.

    model.export("m.onnx")              # or: intq export m.intq -o m.onnx --format integer

The file holds the integer graph in standard ONNX integer ops, int64 tensors between
them, and `QuantizeInput` as its one float step (float64, the same IEEE divide, add and
floor as intq). Its outputs are intq's integers (int64). Each rule, and why it is exact:

* **DN (every rescale), floor(p / 2^c + 1/2) with p = v b**, written as intq's kernels
  compute it, ((p >> h) + r) >> s with h = max(c - 1, 0), r = [c > 0], s = c - h, where
  `>>` is a flooring (arithmetic) shift. ONNX's BitShift is logical and unsigned only, so
  v >> k is taken on uint64 after an offset that makes it a floor:
  ((u(v) + 2^63) >> k) - (2^63 >> k), u the two's-complement cast to uint64 and every
  uint64 add and subtract modulo 2^64. For -2^63 <= v < 2^63, u(v) + 2^63 = v + 2^63 in
  [0, 2^64) exactly, its logical shift is floor(v / 2^k) + 2^(63 - k), and the
  subtraction leaves floor(v / 2^k), cast back to int64 unchanged. `intq.validate`
  bounds every product p below 2^63.
* **Convolutions and linear layers**: `ConvInteger` / `MatMulInteger` into INT32 on
  uint8 activations and uint8 weights (see `_weights_uint8` for why not int8). A signed
  8- or 4-bit activation is shifted by +128 into uint8 with x_zero_point 128, the weights
  (int8 or int4) likewise with w_zero_point 128, so the op's (x + 128 - 128)(w + 128 - 128)
  is intq's x w exactly; padding is an explicit `Pad` with intq's pad
  value before the shift; the bias is added in int64 after the INT32 sum, as intq does.
* **Data movement** (Reshape, Transpose, Slice, Split, Pad, nearest Resize, ...) and
  **pooling windows**: the op's own reference `run` applied once to a tensor of element
  indices gives an index map, and the file gathers by it (`Gather` on the flattened
  sample, an appended fill column for padding), as the Numba backend's `MoveStep` does;
  a map that keeps every element in place is a `Reshape`.
* Lookup tables are `Gather`; clamps are `Clip`; the softmax is its integer algorithm
  step by step (`IntSoftmax`), with `BitShift` by per-element amounts.

An op with no exact form here (a convolution reading 16-bit activations: ConvInteger
takes 8 bits) is refused with one line naming it.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import IntqError
from .ir import Graph
from .ops import get_op
from .ops.contract import dtype_range
from .ops.integer import IntSoftmax, per_channel
from .ops.window import windows

OPSET = 21
_U64_TOP = np.uint64(1 << 63)
_EIGHT_BIT = {"uint8": 0, "uint4": 0, "int8": 128, "int4": 128}   # offset into uint8


class _Builder:
    """Accumulates nodes and initializers; every tensor between ops is int64 unless named."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.nodes, self.inits = [], []
        self.names: set[str] = set()
        self.count = 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}__{self.count}"

    def const(self, value, dtype=np.int64, hint="c") -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type, inputs, hint="t", outputs=1, **attrs):
        outs = [self.fresh(hint) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if outputs == 1 else outs

    # -- integer arithmetic --------------------------------------------------------
    def floor_shift(self, v, k):
        """floor(v / 2^k) for int64 v; k a non-negative integer array (constant) or an int64
        tensor name (see the module docstring for why this is exact)."""
        if not isinstance(k, str):
            k = np.asarray(k, np.int64)
            if not k.any():
                return v
            offset = self.const(_U64_TOP >> k.astype(np.uint64), np.uint64, "offset")
            k = self.const(k, np.uint64, "shift")
        else:
            k = self.op("Cast", [k], "shift", to=TensorProto.UINT64)
            offset = self.op("BitShift", [self.const(_U64_TOP, np.uint64, "top"), k], "offset",
                             direction="RIGHT")
        u = self.op("Add", [self.op("Cast", [v], "u", to=TensorProto.UINT64),
                            self.const(_U64_TOP, np.uint64, "top")], "u")
        u = self.op("Sub", [self.op("BitShift", [u, k], "u", direction="RIGHT"), offset], "u")
        return self.op("Cast", [u], "floor", to=TensorProto.INT64)

    def dn(self, v, b, c, ndim):
        """floor(v b / 2^c + 1/2), b and c per channel along axis 1 (or one value)."""
        b = per_channel(b, ndim)
        c = np.asarray(per_channel(c, ndim), np.int64)
        p = self.op("Mul", [v, self.const(b)], "prod")
        h = np.maximum(c - 1, 0)
        r = self.op("Add", [self.floor_shift(p, h), self.const((c > 0).astype(np.int64))], "round")
        return self.floor_shift(r, c - h)

    def dn_tensor(self, v, b, c):
        """floor(v b / 2^c + 1/2) with b and c int64 tensors (the softmax's reciprocal)."""
        p = self.op("Mul", [v, b], "prod")
        h = self.op("Max", [self.op("Sub", [c, self.const(1)]), self.const(0)], "h")
        rnd = self.op("Cast", [self.op("Greater", [c, self.const(0)])], "rnd", to=TensorProto.INT64)
        r = self.op("Add", [self.floor_shift(p, h), rnd], "round")
        return self.floor_shift(r, self.op("Sub", [c, h], "s"))

    def clip(self, v, lo, hi, zero_point=None):
        if zero_point is not None:
            v = self.op("Add", [v, self.const(zero_point)], "zp")
        return self.op("Clip", [v, self.const(int(lo)), self.const(int(hi))], "clip")

    def sub_zero(self, v, z):
        return v if not np.any(z) else self.op("Sub", [v, self.const(z)], "centred")

    # -- movement --------------------------------------------------------------------
    def gather(self, x, x_shape, index, out_shape, fill=0):
        """y[n, ...] = x[n].flat[index[...]] (fill where index < 0), index over one sample."""
        index = np.asarray(index, np.int64).reshape(-1)
        size = int(np.prod(x_shape[1:], dtype=np.int64))
        if index.size == size and (index == np.arange(size)).all():
            return self.op("Reshape", [x, self.const([-1, *out_shape[1:]])], "view")
        flat = self.op("Reshape", [x, self.const([0, -1])], "flat")
        if (index < 0).any():
            column = self.op("Slice", [flat, self.const([0]), self.const([1]), self.const([1])], "col")
            column = self.op("Add", [self.op("Mul", [column, self.const(0)]), self.const(int(fill))], "fill")
            flat = self.op("Concat", [flat, column], "padded", axis=1)
            index = np.where(index < 0, size, index)
        y = self.op("Gather", [flat, self.const(index)], "gathered", axis=1)
        return self.op("Reshape", [y, self.const([-1, *out_shape[1:]])], "moved")

    def window_taps(self, x, shape, attrs, pool_pads, fill_index=-1):
        """One gathered tensor per window tap of a pool (N, C, Ho, Wo each)."""
        logical = np.arange(int(np.prod(shape[1:])), dtype=np.int64).reshape((1,) + tuple(shape[1:]))
        v = windows(logical, attrs["kernel_shape"], attrs["strides"], pool_pads,
                    attrs.get("dilations", (1, 1)), attrs.get("ceil_mode", 0), pad_value=fill_index)
        out = (1,) + v.shape[1:4]
        return [(v[..., i, j], out) for i in range(v.shape[4]) for j in range(v.shape[5])]


def _shape(g, t):
    return tuple(g.values[t].shape)


def _quantize_input(b: _Builder, node, x):
    a = node.attrs
    v = b.op("Cast", [x], "x64", to=TensorProto.DOUBLE)
    if "in_scale" in a:
        shape = (1, -1) + (1,) * (len(_shape(b.g, node.inputs[0])) - 2)
        v = b.op("Mul", [v, b.const(np.reshape(a["in_scale"], shape), np.float64)], "scaled")
        v = b.op("Add", [v, b.const(np.reshape(a["in_shift"], shape), np.float64)], "shifted")
    v = b.op("Div", [v, b.const(a["scale"], np.float64)], "q")
    v = b.op("Floor", [b.op("Add", [v, b.const(0.5, np.float64)], "q")], "q")
    v = b.op("Add", [v, b.const(float(a["zero_point"]), np.float64)], "q")
    v = b.op("Clip", [v, b.const(float(a["lo"]), np.float64), b.const(float(a["hi"]), np.float64)], "q")
    return [b.op("Cast", [v], "q", to=TensorProto.INT64)]


def _to_uint8(b: _Builder, node, x, x_dtype):
    if x_dtype not in _EIGHT_BIT:
        raise IntqError(f"export: {node.op} {node.name} reads {x_dtype} activations; ConvInteger "
                        f"and MatMulInteger take 8 bits, so it has no exact standard form")
    off = _EIGHT_BIT[x_dtype]
    v = b.op("Add", [x, b.const(off)], "u8") if off else x
    return b.op("Cast", [v], "u8", to=TensorProto.UINT8), off


def _weights_uint8(b: _Builder, node, w):
    """w + 128 as uint8, read with w_zero_point 128. Not int8 weights: on x86 CPUs without
    VNNI onnxruntime multiplies uint8 by int8 with `vpmaddubsw`, whose pairwise int16 sums
    saturate (measured: one logit of a bundled ResNet off by 151 steps); uint8 by uint8
    widens to 16 bits first and is exact."""
    w = np.asarray(w, np.int64)
    if w.size and (w.min() < -128 or w.max() > 127):
        raise IntqError(f"export: {node.op} {node.name} has weights outside int8")
    return b.const(w + 128, np.uint8, "w")


def _int_conv(b: _Builder, node, x, w, bias):
    g, a = b.g, node.attrs
    pt, pl, pb, pr = a["pads"]
    if any(a["pads"]):
        x = b.op("Pad", [x, b.const([0, 0, pt, pl, 0, 0, pb, pr]), b.const(int(a["x_zero_point"]))], "padded")
    xu, off = _to_uint8(b, node, x, g.values[node.inputs[0]].dtype)
    acc = b.op("ConvInteger", [xu, _weights_uint8(b, node, g.constants[node.inputs[1]]),
                               b.const(off, np.uint8), b.const(128, np.uint8)], "acc",
               strides=list(a["strides"]), dilations=list(a["dilations"]), group=int(a["groups"]))
    acc = b.op("Cast", [acc], "acc", to=TensorProto.INT64)
    return [b.op("Add", [acc, b.const(np.asarray(g.constants[node.inputs[2]]).reshape(1, -1, 1, 1))], "acc")]


def _int_linear(b: _Builder, node, x, w, bias):
    g = b.g
    xu, off = _to_uint8(b, node, x, g.values[node.inputs[0]].dtype)
    wt = np.asarray(g.constants[node.inputs[1]]).T
    acc = b.op("MatMulInteger", [xu, _weights_uint8(b, node, wt), b.const(off, np.uint8), b.const(128, np.uint8)], "acc")
    acc = b.op("Cast", [acc], "acc", to=TensorProto.INT64)
    return [b.op("Add", [acc, b.const(g.constants[node.inputs[2]])], "acc")]


def _requantize(b: _Builder, node, x, bb, cc):
    a, g = node.attrs, b.g
    nd = len(_shape(g, node.inputs[0]))
    v = b.dn(b.sub_zero(x, a["in_zero_point"]), g.constants[node.inputs[1]], g.constants[node.inputs[2]], nd)
    return [b.clip(v, a["lo"], a["hi"], a["out_zero_point"])]


def _branches(b: _Builder, node, args, signs=None):
    g, a, n = b.g, node.attrs, node.attrs["n"]
    signs = signs or [1] * n
    out = []
    for i in range(n):
        t = node.inputs[i]
        v = b.sub_zero(args[i], a["zero_points"][i])
        if signs[i] == -1:
            v = b.op("Neg", [v], "neg")
        out.append(b.dn(v, g.constants[node.inputs[n + i]], g.constants[node.inputs[2 * n + i]],
                        len(_shape(g, t))))
    return out


def _int_add(b: _Builder, node, *args):
    a, n = node.attrs, node.attrs["n"]
    parts = _branches(b, node, args, a.get("signs"))
    if a.get("offset"):
        parts.append(b.const(np.asarray(b.g.constants[node.inputs[3 * n]], np.int64)))
    total = parts[0]
    for p in parts[1:]:
        total = b.op("Add", [total, p], "sum")
    return [b.clip(total, a["lo"], a["hi"], a["out_zero_point"])]


def _int_concat(b: _Builder, node, *args):
    a = node.attrs
    parts = [b.clip(p, a["lo"], a["hi"], a["out_zero_point"]) for p in _branches(b, node, args)]
    return [b.op("Concat", parts, "cat", axis=int(a["axis"]))]


def _sum_taps(b: _Builder, x, shape, attrs, fill):
    taps = b.window_taps(x, shape, attrs, attrs["pads"])
    total = None
    for index, out in taps:
        t = b.gather(x, shape, index, out, fill)
        total = t if total is None else b.op("Add", [total, t], "window")
    return total


def _int_avg_pool(b: _Builder, node, x, bb, cc):
    a, g = node.attrs, b.g
    v = b.sub_zero(x, a["in_zero_point"])
    s = _sum_taps(b, v, _shape(g, node.inputs[0]), a, 0)
    v = _dn_broadcast(b, s, g.constants[node.inputs[1]], g.constants[node.inputs[2]])
    return [b.clip(v, a["lo"], a["hi"], a["out_zero_point"])]


def _dn_broadcast(b: _Builder, v, bv, cv):
    """DN with multipliers that broadcast onto v as numpy does (a pool's, per position)."""
    bv, cv = np.asarray(bv, np.int64), np.asarray(cv, np.int64)
    p = b.op("Mul", [v, b.const(bv)], "prod")
    h = np.maximum(cv - 1, 0)
    r = b.op("Add", [b.floor_shift(p, h), b.const((cv > 0).astype(np.int64))], "round")
    return b.floor_shift(r, cv - h)


def _int_global_avg_pool(b: _Builder, node, x, bb, cc):
    a, g = node.attrs, b.g
    v = b.sub_zero(x, a["in_zero_point"])
    s = b.op("ReduceSum", [v, b.const([2, 3])], "sum", keepdims=int(a.get("keepdims", 1)))
    v = _dn_broadcast(b, s, g.constants[node.inputs[1]], g.constants[node.inputs[2]])
    return [b.clip(v, a["lo"], a["hi"], a["out_zero_point"])]


def _max_pool(b: _Builder, node, x):
    g = b.g
    lowest = np.iinfo(np.int64).min   # the reference's padding of its int64 tensors
    best = None
    for index, out in b.window_taps(x, _shape(g, node.inputs[0]), node.attrs, node.attrs["pads"]):
        t = b.gather(x, _shape(g, node.inputs[0]), index, out, lowest)
        best = t if best is None else b.op("Max", [best, t], "max")
    return [best]


def _int_clamp(b: _Builder, node, x):
    return [b.clip(x, node.attrs["lo"], node.attrs["hi"])]


def _int_affine(b: _Builder, node, x, *consts):
    a, g = node.attrs, b.g
    nd = len(_shape(g, node.inputs[0]))
    _, bn, cn, sn, zn = node.inputs
    v = b.op("Mul", [b.sub_zero(x, a["in_zero_point"]), b.const(per_channel(g.constants[sn], nd))], "signed")
    v = b.dn(v, g.constants[bn], g.constants[cn], nd)
    return [b.clip(v, a["lo"], a["hi"], per_channel(g.constants[zn], nd))]


def _int_abs(b: _Builder, node, x, *consts):
    a, g = node.attrs, b.g
    nd = len(_shape(g, node.inputs[0]))
    v = b.op("Abs", [b.sub_zero(x, a["in_zero_point"])], "abs")
    v = b.dn(v, g.constants[node.inputs[1]], g.constants[node.inputs[2]], nd)
    return [b.clip(v, a["lo"], a["hi"], a["out_zero_point"])]


def _int_lookup(b: _Builder, node, x, table):
    index = b.sub_zero(x, node.attrs["offset"])
    return [b.op("Gather", [b.const(np.asarray(b.g.constants[node.inputs[1]], np.int64)), index],
                 "looked", axis=0)]


def _int_leaky_relu(b: _Builder, node, x, *consts):
    a, g = node.attrs, b.g
    nd = len(_shape(g, node.inputs[0]))
    _, bp, cp, bn, cn, sn = node.inputs
    d = b.sub_zero(x, a["in_zero_point"])
    pos = b.clip(b.dn(d, g.constants[bp], g.constants[cp], nd), a["lo"], a["hi"], a["out_zero_point"])
    neg = b.op("Mul", [d, b.const(per_channel(g.constants[sn], nd))], "signed")
    neg = b.clip(b.dn(neg, g.constants[bn], g.constants[cn], nd), a["lo"], a["hi"], a["out_zero_point"])
    return [b.op("Where", [b.op("GreaterOrEqual", [d, b.const(0)], "nonneg"), pos, neg], "leaky")]


def _int_mul(b: _Builder, node, x, y, mb, mc):
    a, g = node.attrs, b.g
    if a.get("b_constant"):
        y = b.const(np.asarray(g.constants[node.inputs[1]], np.int64))
    prod = b.op("Mul", [b.sub_zero(x, a["a_zero_point"]), b.sub_zero(y, a["b_zero_point"])], "prod")
    v = _dn_broadcast(b, prod, g.constants[node.inputs[2]], g.constants[node.inputs[3]])
    return [b.clip(v, a["lo"], a["hi"], a["out_zero_point"])]


def _int_softmax(b: _Builder, node, x, table):
    """`IntSoftmax.run`, one ONNX op per numpy step."""
    a, g = node.attrs, b.g
    axes = b.const(list(a["axes"]))
    tv = np.asarray(g.constants[node.inputs[1]], np.int64)
    d = b.op("Sub", [b.op("ReduceMax", [x, axes], "max", keepdims=1), x], "d")
    e = b.op("Gather", [b.const(tv), b.op("Min", [d, b.const(len(tv) - 1)], "d")], "e", axis=0)
    s = b.op("ReduceSum", [e, axes], "s", keepdims=1)
    kb = None
    for j in range(32):   # bit length of s by comparisons, as the op does
        bit = b.op("Cast", [b.op("GreaterOrEqual", [s, b.const(1 << j)])], "bit", to=TensorProto.INT64)
        kb = bit if kb is None else b.op("Add", [kb, bit], "kb")
    left = b.op("Cast", [b.op("Sub", [b.const(31), kb])], "left", to=TensorProto.UINT64)
    m = b.op("BitShift", [b.op("Cast", [s], "s", to=TensorProto.UINT64), left], "m", direction="LEFT")
    m = b.op("Cast", [m], "m", to=TensorProto.INT64)
    r = b.op("Sub", [b.const(IntSoftmax.C1), b.floor_shift(b.op("Mul", [b.const(IntSoftmax.C2), m]), np.int64(31))], "r")
    for _ in range(3):
        inner = b.op("Sub", [b.const(2 << 29), b.floor_shift(b.op("Mul", [m, r]), np.int64(31))], "inner")
        r = b.floor_shift(b.op("Mul", [r, inner], "r"), np.int64(29))
    p = b.dn_tensor(e, r, b.op("Add", [kb, b.const(21)], "shift"))
    return [b.clip(p, a["lo"], a["hi"])]


def _int_resize_linear(b: _Builder, node, x):
    """`IntResizeLinear.run`: four gathered taps, their fixed-point weights, one rounding."""
    a = node.attrs
    f = int(a["frac_bits"])
    one = 1 << f
    rows = [np.asarray(a[f"rows{i}"], np.int64) for i in (0, 1)]
    cols = [np.asarray(a[f"cols{i}"], np.int64) for i in (0, 1)]
    w1r = np.asarray(a["row_weights"], np.int64)[:, None]
    w1c = np.asarray(a["col_weights"], np.int64)[None, :]
    wr, wc = (one - w1r, w1r), (one - w1c, w1c)
    total = None
    for i in (0, 1):
        xr = b.op("Gather", [x, b.const(rows[i])], "rows", axis=2)
        for j in (0, 1):
            t = b.op("Gather", [xr, b.const(cols[j])], "taps", axis=3)
            t = b.op("Mul", [t, b.const(wr[i] * wc[j])], "weighted")
            total = t if total is None else b.op("Add", [total, t], "sum")
    total = b.op("Add", [total, b.const(1 << (2 * f - 1))], "sum")
    return [b.floor_shift(total, np.int64(2 * f))]


def _movement(b: _Builder, node, x):
    """Any op that only moves elements: its reference `run` on element indices."""
    g, attrs = b.g, node.attrs
    fill = int(attrs.get("value", 0))
    if "value" in attrs:
        attrs = dict(attrs, value=-1)
    shape = _shape(g, node.inputs[0])
    logical = np.arange(int(np.prod(shape[1:], dtype=np.int64)), dtype=np.int64).reshape((1,) + shape[1:])
    maps = get_op(node.op).run(attrs, logical)
    return [b.gather(x, shape, m, _shape(g, o), fill) for m, o in zip(maps, node.outputs)]


EXPORTERS = {
    "QuantizeInput": _quantize_input, "IntConv": _int_conv, "IntLinear": _int_linear,
    "Requantize": _requantize, "IntAdd": _int_add, "IntConcat": _int_concat,
    "IntAvgPool": _int_avg_pool, "IntGlobalAvgPool": _int_global_avg_pool, "MaxPool": _max_pool,
    "IntClamp": _int_clamp, "IntAffine": _int_affine, "IntAbs": _int_abs, "IntLookup": _int_lookup,
    "IntLeakyRelu": _int_leaky_relu, "IntMul": _int_mul, "IntSoftmax": _int_softmax,
    "IntResizeLinear": _int_resize_linear,
}


def _exporter(op):
    if op in EXPORTERS:
        return EXPORTERS[op]
    spec = get_op(op)
    if "movement" in getattr(spec, "tags", ()) or "alias" in getattr(spec, "tags", ()):
        return _movement
    return None


def integer_onnx(graph: Graph) -> onnx.ModelProto:
    """The integer graph as an ONNX model of standard integer ops (see the module doc)."""
    b = _Builder(graph)
    names: dict[str, str] = {}
    floats = [t for t in graph.inputs if graph.values[t].dtype == "float32"]
    if len(floats) != len(graph.inputs):
        raise IntqError("export: only models whose inputs are float images can be exported")
    for node in graph.nodes:
        fn = _exporter(node.op)
        if fn is None:
            raise IntqError(f"export: op {node.op} (node {node.name}) has no exact standard ONNX form")
        args = [names.get(t, t) if t not in graph.constants else None for t in node.inputs]
        outs = fn(b, node, *args)
        for t, o in zip(node.outputs, outs):
            names[t] = o
    for t in graph.outputs:   # name the outputs as the integer graph does
        b.nodes.append(helper.make_node("Identity", [names[t]], [t]))
    inputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", *graph.values[t].shape[1:]])
              for t in graph.inputs]
    outputs = [helper.make_tensor_value_info(t, TensorProto.INT64, ["N", *graph.values[t].shape[1:]])
               for t in graph.outputs]
    g = helper.make_graph(b.nodes, graph.name or "intq", inputs, outputs, b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="intq")
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def onnxruntime_available() -> bool:
    """onnxruntime is optional (the check runs the written file when it is installed)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def check_with_onnxruntime(model: onnx.ModelProto, int_model, x) -> dict:
    """Run the exported file in onnxruntime on x and compare every output with intq's
    integers: {"outputs": {name: {"elements", "differ", "max_steps"}}, "exact": bool}."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, np.float32)})
    want = int_model.run_all(x, integer=True)
    report = {}
    for name, a, w in zip(int_model.integer.outputs, got, want):
        diff = np.abs(a.astype(np.int64) - w)
        report[name] = {"elements": int(w.size), "differ": int((diff != 0).sum()),
                        "max_steps": int(diff.max(initial=0))}
    return {"outputs": report, "exact": all(r["differ"] == 0 for r in report.values())}


def save_onnx(model: onnx.ModelProto, path) -> None:
    from .artifact import atomic_write

    with atomic_write(path) as f:
        f.write(model.SerializeToString())


# -- QDQ ------------------------------------------------------------------------------
#
# The standard QDQ form (`qdq_onnx`): every integer tensor is stored as its quantized
# values (QuantizeLinear output, the ONNX type of its dtype: uint8/int8, 16-bit for the
# residual stream, uint4/int4 where intq has 4 bits), and every op runs in float on their
# DequantizeLinear: Conv and Gemm on DequantizeLinear of intq's integer weights (int8 or
# INT4 tensors, per-channel scales) and INT32 biases, then QuantizeLinear at intq's output
# scale and zero point, with intq's clamp as a float Clip. This is what onnxruntime's
# quantizer writes and NPU importers read, so it is not bit-exact: onnxruntime rescales in
# float and rounds half to even where intq uses the dyadic multiplier and rounds half up,
# and the scales are float32. `intq export --format qdq` measures how far it lands. Ops
# with no float op to stand for them (a lookup table, the integer bilinear Resize) run
# their exact integer form on the quantized values (`_QDQ.on_integers`).

_QDQ_TYPES = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8, "uint16": TensorProto.UINT16,
              "int16": TensorProto.INT16, "uint4": TensorProto.UINT4, "int4": TensorProto.INT4,
              "int32": TensorProto.INT32}


class _QDQ:
    def __init__(self, graph: Graph):
        self.b = _Builder(graph)
        self.g = graph
        self.qp = graph.metadata["qparams"]
        self.quant: dict[str, str] = {}   # integer tensor -> ONNX name of its quantized values
        self.real: dict[str, str] = {}    # accumulators (float Conv outputs) and dequantized tensors

    def typed(self, value, dtype: str, dims=None, hint="z") -> str:
        name = self.b.fresh(hint)
        v = np.asarray(value, np.int64)
        self.b.inits.append(helper.make_tensor(name, _QDQ_TYPES[dtype], list(v.shape if dims is None else dims),
                                               v.reshape(-1).tolist()))
        return name

    def fconst(self, value, hint="s") -> str:
        return self.b.const(np.asarray(value, np.float32), np.float32, hint)

    def params(self, t):
        q = self.qp[t]
        if q.get("accumulator"):
            raise IntqError(f"export --format qdq: {t} is an accumulator")
        return float(q["scale"]), int(q["zero_point"]), self.g.values[t].dtype

    def value(self, t) -> str:
        """The real values of integer tensor t (a float accumulator, or a DequantizeLinear)."""
        if t not in self.real:
            s, z, dt = self.params(t)
            self.real[t] = self.b.op("DequantizeLinear", [self.quant[t], self.fconst(s), self.typed(z, dt)], "dq")
        return self.real[t]

    def quantize(self, v, t, lo, hi):
        s, z, dt = self.params(t)
        tlo, thi = dtype_range(dt)
        if lo > tlo or hi < thi:   # intq's clamp (a fused ReLU, ReLU6) as a float Clip
            v = self.b.op("Clip", [v, self.fconst(s * (lo - z)), self.fconst(s * (hi - z))], "clip")
        self.quant[t] = self.b.op("QuantizeLinear", [v, self.fconst(s), self.typed(z, dt)], "q")

    def on_integers(self, node, exporter):
        """The integer exporter of node's op on the quantized values of its tensor inputs
        (int64), its outputs stored at their own dtypes: exact, as in `integer_onnx`. Also
        the path of ops that only pick or compare values (movement, a 4-bit MaxPool), whose
        outputs keep the input's scale and zero point."""
        ins = []
        for t in node.inputs:
            if t in self.g.constants:
                ins.append(None)
            elif t not in self.quant:
                raise IntqError(f"export --format qdq: {node.op} {node.name} reads {t}, which has no quantized form")
            else:
                ins.append(self.b.op("Cast", [self.quant[t]], "i64", to=TensorProto.INT64))
        for t, o in zip(node.outputs, exporter(self.b, node, *ins)):
            self.quant[t] = self.b.op("Cast", [o], "q", to=_QDQ_TYPES[self.g.values[t].dtype])


def _qdq_weights(e: _QDQ, node, w, x_scale):
    """DequantizeLinear of intq's integer weights (their own dtype, int8 or INT4) with
    per-output-channel scales s_acc / s_x; the INT32 bias with scales s_acc and intq's
    folded zero-point correction undone (intq's bias is b - z_x sum(w))."""
    g = e.g
    acc_scales = np.asarray(e.qp[node.outputs[0]]["scales"], np.float64).reshape(-1)
    m = w.shape[0]
    acc_scales = np.broadcast_to(acc_scales, (m,))
    wd = g.values[node.inputs[1]].dtype
    wq = e.typed(w, wd, hint="w")
    wdq = e.b.op("DequantizeLinear", [wq, e.fconst(acc_scales / x_scale), e.typed(np.zeros(m), wd, hint="wz")],
                 "w", axis=0)
    bias = np.asarray(g.constants[node.inputs[2]], np.int64).reshape(-1)
    bias = bias + int(node.attrs["x_zero_point"]) * np.asarray(w, np.int64).reshape(m, -1).sum(axis=1)
    if np.abs(bias).max(initial=0) >= 2**31:
        raise IntqError(f"export --format qdq: {node.op} {node.name} has a bias outside INT32")
    bq = e.typed(bias, "int32", hint="bias")
    bdq = e.b.op("DequantizeLinear", [bq, e.fconst(acc_scales), e.typed(np.zeros(m), "int32", hint="bz")],
                 "bias", axis=0)
    return wdq, bdq


def _qdq_node(e: _QDQ, node):
    g, a, op = e.g, node.attrs, node.op
    if op == "QuantizeInput":
        e.quantize(node.inputs[0], node.outputs[0], a["lo"], a["hi"])
    elif op in ("IntConv", "IntLinear"):
        x = node.inputs[0]
        s_x = e.params(x)[0]
        w = np.asarray(g.constants[node.inputs[1]], np.int64)
        wdq, bdq = _qdq_weights(e, node, w, s_x)
        if op == "IntConv":
            e.real[node.outputs[0]] = e.b.op(
                "Conv", [e.value(x), wdq, bdq], "conv", strides=list(a["strides"]), pads=list(a["pads"]),
                dilations=list(a["dilations"]), group=int(a["groups"]), kernel_shape=list(w.shape[2:]))
        else:
            e.real[node.outputs[0]] = e.b.op("Gemm", [e.value(x), wdq, bdq], "gemm", transB=1)
    elif op == "Requantize":
        e.quantize(e.value(node.inputs[0]), node.outputs[0], a["lo"], a["hi"])
    elif op in ("IntAdd", "IntConcat"):
        n = a["n"]
        parts = [e.value(t) for t in node.inputs[:n]]
        if op == "IntConcat":
            e.quantize(e.b.op("Concat", parts, "cat", axis=int(a["axis"])), node.outputs[0], a["lo"], a["hi"])
            return
        signs = a.get("signs") or [1] * n
        total = None
        for p, sign in zip(parts, signs):
            p = e.b.op("Neg", [p], "neg") if sign == -1 else p
            total = p if total is None else e.b.op("Add", [total, p], "sum")
        if a.get("offset"):
            s_out = e.params(node.outputs[0])[0]
            total = e.b.op("Add", [total, e.fconst(np.asarray(g.constants[node.inputs[3 * n]], np.float64) * s_out)], "sum")
        e.quantize(total, node.outputs[0], a["lo"], a["hi"])
    elif op == "MaxPool" and g.values[node.inputs[0]].dtype in ("uint4", "int4"):
        # onnxruntime drops the DequantizeLinear/QuantizeLinear pair around a MaxPool of
        # equal scales and then has no 4-bit MaxPool: the max of the quantized values
        # (quantization is monotone, so it is the same) by the integer form's taps
        e.on_integers(node, _max_pool)
    elif op == "MaxPool":
        v = e.b.op("MaxPool", [e.value(node.inputs[0])], "pool", kernel_shape=list(a["kernel_shape"]),
                   strides=list(a["strides"]), pads=list(a["pads"]), dilations=list(a.get("dilations", (1, 1))),
                   ceil_mode=int(a.get("ceil_mode", 0)))
        lo, hi = dtype_range(g.values[node.outputs[0]].dtype)
        e.quantize(v, node.outputs[0], lo, hi)
    elif op == "IntGlobalAvgPool":
        v = e.b.op("GlobalAveragePool", [e.value(node.inputs[0])], "pool")
        if not int(a.get("keepdims", 1)):
            v = e.b.op("Flatten", [v], "flat", axis=1)
        e.quantize(v, node.outputs[0], a["lo"], a["hi"])
    elif op == "IntAvgPool":
        # intq's multipliers are per output position where the window count varies: that
        # is onnxruntime's count_include_pad=0; one multiplier for all, count_include_pad=1
        bm = np.asarray(g.constants[node.inputs[1]])
        uniform = bm.size == 1 or (bm == bm.reshape(-1)[0]).all()
        v = e.b.op("AveragePool", [e.value(node.inputs[0])], "pool", kernel_shape=list(a["kernel_shape"]),
                   strides=list(a["strides"]), pads=list(a["pads"]), ceil_mode=int(a.get("ceil_mode", 0)),
                   count_include_pad=int(uniform and any(a["pads"])))
        e.quantize(v, node.outputs[0], a["lo"], a["hi"])
    elif op == "IntClamp":
        e.quantize(e.value(node.inputs[0]), node.outputs[0], a["lo"], a["hi"])
    elif _exporter(op) is _movement:
        e.on_integers(node, _movement)
    elif op == "IntMul" and not a.get("b_constant"):   # onnxruntime's QDQ Mul (QLinearMul)
        v = e.b.op("Mul", [e.value(node.inputs[0]), e.value(node.inputs[1])], "mul")
        e.quantize(v, node.outputs[0], a["lo"], a["hi"])
    elif op == "IntSoftmax" and len(a["axes"]) == 1:
        e.quantize(e.b.op("Softmax", [e.value(node.inputs[0])], "softmax", axis=int(a["axes"][0])),
                   node.outputs[0], a["lo"], a["hi"])
    elif _exporter(op) is not None:
        # No float op to stand between DequantizeLinear and QuantizeLinear (a lookup table
        # knows its function only as the table; the integer bilinear Resize has its own
        # rounding): the op's exact integer form (`integer_onnx`'s) on the quantized values.
        e.on_integers(node, _exporter(op))
    else:
        raise IntqError(f"export --format qdq: op {op} (node {node.name}) has no QDQ form here; "
                        f"--format integer exports it exactly")


def qdq_onnx(graph: Graph) -> onnx.ModelProto:
    """The model in the standard QDQ form (see above): float input, outputs intq's
    integer outputs as their quantized ONNX types."""
    e = _QDQ(graph)
    if len(graph.inputs) != 1 or graph.values[graph.inputs[0]].dtype != "float32":
        raise IntqError("export: only models whose inputs are float images can be exported")
    for node in graph.nodes:
        _qdq_node(e, node)
    for t in graph.outputs:
        e.b.nodes.append(helper.make_node("Identity", [e.quant[t]], [t]))
    inputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", *graph.values[t].shape[1:]])
              for t in graph.inputs]
    outputs = [helper.make_tensor_value_info(t, _QDQ_TYPES[graph.values[t].dtype], ["N", *graph.values[t].shape[1:]])
               for t in graph.outputs]
    g = helper.make_graph(e.b.nodes, graph.name or "intq", inputs, outputs, e.b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="intq")
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def to_onnx(graph: Graph, format: str = "integer") -> onnx.ModelProto:  # noqa: A002
    """`integer_onnx` or `qdq_onnx` by name (what `intq export --format` takes)."""
    if format == "integer":
        return integer_onnx(graph)
    if format == "qdq":
        return qdq_onnx(graph)
    raise IntqError(f"export format {format!r}: choose integer or qdq")
