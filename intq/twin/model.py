"""The twin of a compiled model: a `torch.nn.Module` with one submodule per node of the
integer graph (`intq.twin.ops`), run in graph order.

Its forward is in the fake-quant domain, as a PyTorch user thinks: it returns the real
values S * (q - z) of the graph outputs. Inside, exact mode carries the integers q
themselves from op to op (never recovering q from S * q), so it computes the integer
graph's bits; naive mode carries float32 reals and rounds in float at every quantization
point. `trace(x)` returns every tensor, keyed by the integer graph's names.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import IntqError
from .ops import MODULES

MODES = ("exact", "naive")


class TwinModel(torch.nn.Module):
    def __init__(self, graph, device="cpu"):
        super().__init__()
        unknown = sorted({n.op for n in graph.nodes} - set(MODULES))
        if unknown:
            raise IntqError(f"twin: no module for op(s) {', '.join(unknown)}")
        self.input_name = graph.inputs[0]
        self.output_names = list(graph.outputs)
        self.output_qparams = {o: graph.metadata["outputs"][o] for o in graph.outputs}
        # ModuleDict keys may not contain "."; the order is the graph's (a topological one).
        self.layers = torch.nn.ModuleDict()
        self.node_names = []
        for i, node in enumerate(graph.nodes):
            self.layers[f"n{i}"] = MODULES[node.op](node, graph)
            self.node_names.append(node.name)
        self.node_ops = [n.op for n in graph.nodes]
        self.to(device)

    @property
    def device(self):
        return next(iter(self.buffers()), torch.empty(0)).device

    def trace(self, x, mode: str = "exact") -> dict:
        """Every tensor for input images x (float NCHW, numpy or torch): int64 integers in
        exact mode, float32 reals in naive mode."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        env = {self.input_name: torch.as_tensor(np.asarray(x, np.float32) if not
                                                torch.is_tensor(x) else x).to(self.device)}
        with torch.no_grad():
            for layer in self.layers.values():
                run = layer.exact if mode == "exact" else layer.naive
                for name, value in zip(layer.outputs, run(*(env[t] for t in layer.inputs))):
                    env[name] = value
        return env

    def forward(self, x, mode: str = "exact"):
        """The real values S * (q - z) of the first output (float32)."""
        env = self.trace(x, mode)
        o = self.output_names[0]
        if mode == "naive":
            return env[o]
        qp = self.output_qparams[o]
        return ((env[o].double() - qp["zero_point"]) * qp["scale"]).float()


def from_compiled(model, device="cpu") -> TwinModel:
    """The twin of an `intq.Model` (or of an integer `Graph`) on a torch device."""
    graph = getattr(model, "integer", model)
    return TwinModel(graph, device)
