"""One torch interpreter of intq's float graph (the graph after every float pass,
`intq.pipeline.float_graph`), driven by a per-op table, with overlays for what is done to it.

`FLOAT_OPS` maps each float op name to its torch forward, `fn(graph, node, *inputs)` ->
one tensor or a tuple (Split); an entry wrapped in `LayerForward` is a weighted layer
(Conv, Linear): `fn(graph, node, x, w, b)`, and the overlay's `layer` hook runs it. A fused
ReLU/ReLU6/Clip (`act_min`/`act_max`, left by `passes.fuse_activation`) is applied by the
interpreter after the op, whatever the op, so no entry repeats it.

`FloatInterpreter(fg)(x)` is the plain float model. `FloatInterpreter(fg)(x, overlay)` runs
the same graph with an `Overlay`'s three hooks:

* `operands(node, inputs)`: the inputs the op reads (an overlay returns the requantized
  copy the compiled model feeds it, e.g. a Conv's narrow input);
* `layer(node, x, w, b, forward)`: a Conv/Linear, given its input, the graph's weight and
  bias and the table's forward; it returns the layer's output before the fused clamp
  (fake-quantized weights, trainable weights, an unfolded BatchNorm are done here);
* `stored(tensor, value, node)`: every tensor the graph computes, right after it is
  computed (node is its producer, None for a graph input); an overlay returns the value
  as the compiled model holds it.

QAT (`intq.twin.qat.QATModel`) and the sensitivity measurements (`intq.alloc.sensitivity`)
are overlays; none sets flags on a model from outside.

This module reads the float graph only (torch and the IR's attributes): it is the float
semantics of the ops a second time, in torch, so that autograd runs through them. It is
checked against the numpy float executor (`tests/test_torch_interpreter.py`), and that
test fails when an op that lowering accepts has no entry here.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import IntqError


class Overlay:
    """The hooks of `FloatInterpreter.forward`, each the identity: the plain float model."""

    def operands(self, node, inputs: list) -> list:
        return inputs

    def layer(self, node, x, w, b, forward):
        return forward(x, w, b)

    def stored(self, tensor: str, value, node):
        return value


PLAIN = Overlay()


class LayerForward:
    """A table entry for an op whose inputs 1 and 2 are a weight and an optional bias: the
    interpreter hands it to the overlay's `layer` hook instead of calling it directly."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, graph, node, x, w, b=None):
        return self.fn(graph, node, x, w, b)


# -- the table -------------------------------------------------------------------------

def _pad(x, pads, value=0.0):
    """Zero (or `value`) padding of the spatial axes, pads as (top, left, bottom, right)."""
    pt, pl, pb, pr = pads
    return F.pad(x, (pl, pr, pt, pb), value=value) if any(pads) else x


def _crop(graph, node, y):
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
    return _crop(graph, node, y)


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
    return _crop(graph, node, total / count)


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


def _channel(v, x):
    """A (C,) or (1,) constant shaped to broadcast along axis 1 of x."""
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


def _channel_affine(graph, node, x, scale, shift):
    return x * _channel(scale, x) + _channel(shift, x)


def _prelu(graph, node, x, slope):
    return torch.where(x >= 0, x, x * _channel(slope, x))


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
    "Relu": lambda g, n, x: torch.relu(x),
    "Clip": _clip,
    "Pad": lambda g, n, x: _pad(x, n.attrs["pads"]),
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


class FloatInterpreter(torch.nn.Module):
    """A float graph in torch. `forward(x, overlay=None, trace=False)`: the graph's output
    (a tuple when it has several), or with trace=True every tensor by name. The graph's
    constants are buffers (float32), so `.to(device)` moves them."""

    def __init__(self, fg):
        super().__init__()
        missing = sorted({f"{n.op} ({n.name})" for n in fg.nodes if n.op not in FLOAT_OPS})
        if missing:
            raise IntqError(f"torch interpreter: no torch form for {', '.join(missing)}")
        if len(fg.inputs) != 1:
            raise IntqError(f"torch interpreter: the model has {len(fg.inputs)} inputs, not one")
        self.fg = fg
        self._buffer_of = {}
        used = dict.fromkeys(i for n in fg.nodes for i in n.inputs if i in fg.constants)
        for k, name in enumerate(used):
            a = np.array(fg.constants[name])  # a copy: torch wants a writable array
            self.register_buffer(f"c{k}", torch.as_tensor(a.astype(np.float32) if a.dtype.kind == "f" else a),
                                 persistent=False)
            self._buffer_of[name] = f"c{k}"

    def constant(self, name: str) -> torch.Tensor:
        """The graph constant `name` as a torch tensor."""
        return getattr(self, self._buffer_of[name])

    def forward(self, x, overlay: Overlay | None = None, trace: bool = False):
        fg, hooks = self.fg, overlay or PLAIN
        t = fg.inputs[0]
        env = {t: hooks.stored(t, x, None)}
        for node in fg.nodes:
            ins = [None if not i else self.constant(i) if i in self._buffer_of else env[i]
                   for i in node.inputs]
            ins = hooks.operands(node, ins)
            fn = FLOAT_OPS[node.op]
            if isinstance(fn, LayerForward):
                x, w, b = (ins + [None])[:3]
                y = hooks.layer(node, x, w, b, lambda x_, w_, b_, n=node: fn(fg, n, x_, w_, b_))
            else:
                y = fn(fg, node, *ins)
            outs = y if isinstance(y, tuple) else (y,)
            for name, v in zip(node.outputs, outs):
                env[name] = hooks.stored(name, fused_clamp(node, v), node)
        if trace:
            return env
        outs = tuple(env[o] for o in fg.outputs)
        return outs[0] if len(outs) == 1 else outs
