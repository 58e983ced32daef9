"""Per-layer sensitivities Omega_i^(b) for the ILP, measured through the float model in torch
(the trainable twin of `intq.twin.qat` with quantization switched off):

* "hessian" (HAWQ-V2/V3): the average Hessian trace of layer i's weights, Tr(H_i) / n_i, by
  Hutchinson's estimator (E[v^T H v] over Rademacher v, Hessian-vector products by double
  backprop), times ||Q_b(W_i) - W_i||^2 with Q_b the compiler's own weight quantizer. The
  loss is the cross-entropy against the labels, or against the float model's own top-1
  when there are none.
* "perturbation": the change in the network's output when only layer i (its weights and
  its input) is quantized to b bits: the mean loss increase when labels exist, else the
  mean KL divergence of the output distribution from the float model's.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..quant.scheme import quantize_weights


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


def _labels(qm, x, y):
    if y is not None:
        return torch.as_tensor(np.asarray(y, np.int64))
    with torch.no_grad():
        return qm(x).argmax(1)


def hessian_sensitivity(qm, x, y=None, bits=(4, 8), samples: int = 32, seed: int = 0,
                        progress=None) -> dict:
    """{layer: {b: omega}} by the Hutchinson average trace times the weight error. `qm` is
    a QATModel built without BatchNorm records (its weights are the folded ones)."""
    qm.eval()
    qm.quantize, qm.only = False, {}
    xt = torch.as_tensor(np.asarray(x, np.float32))
    labels = _labels(qm, xt, y)
    names = list(qm.keys)
    params = [qm.weights[qm.keys[n] + "_w"] for n in names]
    loss = F.cross_entropy(qm(xt), labels)
    traces, _ = hutchinson(loss, params, samples, seed)
    out = {}
    for i, (n, p) in enumerate(zip(names, params)):
        avg = traces[i] / p.numel()
        w = p.detach().double().numpy()
        out[n] = {b: avg * _weight_error(w, b, qm.cfg.profile) for b in bits}
        if progress:
            progress(i + 1, len(names))
    return out


def perturbation_sensitivity(qm, x, y=None, bits=(4, 8), batch: int = 64, progress=None) -> dict:
    """{layer: {b: omega}}: the output change with only that layer at b bits."""
    qm.eval()
    qm.quantize, qm.only = False, {}
    xt = torch.as_tensor(np.asarray(x, np.float32))
    yt = None if y is None else torch.as_tensor(np.asarray(y, np.int64))

    def run():
        with torch.no_grad():
            return torch.cat([qm(xt[i:i + batch]) for i in range(0, len(xt), batch)])

    base = run()
    base_logp = F.log_softmax(base, dim=1)
    out = {}
    names = list(qm.keys)
    for i, n in enumerate(names):
        out[n] = {}
        for b in bits:
            qm.only = {n: b}
            z = run()
            if yt is not None:
                out[n][b] = float(F.cross_entropy(z, yt) - F.cross_entropy(base, yt))
            else:
                out[n][b] = float(F.kl_div(F.log_softmax(z, dim=1), base_logp, log_target=True,
                                           reduction="batchmean"))
        qm.only = {}
        if progress:
            progress(i + 1, len(names))
    return out
