"""One torch interpreter of intq's float graph (the graph after every float pass,
`intq.pipeline.float_graph`), driven by a per-op table, with overlays for what is done to it.

`FLOAT_OPS` (in `intq.twin.ops`, beside the integer twin modules: every op's torch side in
one file) maps each float op name to its torch forward, `fn(graph, node, *inputs)` ->
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

import numpy as np
import torch

from ..errors import IntqError
# The table lives with the twin's other torch forms; re-exported for its readers.
from .ops import FLOAT_OPS, LayerForward, fused_clamp, is_layer  # noqa: F401


class Overlay:
    """The hooks of `FloatInterpreter.forward`, each the identity: the plain float model."""

    def operands(self, node, inputs: list) -> list:
        return inputs

    def layer(self, node, x, w, b, forward):
        return forward(x, w, b)

    def stored(self, tensor: str, value, node):
        return value


PLAIN = Overlay()


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
        env = self.run_nodes(fg.nodes, {t: hooks.stored(t, x, None)}, hooks)
        if trace:
            return env
        outs = tuple(env[o] for o in fg.outputs)
        return outs[0] if len(outs) == 1 else outs

    def run_nodes(self, nodes, env: dict, overlay: Overlay | None = None) -> dict:
        """Run `nodes` (a topologically ordered part of the graph) on `env`, {tensor: value}
        holding every tensor they read that no earlier one of them computes; returns env
        with their outputs added. `forward` is this over the whole graph; block-wise
        reconstruction (`intq.rounding`) runs one block at a time."""
        fg, hooks = self.fg, overlay or PLAIN
        for node in nodes:
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
        return env
