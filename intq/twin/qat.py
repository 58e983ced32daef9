"""Quantization-aware training: the float graph of an ONNX model, rebuilt as a trainable torch
module that fake-quantizes exactly where `intq compile` quantizes, then compiled into a
normal integer artifact.

* The quantization points and their formats come from the lowering's own decisions
  (`intq.quant.lower.Lowering`: per-channel symmetric weights at the layer's bits, unsigned
  narrow inputs of each Conv/Linear, the 16-bit residual stream, first and last layer at
  8, accumulators handed to adds and concats unrounded), so training sees the compiled
  model's scheme, not an approximation of it.
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
from ..quant.lower import Lowering
from ..quant.scheme import QuantConfig

SUPPORTED = {"Conv", "Linear", "Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool",
             "Flatten", "Reshape", "Relu", "Clip", "Pad", "ChannelAffine"}
# Ops the float model runs (sensitivities) but QAT cannot train yet: their quantization
# points are lowering's lookup tables and products, which QAT does not mirror.
FLOAT_ONLY = {"Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Swish", "LeakyRelu", "PRelu",
              "Softmax", "Mul"}


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


def fake_quant_act(v, qp, lo=None, hi=None):
    """S (clamp(round(v / S) + z, lo, hi) - z) with the clamp range's gradient mask."""
    lo = qp.qmin if lo is None else lo
    hi = qp.qmax if hi is None else hi
    vlo, vhi = (lo - qp.zero_point) * qp.scale, (hi - qp.zero_point) * qp.scale
    vc = torch.clamp(v, vlo, vhi)
    return torch.clamp(_ste_round(vc / qp.scale), lo - qp.zero_point, hi - qp.zero_point) * qp.scale


class QATModel(torch.nn.Module):
    """The trainable twin: the float graph in torch with fake quantization at the compiled
    model's quantization points. `forward(x)` returns float logits."""

    def __init__(self, fg, bns: dict, cfg: QuantConfig, calib_images, momentum: float = 0.1,
                 float_only: bool = False):
        super().__init__()
        ok = SUPPORTED | (FLOAT_ONLY if float_only else set())
        unsupported = sorted({f"{n.op} ({n.name})" for n in fg.nodes if n.op not in ok})
        if unsupported:
            what = "float model (sensitivities)" if float_only else "qat"
            raise IntqError(f"{what}: unsupported ops: {', '.join(unsupported)}")
        self.float_only = float_only
        self.fg, self.cfg, self.momentum = fg, cfg, momentum
        self.calib = Calibration(fg, calib_images)
        self.ranges = {t: (self.calib.lo[t], self.calib.hi[t]) for t in self.calib.lo}
        self.lw = Lowering(fg, FrozenRanges(self.ranges, self.calib), cfg)
        self.frozen_bn = False
        self.frozen_ranges = False
        # quantize=False runs the float model, except the layers in `only` ({name: bits}),
        # whose weights and input are quantized: the perturbation sensitivity of one layer.
        self._storage: dict = {}
        self.quantize = not float_only
        self.only: dict = {}
        self.weights = torch.nn.ParameterDict()
        self.bn = torch.nn.ModuleDict()
        self.keys = {}
        for i, node in enumerate(n for n in fg.nodes if n.op in ("Conv", "Linear")):
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

    def _stored(self, t, v, act=None):
        """v fake-quantized as tensor t is stored (its range observed first)."""
        if not self.quantize:
            return v
        self._observe(t, v)
        qp = self._stored_qparams(t)
        lo, hi = qp.clamp_bounds(*act) if act else (None, None)
        return fake_quant_act(v, qp, lo, hi)

    def _layer_input(self, t, v, bits):
        """A Conv/Linear input: its stored value, requantized to the layer's narrow format
        when it is stored otherwise (what lowering's `narrow_input` emits)."""
        if not self.quantize:
            return v
        qs = self._stored_qparams(t)
        if qs.bits == bits and not qs.signed:
            return v
        return fake_quant_act(v, self.lw.act_qparams(t, bits, narrow=True))

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

    # -- forward --------------------------------------------------------------------
    def _layer(self, node, x):
        bits = self.only.get(node.name, self.lw.bits[node.name])
        if node.name in self.only:
            x = fake_quant_act(x, self.lw.act_qparams(node.inputs[0], bits, narrow=True))
        else:
            x = self._layer_input(node.inputs[0], x, bits)
        key = self.keys[node.name]
        unfolded = key in self.bn and not self.frozen_bn and self.training
        w, b = ((self.weights[key + "_w"], self.weights[key + "_b"]) if unfolded
                else self.folded(node.name))
        quantized = self.quantize or node.name in self.only
        wq = fake_quant_weight(w, bits, self.cfg.profile) if quantized else w
        if node.op == "Conv":
            a = node.attrs
            pt, pl, pb, pr = a["pads"]
            y = F.conv2d(F.pad(x, (pl, pr, pt, pb)), wq, b, stride=tuple(a["strides"]),
                         dilation=tuple(a["dilations"]), groups=a["groups"])
        else:
            y = F.linear(x, wq, b)
        if unfolded:
            y = self.bn[key](y)
        return self._activation(node, y)

    @classmethod
    def _activation(cls, node, y):
        """y clamped by the node's fused ReLU/ReLU6 (act_min/act_max), if it has one."""
        act = cls._act(node)
        return torch.clamp(y, min=act[0], max=act[1]) if act else y

    def forward(self, x):
        fg, env = self.fg, {}
        t = fg.inputs[0]
        # The graph input is quantized where lowering puts QuantizeInput: after the input
        # normalisation when the graph has one.
        normalised = any(is_input_affine(fg, n) for n in fg.consumers(t))
        env[t] = x if normalised else self._stored(t, x)
        for node in fg.nodes:
            ins = [env.get(i) for i in node.inputs]
            op, a = node.op, node.attrs
            if op in FLOAT_ONLY or (op == "ChannelAffine" and not is_input_affine(fg, node)):
                if self.quantize:
                    raise IntqError(f"qat: {op} ({node.name}) runs only with quantization off")
                env[node.output] = self._float_op(node, ins)
                continue
            if op == "ChannelAffine" and is_input_affine(fg, node):
                s, sh = (torch.as_tensor(fg.constants[i], dtype=torch.float32) for i in node.inputs[1:3])
                shape = (1, -1, 1, 1)
                env[node.output] = self._stored(node.output, ins[0] * s.reshape(shape) + sh.reshape(shape))
                continue
            if op in ("Conv", "Linear"):
                y = self._layer(node, ins[0])
                if self.lw.accumulates_into_join(node):
                    env[node.output] = y           # the accumulator, handed over unrounded
                    continue
            elif op == "Add":
                y = self._activation(node, ins[0] + ins[1])
            elif op == "Concat":
                y = self._activation(node, torch.cat(ins, dim=a["axis"]))
            elif op == "GlobalAveragePool":
                y = ins[0].mean(dim=(2, 3), keepdim=bool(a.get("keepdims", 1)))
            elif op == "AveragePool":
                pt, pl, pb, pr = a["pads"]
                if (pt, pl) != (pb, pr) or a.get("ceil_mode", 0):
                    raise IntqError(f"qat: AveragePool {node.name} with asymmetric pads or ceil_mode")
                y = F.avg_pool2d(ins[0], tuple(a["kernel_shape"]), tuple(a["strides"]), (pt, pl),
                                 count_include_pad=bool(a["count_include_pad"]))
            else:
                env.update(zip(node.outputs, self._pass_through(node, ins[0])))
                continue
            env[node.output] = self._stored(node.output, y, self._act(node))
        return env[fg.outputs[0]]

    def _float_op(self, node, ins):
        """The float forms of FLOAT_ONLY ops (and of a ChannelAffine inside the network)."""
        a, op, x = node.attrs, node.op, ins[0]
        if op in ("Mul", "PRelu", "ChannelAffine"):
            consts = [torch.as_tensor(self.fg.constants[t], dtype=torch.float32)
                      if t in self.fg.constants else None for t in node.inputs]
            if op == "Mul":
                return x * (ins[1] if consts[1] is None else consts[1])
            shape = (1, -1) + (1,) * (x.dim() - 2)
            if op == "PRelu":
                return torch.where(x >= 0, x, x * consts[1].reshape(shape))
            return self._activation(node, x * consts[1].reshape(shape) + consts[2].reshape(shape))
        if op == "Softmax":
            axes = tuple(int(v) % x.dim() for v in a["axes"])
            return torch.softmax(x.flatten(axes[0]), dim=-1).reshape(x.shape) if len(axes) > 1 \
                else torch.softmax(x, dim=axes[0])
        if op == "LeakyRelu":
            return torch.where(x >= 0, x, a.get("alpha", 0.01) * x)
        fn = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
              "Swish": lambda v: v * torch.sigmoid(v),
              "HardSigmoid": lambda v: torch.clamp(a.get("alpha", 0.2) * v + a.get("beta", 0.5), 0, 1),
              "HardSwish": lambda v: v * torch.clamp(a.get("alpha", 1 / 6) * v + a.get("beta", 0.5), 0, 1)}
        return fn[op](x)

    @staticmethod
    def _act(node):
        lo, hi = node.attrs.get("act_min"), node.attrs.get("act_max")
        return (lo, hi) if lo is not None or hi is not None else None

    def _pass_through(self, node, x):
        a, op = node.attrs, node.op
        if op == "MaxPool":
            pt, pl, pb, pr = a["pads"]
            xp = F.pad(x, (pl, pr, pt, pb), value=-math.inf)
            return (F.max_pool2d(xp, tuple(a["kernel_shape"]), tuple(a["strides"]),
                                 dilation=tuple(a.get("dilations", (1, 1))),
                                 ceil_mode=bool(a.get("ceil_mode", 0))),)
        if op == "Flatten":
            return (x.flatten(a.get("axis", 1)),)
        if op == "Reshape":
            return (x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(a["shape"])]),)
        if op == "Relu":
            return (torch.relu(x),)
        if op == "Clip":
            return (torch.clamp(x, a.get("min"), a.get("max")),)
        if op == "Pad":
            pt, pl, pb, pr = a["pads"]
            return (F.pad(x, (pl, pr, pt, pb)),)
        raise IntqError(f"qat: no torch form for {op} ({node.name})")

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
