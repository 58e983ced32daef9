"""Per-layer sensitivities Omega_i^(c) for the ILP, one per layer and bit-width choice c =
(w_bits, a_bits) ("w8a8", "w4a8", "w4a4"), measured through the float model in torch
(`intq.twin.interpret.FloatInterpreter`) under an overlay that each measurement builds:

* "hessian" (HAWQ-V2/V3): the average Hessian trace of layer i's weights, Tr(H_w) / n_w, by
  Hutchinson's estimator (E[v^T H v] over Rademacher v, Hessian-vector products by double
  backprop), times ||Q_w(W_i) - W_i||^2 with Q_w the compiler's own weight quantizer at
  w_bits; plus the same second-order term for the layer's input (HAWQ-V2's extension to
  activations): the average Hessian trace with respect to that input, Tr(H_a) / n_a, over
  the same images, times ||Q_a(a_i) - a_i||^2, the input fake-quantized at a_bits over its
  calibrated range as lowering quantizes it (the inputs enter as zero perturbations that
  require gradients; weights and inputs get a Hutchinson run each, since one joint run
  adds their cross terms to every estimate). Like HAWQ's weight term it drops the
  first-order term and the cross terms: the rounding errors are taken as uncorrelated
  with the gradient and with each other, and the Hessian block as isotropic (trace / n). Without the activation term W4A8 and W4A4 would score the same and W4A4,
  cheaper in every cost, would always win. The loss is the cross-entropy against the
  labels, or against the float model's own top-1 when there are none.
* "perturbation": the change in the network's output when only layer i is quantized, its
  weights at w_bits and its input at a_bits: the mean loss increase when labels exist, else
  the mean KL divergence of the output distribution from the float model's.

Both take `weights`, an optional callable `weights(layer, w_bits)` returning the
dequantized weights (float array of the float graph's weight shape) to use in place of
nearest rounding, or None for nearest rounding (learned rounding plugs in here).

The overlays: `WeightsAsParameters` (the float model, each layer's weight a leaf tensor the
Hessian is taken against, and optionally each layer's input plus a zero leaf tensor) and
`OneLayerQuantized` (the float model with one layer's weights and input fake-quantized as
the compiler would at that choice).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import IntqError
from ..quant.calibrate import Calibration
from ..quant.lower import Lowering
from ..quant.scheme import CHOICES, QuantConfig, normalise_choice, parse_choice, quantize_weights
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


def supplied_weights(weights, name: str, w_bits: int, shape) -> np.ndarray | None:
    """`weights(name, w_bits)` as float64 of the layer's weight shape, or None (nearest
    rounding) when there is no callable or it returns None."""
    if weights is None:
        return None
    w = weights(name, w_bits)
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float64)
    if w.shape != tuple(shape):
        raise IntqError(f"layer {name}: supplied {w_bits}-bit weights have shape {w.shape}, "
                        f"the layer's are {tuple(shape)}")
    return w


def _weight_error(w: np.ndarray, bits: int, profile: str, deq: np.ndarray | None = None) -> float:
    """||Q_b(W) - W||^2, Q_b nearest rounding (or `deq`, the supplied dequantized weights)."""
    if deq is None:
        q, s = quantize_weights(w, bits, profile)
        deq = q.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))
    return float(((deq - w.astype(np.float64)) ** 2).sum())


class WeightsAsParameters(Overlay):
    """The float model with each layer's weight replaced by a leaf tensor that requires
    gradients (`params`, {layer: tensor}), initialised to the graph's weight. With
    `inputs=True` each layer's input also gets a zero leaf tensor added (`deltas`, made on
    the first forward, when the shapes are known), so the Hessian can be taken with respect
    to the inputs too; `values` holds the inputs themselves."""

    def __init__(self, interp: FloatInterpreter, inputs: bool = False):
        self.params = {n.name: interp.constant(n.inputs[1]).detach().clone().requires_grad_(True)
                       for n in interp.fg.nodes if is_layer(n.op)}
        self.inputs = inputs
        self.deltas: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}

    def operands(self, node, ins):
        if not (self.inputs and is_layer(node.op)):
            return ins
        if node.name not in self.deltas:
            self.values[node.name] = ins[0].detach()
            self.deltas[node.name] = torch.zeros_like(ins[0]).requires_grad_(True)
        return [ins[0] + self.deltas[node.name], *ins[1:]]

    def layer(self, node, x, w, b, forward):
        return forward(x, self.params[node.name], b)


class OneLayerQuantized(Overlay):
    """The float model with only layer `name` quantized at (w_bits, a_bits): its input at
    the narrow unsigned parameters lowering gives it at a_bits (calibration ranges), its
    weights per channel as the compiler's weight quantizer rounds them at w_bits, or the
    dequantized weights `weights(name, w_bits)` returns."""

    def __init__(self, lowering: Lowering, name: str, w_bits: int, a_bits: int, weights=None):
        self.lw, self.name, self.w_bits, self.a_bits = lowering, name, w_bits, a_bits
        self.weights = weights

    def operands(self, node, ins):
        if node.name != self.name:
            return ins
        qp = self.lw.act_qparams(node.inputs[0], self.a_bits, narrow=True)
        return [fake_quant_act(ins[0], qp), *ins[1:]]

    def layer(self, node, x, w, b, forward):
        if node.name == self.name:
            deq = supplied_weights(self.weights, self.name, self.w_bits, w.shape)
            w = (fake_quant_weight(w, self.w_bits, self.lw.cfg.profile) if deq is None
                 else torch.as_tensor(deq, dtype=w.dtype, device=w.device))
        return forward(x, w, b)


def _labels(model, x, y):
    if y is not None:
        return torch.as_tensor(np.asarray(y, np.int64))
    with torch.no_grad():
        return model(x).argmax(1)


def _layers(fg):
    return [n.name for n in fg.nodes if is_layer(n.op)]


def _choices(choices):
    """Canonical choice names (4 -> "w4a4"), each once, in CHOICES order."""
    names = {normalise_choice(c, "choice") for c in choices}
    return [c for c in CHOICES if c in names]


def hessian_sensitivity(fg, cfg: QuantConfig, x, y=None, choices=CHOICES, samples: int = 32,
                        seed: int = 0, progress=None, calib=None, weights=None) -> dict:
    """{layer: {choice: omega}}: Tr(H_w)/n_w ||Q_w(W) - W||^2 + Tr(H_a)/n_a ||Q_a(a) - a||^2
    on the float graph `fg` (its weights are the folded ones), the input a of each layer
    on the images x, quantized over its range on `calib` (default: x)."""
    choices = _choices(choices)
    model = FloatInterpreter(fg).eval()
    lw = Lowering(fg, Calibration(fg, x if calib is None else calib), cfg)
    overlay = WeightsAsParameters(model, inputs=True)
    xt = torch.as_tensor(np.asarray(x, np.float32))
    labels = _labels(model, xt, y)
    names = _layers(fg)
    loss = F.cross_entropy(model(xt, overlay), labels)
    # Two runs, weights then inputs: one joint run would add the weight-input cross terms
    # of H v to every estimate (zero mean, but measured to swamp the inputs' traces).
    w_traces, _ = hutchinson(loss, [overlay.params[n] for n in names], samples, seed)
    a_traces, _ = hutchinson(loss, [overlay.deltas[n] for n in names], samples, seed + 1)
    nodes = {n.name: n for n in fg.nodes}
    out = {}
    for i, n in enumerate(names):
        w = overlay.params[n].detach().double().numpy()
        a = overlay.values[n]
        w_avg, a_avg = w_traces[i] / w.size, a_traces[i] / a.numel()
        w_term = {wb: w_avg * _weight_error(w, wb, cfg.profile,
                                            supplied_weights(weights, n, wb, w.shape))
                  for wb in {parse_choice(c)[0] for c in choices}}
        a_term = {}
        for ab in {parse_choice(c)[1] for c in choices}:
            qp = lw.act_qparams(nodes[n].inputs[0], ab, narrow=True)
            err = (fake_quant_act(a.double(), qp) - a.double()).pow(2).sum()
            a_term[ab] = a_avg * float(err)
        out[n] = {c: w_term[parse_choice(c)[0]] + a_term[parse_choice(c)[1]] for c in choices}
        if progress:
            progress(i + 1, len(names))
    return out


def perturbation_sensitivity(fg, cfg: QuantConfig, calib, x, y=None, choices=CHOICES,
                             batch: int = 64, progress=None, weights=None) -> dict:
    """{layer: {choice: omega}}: the output change with only that layer quantized at the
    choice's (w_bits, a_bits), its input over the range it has on the calibration images
    `calib`."""
    choices = _choices(choices)
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
        for c in choices:
            z = run(OneLayerQuantized(lw, n, *parse_choice(c), weights=weights))
            if yt is not None:
                out[n][c] = float(F.cross_entropy(z, yt) - F.cross_entropy(base, yt))
            else:
                out[n][c] = float(F.kl_div(F.log_softmax(z, dim=1), base_logp, log_target=True,
                                           reduction="batchmean"))
        if progress:
            progress(i + 1, len(names))
    return out
