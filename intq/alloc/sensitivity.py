"""Per-layer sensitivities Omega_i^(b) for the ILP, measured through the float model in torch
(`intq.twin.interpret.FloatInterpreter`) under an overlay that each measurement builds:

* "hessian" (HAWQ-V2/V3): the average Hessian trace of layer i's weights, Tr(H_i) / n_i, by
  Hutchinson's estimator (E[v^T H v] over Rademacher v, Hessian-vector products by double
  backprop), times ||Q_b(W_i) - W_i||^2 with Q_b the compiler's own weight quantizer. The
  loss is the cross-entropy against the labels, or against the float model's own top-1
  when there are none.
* "perturbation": the change in the network's output when only layer i (its weights and
  its input) is quantized to b bits: the mean loss increase when labels exist, else the
  mean KL divergence of the output distribution from the float model's.

The overlays: `WeightsAsParameters` (the float model, each layer's weight a leaf tensor the
Hessian is taken against) and `OneLayerQuantized` (the float model with one layer's weights
and input fake-quantized as the compiler would at b bits).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..quant.calibrate import Calibration
from ..quant.lower import Lowering
from ..quant.scheme import QuantConfig, quantize_weights
from ..twin.interpret import FloatInterpreter, Overlay, is_layer
from ..twin.qat import fake_quant_act, fake_quant_weight


def hutchinson(loss, params, samples: int, seed: int = 0):
    """Estimates of Tr(H_p) for each tensor p in `params` (H the Hessian of `loss` with
    respect to p), with their standard errors: (means, stderrs), one per tensor."""
    gen = torch.Generator().manual_seed(seed)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    draws = [[] for _ in params]
    for _ in range(samples):
        vs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.dtype) for p in params]
        hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
        for d, hv, v in zip(draws, hvs, vs):
            d.append(float((hv * v).sum()))
    means = [float(np.mean(d)) for d in draws]
    errs = [float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf") for d in draws]
    return means, errs


def _weight_error(w: np.ndarray, bits: int, profile: str) -> float:
    q, s = quantize_weights(w, bits, profile)
    deq = q.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))
    return float(((deq - w.astype(np.float64)) ** 2).sum())


class WeightsAsParameters(Overlay):
    """The float model with each layer's weight replaced by a leaf tensor that requires
    gradients (`params`, {layer: tensor}), initialised to the graph's weight."""

    def __init__(self, interp: FloatInterpreter):
        self.params = {n.name: interp.constant(n.inputs[1]).detach().clone().requires_grad_(True)
                       for n in interp.fg.nodes if is_layer(n.op)}

    def layer(self, node, x, w, b, forward):
        return forward(x, self.params[node.name], b)


class OneLayerQuantized(Overlay):
    """The float model with only layer `name` quantized to `bits`: its input at the narrow
    unsigned parameters lowering gives it (calibration ranges), its weights per channel as
    the compiler's weight quantizer rounds them."""

    def __init__(self, lowering: Lowering, name: str, bits: int):
        self.lw, self.name, self.bits = lowering, name, bits

    def operands(self, node, ins):
        if node.name != self.name:
            return ins
        qp = self.lw.act_qparams(node.inputs[0], self.bits, narrow=True)
        return [fake_quant_act(ins[0], qp), *ins[1:]]

    def layer(self, node, x, w, b, forward):
        if node.name == self.name:
            w = fake_quant_weight(w, self.bits, self.lw.cfg.profile)
        return forward(x, w, b)


def _labels(model, x, y):
    if y is not None:
        return torch.as_tensor(np.asarray(y, np.int64))
    with torch.no_grad():
        return model(x).argmax(1)


def _layers(fg):
    return [n.name for n in fg.nodes if is_layer(n.op)]


def hessian_sensitivity(fg, cfg: QuantConfig, x, y=None, bits=(4, 8), samples: int = 32,
                        seed: int = 0, progress=None) -> dict:
    """{layer: {b: omega}} by the Hutchinson average trace times the weight error, on the
    float graph `fg` (its weights are the folded ones)."""
    model = FloatInterpreter(fg).eval()
    overlay = WeightsAsParameters(model)
    xt = torch.as_tensor(np.asarray(x, np.float32))
    labels = _labels(model, xt, y)
    names = _layers(fg)
    params = [overlay.params[n] for n in names]
    loss = F.cross_entropy(model(xt, overlay), labels)
    traces, _ = hutchinson(loss, params, samples, seed)
    out = {}
    for i, (n, p) in enumerate(zip(names, params)):
        avg = traces[i] / p.numel()
        w = p.detach().double().numpy()
        out[n] = {b: avg * _weight_error(w, b, cfg.profile) for b in bits}
        if progress:
            progress(i + 1, len(names))
    return out


def perturbation_sensitivity(fg, cfg: QuantConfig, calib, x, y=None, bits=(4, 8), batch: int = 64,
                             progress=None) -> dict:
    """{layer: {b: omega}}: the output change with only that layer at b bits, its input
    quantized over the range it has on the calibration images `calib`."""
    model = FloatInterpreter(fg).eval()
    lw = Lowering(fg, Calibration(fg, calib), cfg)
    xt = torch.as_tensor(np.asarray(x, np.float32))
    yt = None if y is None else torch.as_tensor(np.asarray(y, np.int64))

    def run(overlay=None):
        with torch.no_grad():
            return torch.cat([model(xt[i:i + batch], overlay) for i in range(0, len(xt), batch)])

    base = run()
    base_logp = F.log_softmax(base, dim=1)
    out = {}
    names = _layers(fg)
    for i, n in enumerate(names):
        out[n] = {}
        for b in bits:
            z = run(OneLayerQuantized(lw, n, b))
            if yt is not None:
                out[n][b] = float(F.cross_entropy(z, yt) - F.cross_entropy(base, yt))
            else:
                out[n][b] = float(F.kl_div(F.log_softmax(z, dim=1), base_logp, log_target=True,
                                           reduction="batchmean"))
        if progress:
            progress(i + 1, len(names))
    return out
