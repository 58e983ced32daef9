"""One torch module per op of the integer graph (and the float ops' torch forwards, below): the twin's second, independent statement of
what `intq/ops/integer.py` specifies (it reads the graph's attributes and constants, never
the numpy `run`s or the Numba kernels).

Each module has two forwards:

* `exact(*q)`: integer tensors in (int64, the values the integer graph stores), integer
  tensors out. Every rescale is `arith.requantize` (ties toward +infinity). Convolutions,
  matrix products and window sums run in float64 on integer-valued tensors: exact, because
  every partial sum is an integer below 2**53 (checked per layer at build, see `IntConv`).
* `naive(*v)`: real values in (S * (q - z), float32), real values out, as ordinary fake
  quantization computes them: float weights S_w * q_w, float biases, float residual adds
  and pool means, and `arith.fake_quantize` (float scale, round half to even) at every
  point where the integer graph requantizes. Ops defined by integer tables or integer
  algorithms (lookup, leaky ReLU, products, affine maps, softmax) snap their inputs to the
  integer grid and run as in exact mode: their float form *is* the table.

The file ends with `FLOAT_OPS`, the float graph's ops in torch (the table that
`interpret.FloatInterpreter` runs for QAT and the sensitivities), so that each op's torch
side, integer and float, is in this one file.

`self.rescale` is the one rounding function a module uses in exact mode (an attribute so a
test can swap one layer's rounding for another rule and check that verify catches it).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import IntqError
from . import arith

EXACT_FLOAT64 = 2**53  # every integer below this is a float64 exactly


def _bits_range(dtype: str) -> tuple[int, int]:
    """(lo, hi) of an IR dtype name. Restated rather than imported from intq.ops.integer:
    the twin reads the graph, never the module that holds the specification's `run`s."""
    bits = int("".join(filter(str.isdigit, dtype)))
    if dtype.startswith("u"):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _channel(a, ndim: int, axis: int = 1) -> torch.Tensor:
    """A per-channel constant shaped to broadcast along `axis` of an ndim-D tensor."""
    t = torch.as_tensor(np.asarray(a).astype(np.int64))
    if t.numel() == 1:
        return t.reshape(())
    shape = [1] * ndim
    shape[axis] = t.numel()
    return t.reshape(shape)


def _window_pad(x, kernel, strides, dilations, pads, out_hw, value):
    """x padded by pads (t, l, b, r) and, at the bottom and right, by whatever ceil_mode
    windows read beyond them, so an unpadded torch window op covers every output position
    (`_crop` then cuts it to out_hw)."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    pt, pl, pb, pr = pads
    ho, wo = out_hw
    extra_h = max(0, (ho - 1) * sh + (kh - 1) * dh + 1 - (x.shape[2] + pt + pb))
    extra_w = max(0, (wo - 1) * sw + (kw - 1) * dw + 1 - (x.shape[3] + pl + pr))
    return F.pad(x, (pl, pr + extra_w, pt, pb + extra_h), value=value)


def _crop(y, out_hw):
    return y[:, :, :out_hw[0], :out_hw[1]]


def _exact_weights(graph, node) -> torch.Tensor:
    """A conv/linear's integer weights as float64, after checking that a float64 product
    with its input stays exact: every partial sum is at most max|x| * sum|w| of one output
    channel, which must be below 2**53 (lowering keeps it below 2**31)."""
    w = np.asarray(graph.constants[node.inputs[1]]).astype(np.int64)
    lo, hi = _bits_range(graph.values[node.inputs[0]].dtype)
    bound = int(np.abs(w).reshape(w.shape[0], -1).sum(axis=1).max(initial=0)) * max(-lo, hi)
    if bound >= EXACT_FLOAT64:
        raise IntqError(f"twin: layer {node.name} could sum past 2**53 ({bound}); float64 "
                        f"would not be exact")
    return torch.as_tensor(w, dtype=torch.float64)


class TwinOp(torch.nn.Module):
    """Base: the node's attributes, its input/output names and their quantization
    parameters (scale, zero point) from the graph's metadata."""

    def __init__(self, node, graph):
        super().__init__()
        self.attrs = node.attrs
        self.node_name = node.name
        self.inputs = [t for t in node.inputs if t not in graph.constants]
        self.outputs = list(node.outputs)
        self.qp = graph.metadata.get("qparams", {})
        self.shapes = {t: graph.values[t].shape for t in list(node.inputs) + list(node.outputs)}
        self.rescale = arith.rescale

    def const(self, graph, node, i) -> torch.Tensor:
        return torch.as_tensor(np.asarray(graph.constants[node.inputs[i]]).astype(np.int64))

    def requantize(self, x, b, c, lo, hi, zero_point=0):
        return torch.clamp(self.rescale(x, b, c) + zero_point, lo, hi)

    def scale(self, t) -> float:
        return float(self.qp[t]["scale"])

    def zero_point(self, t) -> int:
        return int(self.qp[t]["zero_point"])

    def grid(self, t, v):
        """The integer q of a naive real value v = S (q - z) of tensor t (nearest step)."""
        return torch.round(v.double() / self.scale(t)).to(torch.int64) + self.zero_point(t)

    def real(self, t, q):
        return ((q.double() - self.zero_point(t)) * self.scale(t)).float()

    def naive(self, *v):
        """Default naive form: snap to the integer grid, run exactly, back to reals."""
        qs = self.exact(*(self.grid(t, x) for t, x in zip(self.inputs, v)))
        return tuple(self.real(t, q) for t, q in zip(self.outputs, qs))


class QuantizeInput(TwinOp):
    """q = clamp(floor(x / scale + 1/2) + z, lo, hi) in float64, after the optional folded
    input normalisation x * in_scale[c] + in_shift[c] (the graph's only float step; same
    IEEE operations in the same order as the specification, so the same integers)."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        a = node.attrs
        self.norm = ("in_scale" in a)
        if self.norm:
            self.register_buffer("in_scale", torch.tensor(a["in_scale"], dtype=torch.float64))
            self.register_buffer("in_shift", torch.tensor(a["in_shift"], dtype=torch.float64))

    def _normalised(self, x):
        x = x.double()
        if self.norm:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x = x * self.in_scale.reshape(shape) + self.in_shift.reshape(shape)
        return x

    def exact(self, x):
        a = self.attrs
        q = torch.floor(self._normalised(x) / a["scale"] + 0.5) + a["zero_point"]
        return (torch.clamp(q, a["lo"], a["hi"]).to(torch.int64),)

    def naive(self, x):
        a = self.attrs
        v = self._normalised(x).float()
        return (arith.fake_quantize(v, a["scale"], a["zero_point"], a["lo"], a["hi"]),)


class IntConv(TwinOp):
    """Accumulator sum(x * w) + bias, x padded with its zero point; float64 convolution of
    integer tensors. Exactness bound: every partial sum is at most max|x| * sum|w| per
    output channel, checked below 2**53 at build (lowering keeps it below 2**31)."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.register_buffer("w", _exact_weights(graph, node))
        self.register_buffer("bias", self.const(graph, node, 2))
        self.out_hw = tuple(graph.values[node.outputs[0]].shape[2:])
        self._naive_params(graph, node, self.w.numpy().astype(np.int64))

    def _naive_params(self, graph, node, w):
        """Float weights S_w * q_w and float bias S_acc * bias_q (the zero-point correction
        that lowering folded into the bias taken back out: naive pads with a real zero)."""
        acc = self.qp.get(node.outputs[0], {})
        if "scales" not in acc:
            return
        x = node.inputs[0]
        s_acc = np.asarray(acc["scales"], np.float64) * np.ones(w.shape[0])
        s_w = s_acc / float(self.qp[x]["scale"])
        flat = w.reshape(w.shape[0], -1)
        bias_q = (np.asarray(graph.constants[node.inputs[2]]).astype(np.int64)
                  + int(self.qp[x]["zero_point"]) * flat.sum(axis=1))
        self.register_buffer("w_real", torch.as_tensor(
            w * s_w.reshape((-1,) + (1,) * (w.ndim - 1)), dtype=torch.float32))
        self.register_buffer("b_real", torch.as_tensor(bias_q * s_acc, dtype=torch.float32))

    def _conv(self, x, w, pad_value):
        a = self.attrs
        xp = _window_pad(x, w.shape[2:], a["strides"], a["dilations"], a["pads"], self.out_hw,
                         pad_value)
        y = F.conv2d(xp, w, stride=tuple(a["strides"]), dilation=tuple(a["dilations"]),
                     groups=a["groups"])
        return _crop(y, self.out_hw)

    def exact(self, x):
        acc = self._conv(x.double(), self.w, float(self.attrs["x_zero_point"]))
        return (acc.to(torch.int64) + self.bias.reshape(1, -1, 1, 1),)

    def naive(self, x):
        return (self._conv(x.float(), self.w_real, 0.0) + self.b_real.reshape(1, -1, 1, 1),)


class IntLinear(IntConv):
    """Accumulator x W^T + bias, as a float64 matrix product of integers (same bound)."""

    def __init__(self, node, graph):
        TwinOp.__init__(self, node, graph)
        self.register_buffer("w", _exact_weights(graph, node))
        self.register_buffer("bias", self.const(graph, node, 2))
        self._naive_params(graph, node, self.w.numpy().astype(np.int64))

    def exact(self, x):
        return (F.linear(x.double(), self.w).to(torch.int64) + self.bias,)

    def naive(self, x):
        return (F.linear(x.float(), self.w_real) + self.b_real,)


class Requantize(TwinOp):
    """clamp(DN(x - z_in) + z_out, lo, hi), per channel: HAWQ's QuantAct."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        nd = len(graph.values[node.inputs[0]].shape)
        self.register_buffer("b", _channel(graph.constants[node.inputs[1]], nd))
        self.register_buffer("c", _channel(graph.constants[node.inputs[2]], nd))

    def exact(self, x):
        a = self.attrs
        return (self.requantize(x - a["in_zero_point"], self.b, self.c, a["lo"], a["hi"],
                                a["out_zero_point"]),)

    def naive(self, x):
        a, o = self.attrs, self.outputs[0]
        return (arith.fake_quantize(x, self.scale(o), a["out_zero_point"], a["lo"], a["hi"]),)


class _Join(TwinOp):
    """Add and concat: k branches, each with its own multiplier (b_i, c_i)."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        k = node.attrs["n"]
        nd = len(graph.values[node.outputs[0]].shape)
        for i in range(k):
            self.register_buffer(f"b{i}", _channel(graph.constants[node.inputs[k + i]], nd))
            self.register_buffer(f"c{i}", _channel(graph.constants[node.inputs[2 * k + i]], nd))

    def branches(self):
        return [(getattr(self, f"b{i}"), getattr(self, f"c{i}"), int(z))
                for i, z in enumerate(self.attrs["zero_points"])]


class IntAdd(_Join):
    """HAWQ-V3 eq. 7: clamp(sum_i DN_i(s_i (x_i - z_i)) + offset + z_out, lo, hi), each
    branch rounded by its own multiplier before the sum (signs and offset: `ops.integer`)."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        k = node.attrs["n"]
        self.signs = list(node.attrs.get("signs") or [1] * k)
        off = graph.constants[node.inputs[3 * k]] if node.attrs.get("offset") else 0
        self.register_buffer("offset", torch.as_tensor(np.asarray(off, np.int64)))

    def exact(self, *xs):
        a = self.attrs
        total = sum(self.requantize(s * (x - z), b, c, arith.INT64_MIN, arith.INT64_MAX)
                    for x, (b, c, z), s in zip(xs, self.branches(), self.signs))
        return (torch.clamp(total + self.offset + a["out_zero_point"], a["lo"], a["hi"]),)

    def naive(self, *xs):
        a = self.attrs
        s = self.scale(self.outputs[0])
        total = sum(sign * x for sign, x in zip(self.signs, xs)) + self.offset.double() * s
        return (arith.fake_quantize(total, s, a["out_zero_point"], a["lo"], a["hi"]),)


class IntConcat(_Join):
    """HAWQ-V3 eq. 18: each branch rescaled to the output scale by its own multiplier."""

    def exact(self, *xs):
        a = self.attrs
        parts = [self.requantize(x - z, b, c, a["lo"], a["hi"], a["out_zero_point"])
                 for x, (b, c, z) in zip(xs, self.branches())]
        return (torch.cat(parts, dim=a["axis"]),)

    def naive(self, *xs):
        a = self.attrs
        s = self.scale(self.outputs[0])
        return (torch.cat([arith.fake_quantize(x, s, a["out_zero_point"], a["lo"], a["hi"])
                           for x in xs], dim=a["axis"]),)


class IntAvgPool(TwinOp):
    """Window sum of (x - z_in) (float64 sums of integers, exact), then one DN whose
    multiplier holds 1/count; naive: the float mean over the same cells, fake-quantized."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.register_buffer("b", self.const(graph, node, 1))
        self.register_buffer("c", self.const(graph, node, 2))
        self.out_hw = tuple(graph.values[node.outputs[0]].shape[2:])
        # The cells each output averages: the multiplier is S_in / (count * S_out).
        x, o = node.inputs[0], node.outputs[0]
        if x in self.qp and o in self.qp:
            m = self.b.double() / torch.pow(2.0, self.c.double())
            ratio = self.scale(x) / self.scale(o)
            self.register_buffer("count", torch.round(ratio / m).to(torch.float32))

    def _sum(self, v):
        a = self.attrs
        vp = _window_pad(v, a["kernel_shape"], a["strides"], (1, 1), a["pads"], self.out_hw, 0.0)
        s = F.avg_pool2d(vp, tuple(a["kernel_shape"]), tuple(a["strides"]), divisor_override=1)
        return _crop(s, self.out_hw)

    def exact(self, x):
        a = self.attrs
        s = self._sum((x - a["in_zero_point"]).double()).to(torch.int64)
        return (self.requantize(s, self.b, self.c, a["lo"], a["hi"], a["out_zero_point"]),)

    def naive(self, x):
        a = self.attrs
        mean = self._sum(x.float()) / self.count
        return (arith.fake_quantize(mean, self.scale(self.outputs[0]), a["out_zero_point"],
                                    a["lo"], a["hi"]),)


class IntGlobalAvgPool(TwinOp):
    """Sum over H x W of (x - z_in) in int64, then one DN including 1/HW."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.register_buffer("b", self.const(graph, node, 1))
        self.register_buffer("c", self.const(graph, node, 2))

    def exact(self, x):
        a = self.attrs
        s = (x - a["in_zero_point"]).sum(dim=(2, 3), keepdim=bool(a.get("keepdims", 1)))
        return (self.requantize(s, self.b, self.c, a["lo"], a["hi"], a["out_zero_point"]),)

    def naive(self, x):
        a = self.attrs
        mean = x.float().mean(dim=(2, 3), keepdim=bool(a.get("keepdims", 1)))
        return (arith.fake_quantize(mean, self.scale(self.outputs[0]), a["out_zero_point"],
                                    a["lo"], a["hi"]),)


class MaxPool(TwinOp):
    """Window maximum, padding that never wins (-infinity); float64 holds every integer of
    the graph exactly, so the maximum is the integer one."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.out_hw = tuple(graph.values[node.outputs[0]].shape[2:])

    def _pool(self, x):
        a = self.attrs
        dil = tuple(a.get("dilations", (1, 1)))
        xp = _window_pad(x, a["kernel_shape"], a["strides"], dil, a["pads"], self.out_hw,
                         -math.inf)
        y = F.max_pool2d(xp, tuple(a["kernel_shape"]), tuple(a["strides"]), dilation=dil)
        return _crop(y, self.out_hw)

    def exact(self, x):
        return (self._pool(x.double()).to(torch.int64),)

    def naive(self, x):
        return (self._pool(x.float()),)


class IntClamp(TwinOp):
    def exact(self, x):
        return (torch.clamp(x, self.attrs["lo"], self.attrs["hi"]),)

    def naive(self, x):
        t = self.inputs[0]
        s, z = self.scale(t), self.zero_point(t)
        return (torch.clamp(x, (self.attrs["lo"] - z) * s, (self.attrs["hi"] - z) * s),)


class IntPad(TwinOp):
    """Pad with the tensor's zero point (a real zero), around and between elements."""

    def exact(self, x):
        return (_pad(x, self.attrs["pads"], int(self.attrs["value"]), self.attrs.get("interior")),)

    def naive(self, x):
        return (_pad(x, self.attrs["pads"], 0.0, self.attrs.get("interior")),)


class IntAffine(TwinOp):
    """clamp(DN_c(sign[c] (x - z_in)) + zero_points[c], lo, hi) per channel."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        nd = len(graph.values[node.inputs[0]].shape)
        for i, k in enumerate(("b", "c", "sign", "zps"), start=1):
            self.register_buffer(k, _channel(graph.constants[node.inputs[i]], nd))

    def exact(self, x):
        a = self.attrs
        return (self.requantize((x - a["in_zero_point"]) * self.sign, self.b, self.c, a["lo"],
                                a["hi"], self.zps),)


class IntAbs(Requantize):
    """clamp(DN(|x - z_in|) + z_out, lo, hi): Requantize's constants, of |x - z_in|."""

    def exact(self, x):
        a = self.attrs
        return (self.requantize(torch.abs(x - a["in_zero_point"]), self.b, self.c, a["lo"], a["hi"],
                                a["out_zero_point"]),)


class IntLookup(TwinOp):
    """table[x - offset]."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.register_buffer("table", self.const(graph, node, 1))

    def exact(self, x):
        return (self.table[x - self.attrs["offset"]],)


class IntLeakyRelu(TwinOp):
    """DN_pos(d) for d = x - z_in >= 0, DN_neg(sign d) below, then + z_out and clamp."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        nd = len(graph.values[node.inputs[0]].shape)
        for i, k in enumerate(("b_pos", "c_pos", "b_neg", "c_neg", "sign"), start=1):
            self.register_buffer(k, _channel(graph.constants[node.inputs[i]], nd))

    def exact(self, x):
        a = self.attrs
        d = x - a["in_zero_point"]
        pos = self.requantize(d, self.b_pos, self.c_pos, a["lo"], a["hi"], a["out_zero_point"])
        neg = self.requantize(d * self.sign, self.b_neg, self.c_neg, a["lo"], a["hi"],
                              a["out_zero_point"])
        return (torch.where(d >= 0, pos, neg),)


class IntMul(TwinOp):
    """clamp(DN((a - z_a) (b - z_b)) + z_out, lo, hi), torch broadcasting (numpy's rules)."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.register_buffer("mb", self.const(graph, node, 2))
        self.register_buffer("mc", self.const(graph, node, 3))
        if node.attrs.get("b_constant"):
            self.register_buffer("b", self.const(graph, node, 1))

    def exact(self, x, y=None):
        a = self.attrs
        y = self.b if y is None else y
        prod = (x - a["a_zero_point"]) * (y - a["b_zero_point"])
        return (self.requantize(prod, self.mb, self.mc, a["lo"], a["hi"], a["out_zero_point"]),)


class IntSoftmax(TwinOp):
    """Integer softmax (see the spec's docstring): table exponentials of the max-subtracted
    input, a Q29 reciprocal of their sum by three Newton steps, one DN per element."""

    C1 = round(48 / 17 * 2**29)
    C2 = round(32 / 17 * 2**29)

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.register_buffer("table", self.const(graph, node, 1))

    def exact(self, x):
        a = self.attrs
        axes = tuple(int(v) % x.dim() for v in a["axes"])
        d = torch.amax(x, dim=axes, keepdim=True) - x
        e = self.table[torch.clamp(d, max=self.table.numel() - 1)]
        s = e.sum(dim=axes, keepdim=True)
        k = sum((s >= (1 << j)).to(torch.int64) for j in range(32))  # bit length of s
        m = s << (31 - k)
        r = self.C1 - ((self.C2 * m) >> 31)
        for _ in range(3):
            r = (r * ((1 << 30) - ((m * r) >> 31))) >> 29
        return (self.requantize(e, r, 21 + k, a["lo"], a["hi"]),)


# -- data movement: the same on integers and on reals -----------------------------------
class _Move(TwinOp):
    def naive(self, *xs):
        return self.exact(*xs)


class Flatten(_Move):
    def exact(self, x):
        axis = self.attrs.get("axis", 1)
        return (x.reshape(int(np.prod(x.shape[:axis])), -1),)


class Reshape(_Move):
    def exact(self, x):
        target = [x.shape[i] if t == 0 else t for i, t in enumerate(self.attrs["shape"])]
        return (x.reshape(target),)


class Transpose(_Move):
    def exact(self, x):
        return (x.permute(*self.attrs["perm"]).contiguous(),)


class Squeeze(_Move):
    def exact(self, x):
        for ax in sorted((int(a) % x.dim() for a in self.attrs["axes"]), reverse=True):
            x = x.squeeze(ax)
        return (x,)


class Unsqueeze(_Move):
    def exact(self, x):
        rank = x.dim() + len(self.attrs["axes"])
        for ax in sorted(int(a) % rank for a in self.attrs["axes"]):
            x = x.unsqueeze(ax)
        return (x,)


class Slice(_Move):
    """ONNX slicing (clamped starts/ends, any step, negative too) as an index gather."""

    def exact(self, x):
        a = self.attrs
        for ax, s, e, st in zip(a["axes"], a["starts"], a["ends"], a["steps"]):
            ax = int(ax) % x.dim()
            idx = list(range(x.shape[ax]))[slice(int(s), int(e), int(st))]
            x = torch.index_select(x, ax, torch.tensor(idx, dtype=torch.int64, device=x.device))
        return (x,)


class Split(_Move):
    def exact(self, x):
        return tuple(torch.split(x, list(self.attrs["split"]), dim=self.attrs["axis"]))


def _resize_nearest(x, attrs):
    rows = torch.as_tensor(attrs["rows"], dtype=torch.long, device=x.device)
    cols = torch.as_tensor(attrs["cols"], dtype=torch.long, device=x.device)
    return x.index_select(2, rows).index_select(3, cols)


def _linear_taps(x, attrs):
    """The four source grids x[rows_a, cols_b] (as `ops.resize._taps`)."""
    idx = lambda name: torch.as_tensor(attrs[name], dtype=torch.long, device=x.device)
    rows = [x.index_select(2, idx(f"rows{a}")) for a in (0, 1)]
    return [[r.index_select(3, idx(f"cols{b}")) for b in (0, 1)] for r in rows]


def _resize_linear(x, attrs):
    t = _linear_taps(x, attrs)
    w = lambda name, shape: torch.as_tensor(attrs[name], dtype=x.dtype, device=x.device).reshape(shape)
    wr = [w(f"row_w{a}", (-1, 1)) for a in (0, 1)]
    wc = [w(f"col_w{b}", (1, -1)) for b in (0, 1)]
    return sum(wc[b] * wr[a] * t[a][b] for a in (0, 1) for b in (0, 1))


class IntResizeLinear(TwinOp):
    """Bilinear resize in fixed point: one rounding after the exact sum (`ops.resize`)."""

    def exact(self, x):
        a = self.attrs
        f = int(a["frac_bits"])
        t = _linear_taps(x, a)
        w1r = torch.as_tensor(a["row_weights"], dtype=torch.int64, device=x.device).reshape(-1, 1)
        w1c = torch.as_tensor(a["col_weights"], dtype=torch.int64, device=x.device).reshape(1, -1)
        wr, wc = ((1 << f) - w1r, w1r), ((1 << f) - w1c, w1c)
        s = sum(wr[i] * wc[j] * t[i][j] for i in (0, 1) for j in (0, 1))
        return ((s + (1 << (2 * f - 1))) >> (2 * f),)


class ResizeNearest(_Move):
    def exact(self, x):
        return (_resize_nearest(x, self.attrs),)


MODULES = {cls.__name__: cls for cls in (
    QuantizeInput, IntConv, IntLinear, Requantize, IntAdd, IntConcat, IntAvgPool,
    IntGlobalAvgPool, MaxPool, IntClamp, IntPad, IntAffine, IntAbs, IntLookup, IntLeakyRelu, IntMul,
    IntSoftmax, IntResizeLinear, Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Slice, Split,
    ResizeNearest)}


# -- the float graph's ops in torch: the table `interpret.FloatInterpreter` runs ----------
# An op's torch side lives here in full: its integer twin module above (MODULES) and, for a
# float op, its float forward below (FLOAT_OPS), the form QAT and the sensitivities train
# and differentiate through.

class LayerForward:
    """A table entry for an op whose inputs 1 and 2 are a weight and an optional bias: the
    interpreter hands it to the overlay's `layer` hook instead of calling it directly."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, graph, node, x, w, b=None):
        return self.fn(graph, node, x, w, b)



def _pad(x, pads, value=0.0, interior=None):
    """Zero (or `value`) padding of the spatial axes, pads as (top, left, bottom, right),
    and `interior` (ih, iw) values between elements (`intq.ops.pad`)."""
    pt, pl, pb, pr = pads
    if interior is not None and any(interior):
        ih, iw = interior
        n, c, h, w = x.shape
        out = x.new_full((n, c, h + (h - 1) * ih + pt + pb, w + (w - 1) * iw + pl + pr), value)
        out[:, :, pt:pt + (h - 1) * (ih + 1) + 1:ih + 1, pl:pl + (w - 1) * (iw + 1) + 1:iw + 1] = x
        return out
    return F.pad(x, (pl, pr, pt, pb), value=value) if any(pads) else x


def _crop_to_graph(graph, node, y):
    """y cut to the node's static output size: torch lets a ceil_mode window start in the
    end padding we pad explicitly, ONNX (and `ops.window`) does not."""
    h, w = graph.values[node.output].shape[2:]
    return y[:, :, :h, :w]


def _conv(graph, node, x, w, b):
    a = node.attrs
    return F.conv2d(_pad(x, a["pads"]), w, b, stride=tuple(a["strides"]),
                    dilation=tuple(a["dilations"]), groups=a["groups"])


def _linear(graph, node, x, w, b):
    return F.linear(x, w, b)


def _max_pool(graph, node, x):
    a = node.attrs
    y = F.max_pool2d(_pad(x, a["pads"], -math.inf), tuple(a["kernel_shape"]), tuple(a["strides"]),
                     dilation=tuple(a.get("dilations", (1, 1))), ceil_mode=bool(a.get("ceil_mode", 0)))
    return _crop_to_graph(graph, node, y)


def _average_pool(graph, node, x):
    """Window sums over the zero-padded input divided by each window's count: the cells of
    the input, plus the padding's when count_include_pad, never what ceil_mode reads past
    the padding (as `ops.pool.AveragePool`)."""
    a = node.attrs
    k, s, ceil = tuple(a["kernel_shape"]), tuple(a["strides"]), bool(a.get("ceil_mode", 0))
    total = F.avg_pool2d(_pad(x, a["pads"]), k, s, ceil_mode=ceil, divisor_override=1)
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    count = F.avg_pool2d(_pad(ones, a["pads"], float(a["count_include_pad"])), k, s,
                         ceil_mode=ceil, divisor_override=1)
    return _crop_to_graph(graph, node, total / count)


def _global_average_pool(graph, node, x):
    return x.mean(dim=(2, 3), keepdim=bool(node.attrs.get("keepdims", 1)))


def _flatten(graph, node, x):
    axis = node.attrs.get("axis", 1) % max(x.dim(), 1)
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _reshape(graph, node, x):
    """The static output shape with the batch of this run: a graph exported with a fixed
    batch spells it as a number (ShuffleNet's channel shuffle reshapes to [1, g, c/g, h, w]),
    and training feeds other batch sizes. Where the reshape does not carry the batch, the
    target as written."""
    out = graph.values[node.output].shape
    inp = graph.values[node.inputs[0]].shape
    if len(out) and (out[0] is None or (inp and out[0] == inp[0])):
        return x.reshape((x.shape[0],) + tuple(out[1:]))
    return x.reshape([x.shape[i] if t == 0 else t for i, t in enumerate(node.attrs["shape"])])


def _transpose(graph, node, x):
    return x.permute(*node.attrs["perm"])


def _squeeze(graph, node, x):
    for a in sorted((int(a) % x.dim() for a in node.attrs["axes"]), reverse=True):
        x = x.squeeze(a)
    return x


def _unsqueeze(graph, node, x):
    rank = x.dim() + len(node.attrs["axes"])
    for a in sorted(int(a) % rank for a in node.attrs["axes"]):
        x = x.unsqueeze(a)
    return x


def _slice(graph, node, x):
    """ONNX slicing (negative steps included, which torch indexing lacks) off the batch axis."""
    a = node.attrs
    for axis, s, e, st in zip(a["axes"], a["starts"], a["ends"], a["steps"]):
        axis = int(axis) % x.dim()
        idx = range(x.shape[axis])[slice(int(s), int(e), int(st))]
        if idx.step == 1:
            x = x.narrow(axis, idx.start, len(idx))
        else:
            x = x.index_select(axis, torch.as_tensor(list(idx), dtype=torch.long, device=x.device))
    return x


def _split(graph, node, x):
    return tuple(torch.split(x, list(node.attrs["split"]), dim=node.attrs["axis"]))


def _clip(graph, node, x):
    return torch.clamp(x, node.attrs.get("min"), node.attrs.get("max"))


def _float_channel(v, x):
    """A (C,) or (1,) constant shaped to broadcast along axis 1 of x."""
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


def _channel_affine(graph, node, x, scale, shift):
    return x * _float_channel(scale, x) + _float_channel(shift, x)


def _prelu(graph, node, x, slope):
    return torch.where(x >= 0, x, x * _float_channel(slope, x))


def _leaky_relu(graph, node, x):
    return torch.where(x >= 0, x, node.attrs.get("alpha", 0.01) * x)


def _hard_sigmoid(graph, node, x):
    a = node.attrs
    return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0)


def _hard_swish(graph, node, x):
    a = node.attrs
    return x * torch.clamp(a.get("alpha", 1 / 6) * x + a.get("beta", 0.5), 0.0, 1.0)


def _softmax(graph, node, x):
    """Softmax over `axes` (one axis, or several: every axis from `axis` on, opset < 13)."""
    axes = sorted(int(a) % x.dim() for a in node.attrs["axes"])
    if len(axes) == 1:
        return torch.softmax(x, dim=axes[0])
    rest = [d for d in range(x.dim()) if d not in axes]
    p = x.permute(*rest, *axes)
    y = torch.softmax(p.reshape(*p.shape[:len(rest)], -1), dim=-1).reshape(p.shape)
    return y.permute(*np.argsort(rest + axes).tolist())


FLOAT_OPS: dict = {
    "Conv": LayerForward(_conv),
    "Linear": LayerForward(_linear),
    "Add": lambda g, n, *xs: sum(xs[1:], xs[0]),
    "Mul": lambda g, n, a, b: a * b,
    "Sub": lambda g, n, a, b: a - b,
    "Concat": lambda g, n, *xs: torch.cat(xs, dim=n.attrs["axis"]),
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Slice": _slice,
    "Split": _split,
    "ResizeNearest": lambda g, n, x: _resize_nearest(x, n.attrs),
    "ResizeLinear": lambda g, n, x: _resize_linear(x, n.attrs),
    "Relu": lambda g, n, x: torch.relu(x),
    "Clip": _clip,
    "Pad": lambda g, n, x: _pad(x, n.attrs["pads"], 0.0, n.attrs.get("interior")),
    "ChannelAffine": _channel_affine,
    "Sigmoid": lambda g, n, x: torch.sigmoid(x),
    "Tanh": lambda g, n, x: torch.tanh(x),
    "Abs": lambda g, n, x: torch.abs(x),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "Swish": lambda g, n, x: x * torch.sigmoid(x),
    "LeakyRelu": _leaky_relu,
    "PRelu": _prelu,
    "Softmax": _softmax,
}


def is_layer(op: str) -> bool:
    """Whether `op`'s table entry is a weighted layer (run through the `layer` hook)."""
    return isinstance(FLOAT_OPS.get(op), LayerForward)


def fused_clamp(node, y):
    """y clamped by the ReLU/ReLU6/Clip fused into the node, if it has one."""
    lo, hi = node.attrs.get("act_min"), node.attrs.get("act_max")
    return y if lo is None and hi is None else torch.clamp(y, lo, hi)
