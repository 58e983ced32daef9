"""Quantization-aware training: the float graph of an ONNX model, run in torch by
`intq.twin.interpret.FloatInterpreter` under an overlay (`QATModel`) that fake-quantizes
exactly where `intq compile` quantizes, then compiled into a normal integer artifact.

* The quantization points and their formats come from the lowering's own decisions
  (`intq.quant.lower.Lowering`: per-channel symmetric weights at the layer's w_bits,
  unsigned narrow inputs of each Conv/Linear at its a_bits, the 16-bit residual stream,
  first and last layer at W8A8, accumulators handed to adds and concats unrounded, a
  lookup table's output at its stored parameters with its input as stored, a product's
  output at the product's parameters, softmax at uint8 1/256, the 16- and 8-bit copies
  lowering makes of table, product and pool inputs), so training sees the compiled model's scheme, not an
  approximation of it. This is why this module imports the lowering, unlike the twin's
  integer ops.
* Every rounding has a straight-through estimator (gradient 1 inside the clamp range, 0
  outside).
* BatchNorm stays unfolded while its statistics update (HAWQ-V3 §3.2): a Conv that the
  ONNX graph follows by a BatchNormalization trains as conv(x, Q(W)) + b -> BN in batch
  mode. From `freeze_bn_epoch` on the running statistics are frozen and the layer trains
  folded: conv(x, Q(W * s)) + (b - mean) s + beta, s = gamma / sqrt(var + eps), the
  weights that conversion quantizes.
* Activation ranges start at the calibration min/max, follow each batch's min/max with
  momentum, and are frozen for the last `freeze_range_epochs` epochs.
* `convert()` folds the trained BatchNorms (float64), writes the weights into the float
  graph and compiles it with the frozen ranges in place of calibration: the result is an
  ordinary `intq.Model`, which `intq verify` checks against its exact twin.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import IntqError
from ..frontend import import_onnx
from ..model import Model
from ..passes import PIPELINE, fold_batchnorm, run_passes
from ..passes.fold_affine import foldable_layer, is_input_affine
from ..pipeline import compile_model
from ..quant.calibrate import Calibration
from ..quant.lower import INT32_MAX, LAYERS, Lowering, lowering_problem, lowering_rule
from ..quant.lower_nonlinear import SOFTMAX_OUT, TABLE_MAX_BITS
from ..quant.scheme import QParams, QuantConfig
from .interpret import FloatInterpreter, Overlay



def float_graph_with_batchnorms(model):
    """(float graph after every pass, {conv/linear name: its BatchNorm before folding}).

    The passes run as `intq compile` runs them; just before `fold_batchnorm` each BN that
    will fold into the layer producing its input is recorded with that layer's unfolded
    weight and bias, so training can keep the pair apart."""
    g = import_onnx(model)
    i = PIPELINE.index(fold_batchnorm)
    g = run_passes(g, PIPELINE[:i])
    bns = {}
    for bn in [n for n in g.nodes if n.op == "BatchNormalization"]:
        prod = foldable_layer(g, bn.inputs[0])
        if prod is None:
            continue
        w = g.constants[prod.inputs[1]].astype(np.float64)
        b = (g.constants[prod.inputs[2]].astype(np.float64)
             if len(prod.inputs) > 2 and prod.inputs[2] else np.zeros(w.shape[0]))
        gamma, beta, mean, var = (g.constants[t].astype(np.float64) for t in bn.inputs[1:5])
        bns[prod.name] = dict(w=w, b=b, gamma=gamma, beta=beta, mean=mean, var=var,
                              eps=float(bn.attrs["epsilon"]))
    fg = run_passes(g, PIPELINE[i:])
    # Keep a record only where the folded layer is exactly that BN folded (no other pass
    # folded more into it); anything else trains folded from the start.
    for node in fg.nodes:
        r = bns.get(node.name)
        if r is None:
            continue
        wf, bf = _fold(r)
        if node.op not in ("Conv", "Linear") or not (
                np.allclose(fg.constants[node.inputs[1]], wf, rtol=1e-5, atol=1e-7)
                and np.allclose(fg.constants[node.inputs[2]], bf, rtol=1e-5, atol=1e-6)):
            del bns[node.name]
    return fg, {k: v for k, v in bns.items() if any(n.name == k for n in fg.nodes)}


def _fold(r):
    s = r["gamma"] / np.sqrt(r["var"] + r["eps"])
    return r["w"] * s.reshape((-1,) + (1,) * (r["w"].ndim - 1)), (r["b"] - r["mean"]) * s + r["beta"]


class FrozenRanges:
    """The `Calibration` interface over the activation ranges QAT tracked: `range(t, ...)`
    is the frozen (lo, hi) of tensor t whatever the method asked for."""

    def __init__(self, ranges: dict, fallback=None):
        self.ranges, self.fallback = ranges, fallback

    def range(self, name, bits, method, percentile=99.99):
        if name in self.ranges:
            return self.ranges[name]
        if self.fallback is not None:
            return self.fallback.range(name, bits, "minmax")
        raise IntqError(f"qat: no tracked range for tensor {name}")


def _ste_round(v):
    """floor(v + 1/2) forward (intq's tie rule), identity backward."""
    return v + (torch.floor(v + 0.5) - v).detach()


def fake_quant_weight(w, bits: int, profile: str):
    """Per-output-channel symmetric weights on [-(2^(b-1)-1), 2^(b-1)-1], as
    `quantize_weights` (max clipping); straight-through gradient."""
    qmax = (1 << (bits - 1)) - 1
    amax = w.detach().reshape(w.shape[0], -1).abs().amax(dim=1).clamp_min(1e-12)
    if profile == "pot":
        s = torch.full_like(amax, 2.0 ** math.ceil(math.log2(float(amax.max()) / qmax)))
    else:
        s = amax / qmax
    s = s.reshape((-1,) + (1,) * (w.dim() - 1))
    return torch.clamp(_ste_round(w / s), -qmax, qmax) * s


class _FakeQuant(torch.autograd.Function):
    """S * clamp(floor(clamp(v, vlo, vhi) / S + 1/2), qlo, qhi), gradient 1 where
    vlo <= v <= vhi and 0 elsewhere (the straight-through estimator inside the clamp range),
    in one buffer: these tensors are the largest of a network and elementwise passes over
    them, not the convolutions, are what a fake-quantized forward spends its time on."""

    @staticmethod
    def forward(ctx, v, scale, vlo, vhi, qlo, qhi):
        mask = (v >= vlo) & (v <= vhi)
        y = torch.clamp(v, vlo, vhi).div_(scale).add_(0.5).floor_().clamp_(qlo, qhi).mul_(scale)
        ctx.save_for_backward(mask)
        return y

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None, None


def fake_quant_act(v, qp, lo=None, hi=None):
    """S (clamp(round(v / S) + z, lo, hi) - z) with the clamp range's gradient mask."""
    lo = qp.qmin if lo is None else lo
    hi = qp.qmax if hi is None else hi
    vlo, vhi = (lo - qp.zero_point) * qp.scale, (hi - qp.zero_point) * qp.scale
    return _FakeQuant.apply(v, qp.scale, vlo, vhi, lo - qp.zero_point, hi - qp.zero_point)


def lowering_kind(op: str) -> str | None:
    """What lowering does at op, as far as fake quantization is concerned: which inputs it
    requantizes before the op reads them (`QATModel.operands`) and how it stores the output
    (`QATModel.stored`), as lowering's own rule for the op states it (`fake_quantized_as`):
    "layer", "pass_through", "rescale" (the output requantized to its stored parameters:
    joins, leaky ReLU, affine maps, |x|), "pool", "table", "softmax" or "product"; None for
    an op lowering has no rule for."""
    return getattr(lowering_rule(op), "fake_quant", None)


class QATModel(torch.nn.Module, Overlay):
    """The trainable twin: the float graph in torch (`FloatInterpreter`) under the overlay
    that fake-quantizes exactly where, and as, the compiled model quantizes. `forward(x)`
    returns float logits; after it, `points` holds every quantization point of that forward,
    {integer tensor name as lowering names it: QParams}."""

    def __init__(self, fg, bns: dict, cfg: QuantConfig, calib_images, momentum: float = 0.1,
                 calibration=None):
        super().__init__()
        problems = [f"node {n.name}: {p}" for n in fg.nodes if (p := lowering_problem(fg, n))]
        if problems:
            raise IntqError(f"qat: {problems[0]}" + (f" (and {len(problems) - 1} more)"
                                                     if len(problems) > 1 else ""))
        self.kinds = {n.name: lowering_kind(n.op) for n in fg.nodes}
        unknown = sorted({f"{n.op} ({n.name})" for n in fg.nodes if self.kinds[n.name] is None})
        if unknown:
            raise IntqError(f"qat: no fake-quantization rule for the lowering of {', '.join(unknown)}")
        self.graph = FloatInterpreter(fg)
        # Training fake-quantizes weights with max clipping and learns their rounding itself:
        # the conversion compiles that scheme, without compile's post-training defaults
        # (mse clipping at 4 bits, bias correction from float statistics).
        cfg = dataclasses.replace(cfg, weight_clip="max", bias_correction=False)
        self.fg, self.cfg, self.momentum = fg, cfg, momentum
        self.calib = calibration if calibration is not None else Calibration(fg, calib_images)
        self.ranges = {t: (self.calib.lo[t], self.calib.hi[t]) for t in self.calib.lo}
        self.lw = Lowering(fg, FrozenRanges(self.ranges, self.calib), cfg)
        self.normalised = any(is_input_affine(fg, n) for n in fg.consumers(fg.inputs[0]))
        self.frozen_bn = False
        self.frozen_ranges = False
        self._storage: dict = {}
        self._q: dict = {}        # this forward: tensor -> QParams it is held at (None: float)
        self.points: dict = {}
        self.weights = torch.nn.ParameterDict()
        self.bn = torch.nn.ModuleDict()
        self.keys = {}
        for i, node in enumerate(n for n in fg.nodes if n.op in LAYERS):
            key = f"l{i}"
            self.keys[node.name] = key
            r = bns.get(node.name)
            if r is not None:
                w, b = r["w"], r["b"]
                bn = torch.nn.BatchNorm2d(w.shape[0], eps=r["eps"], momentum=momentum) \
                    if node.op == "Conv" else torch.nn.BatchNorm1d(w.shape[0], eps=r["eps"], momentum=momentum)
                with torch.no_grad():
                    bn.weight.copy_(torch.as_tensor(r["gamma"]))
                    bn.bias.copy_(torch.as_tensor(r["beta"]))
                    bn.running_mean.copy_(torch.as_tensor(r["mean"]))
                    bn.running_var.copy_(torch.as_tensor(r["var"]))
                self.bn[key] = bn
            else:
                w = fg.constants[node.inputs[1]].astype(np.float64)
                b = (fg.constants[node.inputs[2]].astype(np.float64)
                     if len(node.inputs) > 2 and node.inputs[2] else np.zeros(w.shape[0]))
            self.weights[key + "_w"] = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float32))
            self.weights[key + "_b"] = torch.nn.Parameter(torch.as_tensor(b, dtype=torch.float32))
        self.bn.float()

    # -- state ----------------------------------------------------------------------
    def freeze_bn(self):
        """Freeze the BatchNorm statistics: from now on each layer trains folded."""
        self.frozen_bn = True

    def freeze_ranges(self):
        self.frozen_ranges = True

    def _observe(self, t, v):
        if self.training and not self.frozen_ranges:
            lo, hi = float(v.detach().min()), float(v.detach().max())
            old = self.ranges.get(t, (lo, hi))
            m = self.momentum
            self.ranges[t] = ((1 - m) * old[0] + m * lo, (1 - m) * old[1] + m * hi)

    def _stored_qparams(self, t):
        """lowering's `stored_qparams(t)` for the current range of t; where t is stored
        (its bits and format) is a property of the graph, decided once, not every step."""
        if t not in self._storage:
            self._storage[t] = self.lw.storage(t)
        return self.lw.act_qparams(t, *self._storage[t])

    def _quantize(self, name, v, qp, lo=None, hi=None):
        """v fake-quantized at qp (clamped to [lo, hi]), recorded as point `name`."""
        self.points[name] = qp
        return fake_quant_act(v, qp, lo, hi)

    def _requantized_copy(self, t, v, suffix, qp):
        """lowering's `requantized_copy(t, suffix, ...)`: t as one op reads it."""
        return self._quantize(f"{t}.{suffix}", v, qp)

    def folded(self, name):
        """(weight, bias) of a layer as the integer model will hold them, float32 tensors
        (BatchNorm folded with its running statistics where it has one)."""
        key = self.keys[name]
        w, b = self.weights[key + "_w"], self.weights[key + "_b"]
        if key not in self.bn:
            return w, b
        bn = self.bn[key]
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return w * s.reshape((-1,) + (1,) * (w.dim() - 1)), (b - bn.running_mean) * s + bn.bias

    # -- the overlay ----------------------------------------------------------------
    def forward(self, x):
        self._q, self.points = {}, {}
        return self.graph(x, self)

    def operands(self, node, ins):
        """The requantized copies lowering feeds an op: a layer's narrow input
        (`narrow_input`), a table's or softmax's 16-bit input (`_table_input`), the 8-bit
        operand of a product whose widths exceed 30 bits (`lower_mul`), a pool's 16-bit
        input where its INT32 window sum could overflow (`pool_input`)."""
        kind, t = self.kinds[node.name], node.inputs[0]
        q = self._q.get(t)
        if kind == "layer":
            bits = self.lw.wa_bits[node.name][1]  # the layer's input width
            if not (isinstance(q, QParams) and q.bits == bits and not q.signed):
                ins = [self._requantized_copy(t, ins[0], f"q{bits}",
                                              self.lw.act_qparams(t, bits, narrow=True)), *ins[1:]]
        elif kind in ("table", "softmax"):
            if q.bits > TABLE_MAX_BITS:
                ins = [self._requantized_copy(t, ins[0], "w16", self.lw.act_qparams(t, 16, narrow=False))]
        elif kind == "product" and not any(i in self.fg.constants for i in node.inputs):
            qa, qb = (self._q[i] for i in node.inputs)
            if qa.bits + qb.bits > 30:
                sizes = [np.prod([d or 1 for d in self.fg.values[i].shape]) for i in node.inputs]
                i = 0 if sizes[0] < sizes[1] else 1
                ti = node.inputs[i]
                ins = list(ins)
                ins[i] = self._requantized_copy(ti, ins[i], "s8", self.lw.act_qparams(ti, 8, narrow=False))
        elif kind == "pool":
            h, w = self.fg.values[t].shape[2:]
            count = h * w if node.op == "GlobalAveragePool" else int(np.prod(node.attrs["kernel_shape"]))
            if count * max(q.zero_point - q.qmin, q.qmax - q.zero_point) > INT32_MAX:
                ins = [self._requantized_copy(t, ins[0], "w16", self.lw.act_qparams(t, 16, narrow=False))]
        return ins

    def layer(self, node, x, w, b, forward):
        """conv(x, Q(W)) + b, then the BatchNorm in batch mode while its statistics update;
        folded weights Q(W s) once they are frozen (and in eval mode)."""
        key = self.keys[node.name]
        unfolded = key in self.bn and not self.frozen_bn and self.training
        w, b = ((self.weights[key + "_w"], self.weights[key + "_b"]) if unfolded
                else self.folded(node.name))
        y = forward(x, fake_quant_weight(w, self.lw.wa_bits[node.name][0], self.cfg.profile), b)
        return self.bn[key](y) if unfolded else y

    def _hold(self, t, v, name, qp, lo=None, hi=None):
        """Tensor t held at qp: v fake-quantized, recorded as the point `name`."""
        self._q[t] = qp
        return self._quantize(name, v, qp, lo, hi)

    def stored(self, t, v, node):
        """v as the compiled model holds tensor t (its range observed first)."""
        self._observe(t, v)
        if node is None:
            # The graph input is quantized where lowering puts QuantizeInput: after the
            # input normalisation when the graph has one.
            if self.normalised:
                self._q[t] = None
                return v
            return self._hold(t, v, f"{t}.q", self._stored_qparams(t))
        if node.op == "ChannelAffine" and is_input_affine(self.fg, node):
            return self._hold(t, v, f"{node.inputs[0]}.q", self._stored_qparams(t))
        kind = self.kinds[node.name]
        if kind == "pass_through":
            # Same parameters as the input, and the values stay on its grid; an unfused
            # ReLU/Clip clamps to integer bounds, which puts a bound off the grid back on it.
            qp = self._q[node.inputs[0]]
            self._q[t] = self.points[t] = qp
            if node.op in ("Relu", "Clip"):
                lo, hi = (qp.clamp_bounds(0.0, None) if node.op == "Relu"
                          else qp.clamp_bounds(node.attrs.get("min"), node.attrs.get("max")))
                v = fake_quant_act(v, qp, lo, hi)
            elif node.op == "ResizeLinear":   # interpolation leaves the grid; the integer op rounds
                v = fake_quant_act(v, qp, qp.qmin, qp.qmax)
            return v
        if kind == "layer" and self.lw.accumulates_into_join(node):
            self._q[t] = None   # the INT32 accumulator, handed to the join unrounded
            return v
        if kind == "softmax":
            return self._hold(t, v, t, SOFTMAX_OUT)
        qp = self._stored_qparams(t)
        lo, hi = qp.clamp_bounds(node.attrs.get("act_min"), node.attrs.get("act_max"))
        return self._hold(t, v, t, qp, lo, hi)

    # -- conversion -------------------------------------------------------------------
    def convert(self, calib_images, info: dict | None = None) -> Model:
        """The trained model as an integer `Model`: BatchNorms folded in float64 with their
        frozen statistics, weights written into the float graph, compiled with the frozen
        activation ranges."""
        fg = copy.deepcopy(self.fg)
        for node in fg.nodes:
            if node.op not in ("Conv", "Linear"):
                continue
            key = self.keys[node.name]
            w = self.weights[key + "_w"].detach().double().numpy()
            b = self.weights[key + "_b"].detach().double().numpy()
            if key in self.bn:
                bn = self.bn[key]
                w, b = _fold(dict(w=w, b=b, gamma=bn.weight.detach().double().numpy(),
                                  beta=bn.bias.detach().double().numpy(),
                                  mean=bn.running_mean.double().numpy(),
                                  var=bn.running_var.double().numpy(), eps=bn.eps))
            wn = fg.add_constant(f"{node.name}.weight_qat", w.astype(np.float32))
            bname = fg.add_constant(f"{node.name}.bias_qat", b.astype(np.float32))
            node.inputs = [node.inputs[0], wn, bname]
        fg.prune()
        ranges = FrozenRanges(dict(self.ranges), self.calib)
        ig, fg, cinfo = compile_model(fg, calib_images, self.cfg, calibration=ranges)
        cinfo["calibration"]["method"] = "qat"
        return Model(ig, fg, {**cinfo, **(info or {})})

def check_data(fg, x, y, what: str):
    """(x float32, y int64 or None) after checking them against the float graph: at least
    one image of the model's input shape, and one label per image in [0, classes)."""
    x = np.asarray(x, np.float32)
    want = tuple(fg.values[fg.inputs[0]].shape[1:])
    if x.ndim != 4 or len(x) == 0 or tuple(x.shape[1:]) != want:
        raise IntqError(f"{what}: need at least one image of shape {want}, got images of shape {x.shape}")
    if y is None:
        return x, None
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise IntqError(f"{what}: need one integer label per image, got labels of shape {y.shape} "
                        f"and dtype {y.dtype}")
    classes = fg.values[fg.outputs[0]].shape[-1]
    if y.min() < 0 or y.max() >= classes:
        raise IntqError(f"{what}: labels must lie in [0, {classes}), got [{y.min()}, {y.max()}]")
    return x, y.astype(np.int64)


class _Progress:
    """`epoch e/E [#####     ] loss L acc A` redrawn in place on a terminal; one summary
    line per epoch either way (`log`)."""

    def __init__(self, total, log):
        import sys
        self.total, self.log, self.tty = total, log, sys.stderr.isatty()

    def update(self, epoch, epochs, done, loss, acc):
        import sys
        if self.tty:
            bar = "#" * (30 * done // self.total)
            print(f"\repoch {epoch}/{epochs} [{bar:<30}] loss {loss:.4f} acc {acc:.4f}", end="",
                  file=sys.stderr, flush=True)

    def epoch_done(self, epoch, epochs, loss, acc, note):
        import sys
        if self.tty:
            print(file=sys.stderr)
        if self.log:
            self.log(f"epoch {epoch}/{epochs}: loss {loss:.4f}, train acc {acc:.4f}{note}")


def train(model, x, y, config: QuantConfig, epochs: int = 6, lr: float = 2e-4, batch: int = 64,
          calib=None, freeze_bn_epoch: int | None = None, freeze_range_epochs: int = 1,
          seed: int = 0, log=print) -> tuple[Model, list]:
    """Fine-tune the ONNX model `model` (path or ModelProto) on images x (float32 NCHW) with
    labels y under `config`'s quantization, and convert it. BatchNorm statistics update for
    the first `freeze_bn_epoch` epochs (default: half), activation ranges for all but the
    last `freeze_range_epochs`. Returns (Model, per-epoch history)."""
    if epochs < 1 or batch < 1 or not lr > 0:
        raise IntqError("qat: epochs and batch must be at least 1 and lr positive")

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    fg, bns = float_graph_with_batchnorms(model)
    x, y = check_data(fg, x, y, "qat")
    calib = x[:256] if calib is None else np.asarray(calib, np.float32)
    qm = QATModel(fg, bns, config, calib)
    opt = torch.optim.Adam(qm.parameters(), lr=lr)
    freeze_bn_epoch = max(1, epochs // 2) if freeze_bn_epoch is None else freeze_bn_epoch
    history = []
    steps = -(-len(x) // batch)
    bar = _Progress(steps, log)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y.astype(np.int64))
    for epoch in range(epochs):
        if epoch >= freeze_bn_epoch:
            qm.freeze_bn()
        if epoch >= epochs - freeze_range_epochs:
            qm.freeze_ranges()
        qm.train()
        order = torch.as_tensor(rng.permutation(len(x)))
        total_loss, correct, seen = 0.0, 0, 0
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            logits = qm(xt[idx])
            loss = F.cross_entropy(logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yt[idx]).sum())
            seen += len(idx)
            bar.update(epoch + 1, epochs, s + 1, total_loss / seen, correct / seen)
        note = (", BatchNorm frozen and folded" if qm.frozen_bn else ", BatchNorm updating") + \
               (", ranges frozen" if qm.frozen_ranges else "")
        history.append({"epoch": epoch + 1, "loss": total_loss / seen, "train_acc": correct / seen,
                        "bn_frozen": qm.frozen_bn, "ranges_frozen": qm.frozen_ranges})
        bar.epoch_done(epoch + 1, epochs, total_loss / seen, correct / seen, note)
    qm.eval()
    info = {"qat": {"epochs": epochs, "lr": lr, "batch": batch, "images": int(len(x)),
                    "freeze_bn_epoch": freeze_bn_epoch, "freeze_range_epochs": freeze_range_epochs,
                    "seed": seed, "history": history}}
    return qm.convert(calib, info), history
