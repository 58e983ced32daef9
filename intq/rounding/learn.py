"""Learned weight rounding from unlabelled calibration images, through the torch side with
the compiler's exact quantization scheme.

The lowering is run once with round-to-nearest: it fixes every layer's grid (per-channel
scale, bound, input parameters; `Lowering.weight_grid`) and every activation's parameters.
The float graph then runs in torch (`FloatInterpreter`) under the QAT overlay
(`intq.twin.qat.QATModel`: fake quantization exactly where and as `intq compile`
quantizes), block by block (`blocks.blocks`): each block's input as the quantized model
holds it, with every earlier block's weights already rounded, is cached, and the block's
layers are rounded by one of

* ``gptq``: one-shot, per layer in order, Hessian of the layer's quantized input (`gptq`);
* ``adaround``: per layer, the rounding direction learned by reconstructing the layer's
  float output from its quantized input (AdaRound);
* ``brecq``: the same, all layers of a block together, reconstructing the block's float
  output (BRECQ);
* ``qdrop``: BRECQ with the activations quantized inside the block, each element's
  quantization dropped (left float) with probability 1/2, the block input likewise mixing
  quantized and float values (QDrop).

The result is {layer: integer weights}; `Lowering(..., weights=...)` compiles exactly those
integers on exactly that grid, so `intq verify` checks the optimized model itself.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..cache import cache_dir, digest as _digest
from ..errors import IntqError
from ..quant.calibrate import Calibration
from ..quant.lower import Lowering
from ..quant.scheme import LEARNED_ROUNDING, ROUNDINGS, bias_correction
from ..twin.interpret import FLOAT_OPS, fused_clamp
from ..twin.qat import QATModel, fake_quant_act
from .adaround import SoftRounding, beta_schedule
from .blocks import blocks
from .gptq import Hessian, float_target_weights, gptq_round, layer_columns

METHODS, LEARNED = ROUNDINGS, LEARNED_ROUNDING


def check_device(device: str) -> None:
    """One clear line for a torch device this machine does not have."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as e:
        raise IntqError(f"--device {device}: {str(e).splitlines()[0]}") from None


def resolve_method(name: str) -> str:
    name = LEARNED if name == "learned" else name
    if name not in METHODS:
        raise IntqError(f"unknown rounding {name!r}; choose from learned, {', '.join(METHODS)}")
    return name


@dataclass
class Settings:
    """The knobs of the reconstruction methods (GPTQ reads damp and act_order only)."""

    steps: int = 300          # optimizer steps per block (brecq, qdrop) or layer (adaround)
    batch: int = 32
    lr: float = 3e-3          # Adam on the rounding variables V
    reg_weight: float = 0.01  # lambda of the rounding regularizer
    drop: float = 0.5         # QDrop's probability of leaving an element unquantized
    crop: int = 56            # brecq/qdrop learn on windows of at most crop x crop inputs
    init: str = "nearest"     # brecq/qdrop start from the weights ("nearest") or from
                              # GPTQ's compensated weights ("gptq")
    damp: float = 0.01
    act_order: bool = True
    positions: int = 128      # output positions per image sampled for a GPTQ Hessian
    hessian_images: int = 128 # images a GPTQ Hessian is estimated on
    target: str = "float"     # GPTQ fits each layer to the float model's output ("float")
                              # or to its own float weights on the quantized input
    seed: int = 0


class _Overlay(QATModel):
    """The QAT overlay with the lowering's own Lowering (so every activation is quantized
    with the calibration method `compile` uses), weights taken from `state` ({layer: float
    tensor of dequantized weights, or a SoftRounding}; the float weight when absent), an
    input capture hook and QDrop's random drop of activation quantization."""

    def __init__(self, fg, cfg, calib, lowering, sample):
        super().__init__(fg, {}, cfg, None, calibration=calib)
        self.lw = lowering
        self.state: dict = {}
        self.bias: dict = {}      # a rounded layer's bias as compiled (bias correction)
        self.soft_means: dict = {}  # a soft layer's input means per weight, (M, C/G, taps)
        self.capture: dict = {}
        self.stop_after_capture = False
        self.drop = 0.0
        self.eval()
        with torch.no_grad():
            self.forward(sample)
        self.static_q = dict(self._q)

    def layer(self, node, x, w, b, forward):
        if node.name in self.capture:
            self.capture[node.name](x)
            if self.stop_after_capture:
                raise _Captured
        st = self.state.get(node.name)
        if isinstance(st, SoftRounding):
            soft = st.soft()
            means = self.soft_means.get(node.name)
            if means is not None and b is not None:
                # the bias the compiled layer will have (bias correction of these very
                # weights), so that what is reconstructed is what is compiled
                err = (soft - w).reshape(soft.shape[0], means.shape[1], -1)
                b = b - torch.einsum("mct,mct->m", err, means)
            w = soft
        elif st is not None:
            w = st
        b = self.bias.get(node.name, b)
        return forward(x, w, b)

    def _quantize(self, name, v, qp, lo=None, hi=None):
        self.points[name] = qp
        fq = fake_quant_act(v, qp, lo, hi)
        if self.drop > 0:
            return torch.where(torch.rand_like(fq) < self.drop, v, fq)
        return fq

    def hold_input(self, x):
        self._q, self.points = {}, {}
        return self.stored(self.fg.inputs[0], x, None)

    def run_quantized(self, block, x):
        self._q, self.points = dict(self.static_q), {}
        env = self.graph.run_nodes(block.nodes, {block.input: x}, self)
        return [env[o] for o in block.outputs]

    def run_float(self, block, x, want=None):
        env = self.graph.run_nodes(block.nodes, {block.input: x})
        return [env[o] for o in (want or block.outputs)]


class _FloatCapture:
    """The plain float model, with the capture hooks of an `_Overlay` at its layers."""

    def __init__(self, ov):
        self.ov = ov

    def operands(self, node, inputs):
        return inputs

    def layer(self, node, x, w, b, forward):
        if node.name in self.ov.capture:
            self.ov.capture[node.name](x)
            raise _Captured
        return forward(x, w, b)

    def stored(self, tensor, value, node):
        return value


class _Captured(Exception):
    """Raised once the captured layer has its input: the rest of the block is not needed."""


def _batched(fn, xs, batch):
    """fn over the rows of the tensors xs in batches, outputs concatenated (no grad)."""
    outs = None
    with torch.no_grad():
        for i in range(0, len(xs[0]), batch):
            ys = fn(*(x[i:i + batch] for x in xs))
            outs = [[y] for y in ys] if outs is None else [o + [y] for o, y in zip(outs, ys)]
    return [torch.cat(o) for o in outs]


def _lp(out, target):
    """BRECQ's reconstruction loss: squared error summed over channels, mean elsewhere."""
    d = (out - target).pow(2)
    return d.sum(1).mean() if d.dim() > 1 else d.mean()


class Reconstruction:
    def __init__(self, fg, images, cfg, calib, method, settings, device, progress, lowering):
        self.fg, self.cfg, self.method, self.s = fg, cfg, method, settings
        self.device = torch.device(device)
        self.progress = progress
        self.lw = lowering
        self.grid = lowering.weight_grid
        self.images = torch.as_tensor(np.asarray(images, np.float32))
        self.ov = _Overlay(fg, cfg, calib, lowering, self.images[:1]).to(self.device)
        self.blocks = blocks(fg)
        self.gen = torch.Generator().manual_seed(settings.seed)
        torch.manual_seed(settings.seed)
        self.integers: dict[str, np.ndarray] = {}

    def weight(self, node) -> np.ndarray:
        return self.fg.constants[node.inputs[1]].astype(np.float64)

    def fix(self, node, q: np.ndarray):
        """Layer `node` rounded to the integers q from now on."""
        g = self.grid[node.name]
        q = np.asarray(q).astype(np.int8)
        self.integers[node.name] = q
        shape = (-1,) + (1,) * (q.ndim - 1)
        w = q.astype(np.float64) * np.asarray(g["scales"]).reshape(shape)
        self.ov.state[node.name] = torch.as_tensor(w, dtype=torch.float32, device=self.device)
        if self.cfg.bias_correction:
            # The compiled layer's bias is corrected for its rounding's mean shift
            # (`Lowering.lower_layer`): later layers must see that layer, not another.
            wf = self.weight(node)
            b = (self.fg.constants[node.inputs[2]].astype(np.float64)
                 if len(node.inputs) > 2 and node.inputs[2] else np.zeros(wf.shape[0]))
            groups = node.attrs["groups"] if node.op == "Conv" else 1
            b = b - bias_correction(wf, q, np.asarray(g["scales"]), groups,
                                    self.lw.calib.input_means(node.name))
            self.ov.bias[node.name] = torch.as_tensor(b, dtype=torch.float32, device=self.device)

    def run(self):
        # Fake-quantized activations and soft weights produce denormal floats, on which
        # x86 arithmetic is many times slower: flush them to zero while learning.
        torch.set_flush_denormal(True)
        try:
            return self._run()
        finally:
            torch.set_flush_denormal(False)

    def _run(self):
        s, ov, dev = self.s, self.ov, self.device
        xf = self.images.to(dev)
        if self.method == "gptq":
            xf = xf[:s.hessian_images]   # all GPTQ reads: carry no more through the blocks
        xq = _batched(lambda x: [ov.hold_input(x)], [xf], 64)[0]
        total = len(self.blocks)
        for k, block in enumerate(self.blocks):
            # GPTQ reads only the quantized model's inputs; the others the float model too.
            yf = (None if self.method == "gptq" and s.target != "float"
                  else _batched(lambda x: ov.run_float(block, x), [xf], 64))
            if self.method == "gptq":
                self.gptq_block(block, xq, xf if s.target == "float" else None)
            elif self.method == "adaround":
                self.adaround_block(block, xq, xf)
            else:
                self.reconstruct_block(block, xq, xf, yf, drop=s.drop if self.method == "qdrop" else 0.0)
            if k + 1 < total:
                xq = _batched(lambda x: ov.run_quantized(block, x), [xq], 64)[0]
                xf = None if yf is None else yf[0]
            if self.progress:
                self.progress(k + 1, total)
        return self.integers

    # -- methods ----------------------------------------------------------------------
    def gptq_block(self, block, xq, xf=None):
        """GPTQ on each layer of the block in order, each on the Hessian of its input as the
        quantized model (earlier layers rounded) holds it. With xf (`Settings.target` =
        "float") the layer is fitted to the float model's output instead: min ||Q X_q -
        W X_f||^2 = ||(W' - Q) X_q||^2 + const with W' = W C H^-1, C = X_f X_q^T / n, so
        each layer also undoes the error its input already carries. Returns each layer's
        compensated float weights as they stood when rounded (reconstruction's start)."""
        ov = self.ov
        updated = {}
        n_img = self.s.hessian_images
        xq = xq[:n_img]
        xf = None if xf is None else xf[:n_img]
        for node in block.layers:
            w = self.weight(node)
            h, cross = Hessian(), Hessian()
            seen = {}

            def grab(x, n=node, key="q"):
                # the same sampled positions for the quantized and the float input
                gen = torch.Generator().manual_seed(self.s.seed * 7919 + seen["batch"])
                seen[key] = layer_columns(n, x, w.shape, self.s.positions, gen)
            ov.stop_after_capture = True
            with torch.no_grad():
                for i in range(0, len(xq), 64):
                    seen["batch"] = i
                    ov.capture = {node.name: grab}
                    try:
                        ov.run_quantized(block, xq[i:i + 64])
                    except _Captured:
                        pass
                    h.add(seen["q"])
                    if xf is not None:
                        ov.capture = {node.name: lambda x, n=node: grab(x, n, "f")}
                        try:
                            ov.graph.run_nodes(block.nodes, {block.input: xf[i:i + 64]}, _FloatCapture(ov))
                        except _Captured:
                            pass
                        cross.add(seen["q"], left=seen["f"])
            ov.capture, ov.stop_after_capture = {}, False
            g = self.grid[node.name]
            H = h.value().cpu()
            wt = torch.as_tensor(w)
            if xf is not None:
                wt = float_target_weights(wt, H, cross.value().cpu(), self.s.damp)
            q, before = gptq_round(wt, torch.as_tensor(g["scales"]), g["qmax"], H,
                                   damp=self.s.damp, act_order=self.s.act_order,
                                   return_updated=True)
            self.fix(node, q.numpy())
            updated[node.name] = before.numpy()
        return updated

    def adaround_block(self, block, xq, xf):
        ov = self.ov
        for node in block.layers:
            got = []
            ov.capture = {node.name: lambda x: got.append(x.detach())}
            _batched(lambda x: ov.run_quantized(block, x), [xq], 64)
            ov.capture = {}
            xin = torch.cat(got)
            target = _batched(lambda x: ov.run_float(block, x, [node.outputs[0]]), [xf], 64)[0]
            soft = self._soft(node)
            fn = FLOAT_OPS[node.op]
            b = ov.graph.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None

            def forward(idx, node=node, soft=soft, fn=fn, b=b):
                return [fused_clamp(node, fn(self.fg, node, xin[idx], soft.soft(), b))], None
            self._optimize([soft], forward, [target], len(xin))
            self.fix(node, soft.hard_integers())

    def reconstruct_block(self, block, xq, xf, yf, drop):
        """BRECQ (drop = 0) or QDrop on one block. A block whose input is larger than
        `crop` x `crop` learns on random windows of it, its float target computed on the
        same window (zero padding at the window's edge alike in both): a convolution's
        rounding is learned from local statistics, and a 112 x 112 block costs as much as a
        56 x 56 one."""
        ov, c = self.ov, self.s.crop
        start = (self.gptq_block(block, xq, xf if self.s.target == "float" else None)
                 if self.s.init == "gptq" else {})
        softs = [self._soft(n, start.get(n.name)) for n in block.layers]
        spatial = xq.dim() == 4 and c and max(xq.shape[2:]) > c
        ov_float = (lambda x: ov.run_float(block, x))

        def forward(idx):
            x, f = xq[idx], xf[idx]
            targets = None
            if spatial:
                h, w = x.shape[2:]
                ch, cw = min(c, h), min(c, w)
                t = int(torch.randint(0, h - ch + 1, (1,), generator=self.gen))
                l_ = int(torch.randint(0, w - cw + 1, (1,), generator=self.gen))
                x, f = x[:, :, t:t + ch, l_:l_ + cw], f[:, :, t:t + ch, l_:l_ + cw]
                with torch.no_grad():
                    targets = ov_float(f)
            if drop > 0:
                x = torch.where(torch.rand_like(x) < drop, f, x)
            ov.drop = drop
            try:
                return ov.run_quantized(block, x), targets
            finally:
                ov.drop = 0.0
        self._optimize(softs, forward, yf, len(xq))
        for node, soft in zip(block.layers, softs):
            self.fix(node, soft.hard_integers())

    def _soft(self, node, start=None) -> SoftRounding:
        g = self.grid[node.name]
        w = self.weight(node) if start is None else start
        soft = SoftRounding(w, g["scales"], g["qmax"]).to(self.device)
        if self.cfg.bias_correction:
            m = w.shape[0]
            groups = node.attrs["groups"] if node.op == "Conv" else 1
            cg = w.shape[1]
            means = np.asarray(self.lw.calib.input_means(node.name), np.float64)
            means = means.reshape(groups, cg, -1)[np.arange(m) // (m // groups)]
            self.ov.soft_means[node.name] = torch.as_tensor(means, dtype=torch.float32,
                                                            device=self.device)
        self.ov.state[node.name] = soft
        return soft

    def _optimize(self, softs, forward, targets, n):
        s = self.s
        opt = torch.optim.Adam([p.v for p in softs], lr=s.lr)
        for step in range(s.steps):
            idx = torch.randint(0, n, (min(s.batch, n),), generator=self.gen).to(self.device)
            outs, fresh = forward(idx)
            want = fresh if fresh is not None else [t[idx] for t in targets]
            loss = sum(_lp(o, t) for o, t in zip(outs, want))
            beta = beta_schedule(step, s.steps)
            if beta is not None:
                loss = loss + s.reg_weight * sum(p.regularizer(beta) for p in softs)
            opt.zero_grad()
            loss.backward()
            opt.step()


def graph_digest(fg) -> str:
    """A digest of a float graph's structure and constants that ignores names: two
    exports of one network (the legacy and the dynamo exporter name every tensor
    differently) that fold to the same graph share their learned rounding."""
    ids: dict = {}

    def tid(t):
        return ids.setdefault(t, len(ids))
    for t in fg.inputs:
        tid(t)
    parts = []
    for n in fg.nodes:
        ins = [None if not t else ("c", _digest(fg.constants[t])) if t in fg.constants else tid(t)
               for t in n.inputs]
        parts.append((n.op, sorted(((k, repr(v)) for k, v in n.attrs.items())), ins,
                      [tid(o) for o in n.outputs]))
    parts.append([tid(o) for o in fg.outputs])
    return _digest(repr(parts))


def _cache_path(key):
    d = cache_dir()
    return None if d is None else os.path.join(d, f"rounding-{key}.npz")


def _load(path, names):
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["count"]) != len(names):
                return None
            return {n: z[f"w{i}"] for i, n in enumerate(names)}
    except (OSError, ValueError, KeyError):
        return None  # a damaged entry is recomputed


def _store(path, weights, names):
    import io

    from ..artifact import atomic_write
    buf = io.BytesIO()
    # By layer position, not name: names differ between exports of one graph.
    np.savez(buf, count=np.array(len(names)), **{f"w{i}": weights[n] for i, n in enumerate(names)})
    try:
        with atomic_write(path) as f:
            f.write(buf.getvalue())
    except IntqError:
        pass  # an unwritable cache only costs the next run time


def _choice(wa) -> str:
    return f"w{wa[0]}a{wa[1]}"


def learn_rounding(fg, images, cfg, method: str = "learned", calibration=None,
                   settings: Settings | None = None, device: str = "cpu", progress=None,
                   use_cache: bool = True) -> tuple[dict, dict]:
    """({layer: int8 integer weights}, info) for the float graph fg under QuantConfig cfg,
    learned on the calibration images (float32 NCHW). `progress(done, total)` is told after
    each block; info holds the method, settings and the time of each phase.

    A model whose free layers (all but the first and last) share one choice of weight and
    activation bits is learned as it is. A mixed model takes each layer's integers from
    the learning of the uniform model at that layer's choice (the first and last layers
    as the mixed model has them): the ILP's sensitivities, its sweep and every mixed
    compile then share one learning per choice, which the cache keeps per graph
    (names aside), images, scheme, method and settings (`INTQ_CACHE_DIR`)."""
    from dataclasses import replace

    method = resolve_method(method)
    if method == "nearest":
        raise IntqError("nearest rounding needs no learning")
    settings = settings or Settings()
    images = np.asarray(images, np.float32)
    t0 = time.perf_counter()
    calib = calibration if calibration is not None else Calibration(fg, images)
    calib_s = time.perf_counter() - t0
    lowering = Lowering(fg, calib, cfg)
    lowering.run()
    names = [l["name"] for l in lowering.layer_info]
    choices = {l["name"]: (l["w_bits"], l["a_bits"]) for l in lowering.layer_info}
    ends = {names[0], names[-1]}
    free = sorted({choices[n] for n in names if n not in ends}, reverse=True) or [None]
    info = {"method": method, "settings": asdict(settings), "images": int(len(images)),
            "device": str(device), "runs": [], "seconds": {"calibration": round(calib_s, 2)}}
    weights: dict = {}
    for c in free:
        if len(free) == 1:
            cfg_c, lw_c = cfg, lowering
        else:
            cfg_c = replace(cfg, bits={n: _choice(choices[n] if n in ends or c is None else c)
                                       for n in names})
            lw_c = None
        got, run = _learn_one(fg, images, cfg_c, method, calib, settings, device, progress,
                              use_cache, lw_c)
        weights.update({n: got[n] for n in names if c is None or choices[n] == c or n in ends})
        info["runs"].append({"choice": None if c is None else _choice(c), **run})
        for k, v in run["seconds"].items():
            info["seconds"][k] = round(info["seconds"].get(k, 0.0) + v, 2)
    info["cached"] = all(r["cached"] for r in info["runs"])
    return weights, info


def _learn_one(fg, images, cfg, method, calib, settings, device, progress, use_cache, lowering):
    t0 = time.perf_counter()
    if lowering is None:
        lowering = Lowering(fg, calib, cfg)
        lowering.run()
    names = [l["name"] for l in lowering.layer_info]
    layout = [(l["w_bits"], l["a_bits"]) for l in lowering.layer_info]
    scheme = {k: v for k, v in cfg.to_dict().items()
              if k not in ("bias_correction", "rounding", "bits", "default_bits", "keep_first_last_8")}
    key = _digest(graph_digest(fg), images, repr(sorted(scheme.items(), key=str)), repr(layout),
                  method, repr(asdict(settings)), "v1")
    path = _cache_path(key) if use_cache else None
    if path and os.path.isfile(path):
        weights = _load(path, names)
        if weights is not None:
            return weights, {"cached": True, "seconds": {}}
    rec = Reconstruction(fg, images, cfg, calib, method, settings, device, progress, lowering)
    t1 = time.perf_counter()
    weights = rec.run()
    t2 = time.perf_counter()
    if path:
        _store(path, weights, names)
    return weights, {"cached": False, "blocks": len(rec.blocks),
                     "seconds": {"grid": round(t1 - t0, 2), "rounding": round(t2 - t1, 2)}}


def weight_provider(fg, images, cfg, method: str = "learned", calibration=None, **options):
    """(weights(layer, w_bits) -> dequantized float64 weights, key) for the ILP's
    sensitivities (`intq.alloc.Problem(weights=..., weights_key=...)`): each layer's
    learned integers at 4 bits from the uniform W4A8 learning, at 8 from the W8A8 one
    (both cached, and the same ones a mixed compile takes), times the lowering's scales."""
    from dataclasses import replace

    method = resolve_method(method)
    calib = calibration if calibration is not None else Calibration(fg, np.asarray(images, np.float32))
    tables = {}
    for w_bits, choice in ((4, "w4a8"), (8, "w8a8")):
        cfg_c = replace(cfg, default_bits=choice, bits={}, rounding=method)
        ints, _ = learn_rounding(fg, images, cfg_c, method, calibration=calib, **options)
        lw = Lowering(fg, calib, cfg_c)
        lw.run()
        tables[w_bits] = (ints, lw.weight_grid)

    def weights(layer, w_bits):
        if w_bits not in tables:
            return None
        ints, grid = tables[w_bits]
        if grid[layer]["qmax"] != (1 << (w_bits - 1)) - 1:
            return None   # an end layer, kept at 8 bits in the uniform learnings
        q = ints[layer].astype(np.float64)
        return q * np.asarray(grid[layer]["scales"]).reshape((-1,) + (1,) * (q.ndim - 1))
    settings = options.get("settings") or Settings()
    key = _digest(graph_digest(fg), np.asarray(images, np.float32), method, repr(asdict(settings)))
    return weights, key
