"""Lower a folded float graph to an integer-only graph (HAWQ-V3 §3.1-3.3, App. D-F).

Where each activation lives:
* Each Conv/Linear has a pair of widths (`wa_bits`): its weights at w_bits (int4/int8)
  and its input, the layer's narrow copy, at a_bits (uint4/uint8): W8A8, W4A8 or W4A4.
* A tensor read only by Conv/Linear layers of one input width a_bits is stored at that
  width (unsigned, 4 or 8 bits): its producer requantizes straight into it. This is how a
  transition block "quantizes its input once and feeds both 1x1 convolutions from it".
* Any other tensor (the residual stream, pool outputs, Inception block inputs) is stored
  wide and signed (`residual_bits`, 16 by default); each Conv that reads it requantizes
  its own copy to its input width (one `Requantize` per tensor and width, shared).
* A Conv/Linear whose only reader is an Add or Concat hands over its INT32 accumulator;
  the Add/Concat rescales it with a per-channel DN (eq. 7 and 18), so that path is rounded
  exactly once.
* MaxPool, data movement (Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Slice, Split),
  unfused ReLU/Clip and Pad keep their input's parameters.
* Nonlinearities, products of two tensors and Softmax: see `lower_nonlinear`.
Graph outputs are stored signed at `output_bits` with their scale in the metadata.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dyadic import dyadic_multipliers
from ..errors import IntqError
from ..ir import Graph
from ..ops import find_op, infer_shapes, ops_where
from ..ops.pool import AveragePool
from ..ops.resize import resize_linear_attrs
from ..passes.fold_affine import is_input_affine
from ..validate import validate_integer_graph  # also loading's validator; re-exported here
from .lower_nonlinear import LOWERINGS, fake_quantized_as
from .scheme import (QParams, QuantConfig, activation_qparams, bias_correction, bias_scale_floor,
                     quantize_weights)

# Ops whose output keeps its input's quantization, and the layers that quantize weights:
# queries over the op specs' kind tags.
PASS_THROUGH = ops_where("keeps_qparams", float_graph=True)
LAYERS = tuple(sorted(ops_where("layer", float_graph=True)))
INT32_MAX = (1 << 31) - 1


@dataclass(frozen=True)
class Accumulator:
    """An INT32 accumulator: real = scales[channel] * q (zero point 0)."""

    scales: np.ndarray
    dtype: str = "int32"


class Lowering:
    """`weights` ({layer name: integer weights}) replaces round-to-nearest for those layers
    (learned rounding, `intq.rounding`): the lowering still chooses the scales, and each
    given tensor must lie on the layer's grid (shape and symmetric range at its bits)."""

    def __init__(self, fg: Graph, calib, cfg: QuantConfig, weights: dict | None = None):
        self.fg, self.calib, self.cfg = fg, calib, cfg
        self.weights = dict(weights or {})
        self.ig = Graph(fg.name)
        self.env: dict[str, tuple[str, object]] = {}
        self.cache: dict[tuple[str, int], tuple[str, QParams]] = {}
        layers = [n for n in fg.nodes if n.op in LAYERS]
        if not layers:
            raise IntqError("model has no Conv or Linear layer to quantize")
        ends = {layers[0].name, layers[-1].name}
        # (w_bits, a_bits) of every Conv/Linear: its weights' width, its narrow input's.
        self.wa_bits = {n.name: cfg.layer_wa_bits(n.name, n.name in ends) for n in layers}
        unknown = sorted(set(cfg.bits) - set(self.wa_bits))
        if unknown:
            raise IntqError(f"bit widths given for unknown layers: {', '.join(unknown)}; "
                            f"layers are: {', '.join(self.wa_bits)}")
        unknown = sorted(set(self.weights) - set(self.wa_bits))
        if unknown:
            raise IntqError(f"rounded weights given for unknown layers: {', '.join(unknown)}")
        self.layer_info: list[dict] = []
        self.qparams: dict[str, dict] = {}
        # Per layer, the grid its weights were put on: {"scales": (M,), "qmax", "input": QParams}
        # (what a rounding method must use so that the integers it picks are the compiled ones).
        self.weight_grid: dict[str, dict] = {}

    # -- decisions ---------------------------------------------------------------
    def readers(self, t):
        """The nodes that consume t, looking through parameter-preserving ops."""
        out = []
        for n in self.fg.consumers(t):
            if n.op in PASS_THROUGH:
                for o in n.outputs:
                    out += self.readers(o)
                    if o in self.fg.outputs:
                        out.append(None)
            else:
                out.append(n)
        return out

    def storage(self, t) -> tuple[int, bool]:
        """(bits, narrow) of the tensor t is stored at: narrow at its readers' input width
        a_bits when every reader is a Conv/Linear and they agree on it."""
        readers = self.readers(t)
        if t in self.fg.outputs or None in readers:
            return self.cfg.output_bits, False
        widths = {self.wa_bits[n.name][1] for n in readers if n.op in LAYERS}
        if readers and all(n.op in LAYERS for n in readers) and len(widths) == 1:
            return widths.pop(), True
        return self.cfg.residual_bits, False

    def act_qparams(self, t, bits, narrow) -> QParams:
        lo, hi = self.calib.range(t, bits, self.cfg.calib_method, self.cfg.percentile)
        return activation_qparams(lo, hi, bits, self.cfg.profile, narrow)

    def stored_qparams(self, t) -> QParams:
        bits, narrow = self.storage(t)
        return self.act_qparams(t, bits, narrow)

    def accumulates_into_join(self, node) -> bool:
        users = self.fg.consumers(node.output)
        return (len(users) == 1 and self.fg.use_count(node.output) == 1
                and users[0].op in ("Add", "Sub", "Concat")
                and node.attrs.get("act_min") is None and node.attrs.get("act_max") is None)

    # -- emission helpers --------------------------------------------------------
    def const(self, name, array):
        return self.ig.add_constant(name, np.asarray(array))

    def multipliers(self, name, scales):
        scales = np.asarray(scales, dtype=np.float64)
        if self.cfg.profile == "pot":
            # Pure shifts: 2^k as b = 1, c = -k, or (k > 0) as b = 2^k, c = 0. Rescales that
            # are not powers of two (an average pool's 1/9) round to the nearest in log2.
            k = np.round(np.log2(np.maximum(scales, 1e-300))).astype(np.int64)
            if k.max() > 30:
                raise IntqError(f"{name}: rescale factor {scales.max()} is too large")
            k = np.maximum(k, -62)
            b = np.where(k > 0, np.left_shift(1, np.maximum(k, 0)), 1)
            c = np.where(k > 0, 0, -k)
            b, c = np.where(scales > 0, b, 0), np.where(scales > 0, c, 0)
        else:
            b, c = dyadic_multipliers(scales, self.cfg.multiplier_bits)
        return self.const(f"{name}.b", b.astype(np.int64)), self.const(f"{name}.c", c.astype(np.int64))

    def bind(self, t, name, q):
        self.env[t] = (name, q)
        self.qparams[name] = q.to_dict() if isinstance(q, QParams) else {
            "accumulator": True, "scales": [float(s) for s in np.ravel(q.scales)]}

    def requantize(self, src, q_in, dst, q_out: QParams, lo=None, hi=None):
        scales = q_in.scales if isinstance(q_in, Accumulator) else q_in.scale
        b, c = self.multipliers(dst, np.asarray(scales) / q_out.scale)
        self.ig.add_node("Requantize", [src, b, c], [dst], {
            "in_zero_point": 0 if isinstance(q_in, Accumulator) else q_in.zero_point,
            "out_zero_point": q_out.zero_point, "lo": q_out.qmin if lo is None else lo,
            "hi": q_out.qmax if hi is None else hi, "dtype": q_out.dtype}, name=f"{dst}.requant")

    def requantized_copy(self, t, suffix, target_fn) -> tuple[str, QParams]:
        """t requantized to target_fn()'s parameters, made once and shared by every reader."""
        if (t, suffix) not in self.cache:
            name, q = self.env[t]
            target = target_fn()
            dst = self.ig.unique_name(f"{t}.{suffix}")
            self.requantize(name, q, dst, target)
            self.qparams[dst] = target.to_dict()
            self.cache[(t, suffix)] = (dst, target)
        return self.cache[(t, suffix)]

    def narrow_input(self, t, bits) -> tuple[str, QParams]:
        name, q = self.env[t]
        if isinstance(q, QParams) and q.bits == bits and not q.signed:
            return name, q
        return self.requantized_copy(t, f"q{bits}", lambda: self.act_qparams(t, bits, narrow=True))

    # -- ops ---------------------------------------------------------------------
    @fake_quantized_as("layer")
    def lower_layer(self, node):
        w_bits, a_bits = self.wa_bits[node.name]
        x, qx = self.narrow_input(node.inputs[0], a_bits)
        w = self.fg.constants[node.inputs[1]]
        m = w.shape[0]
        bias = (self.fg.constants[node.inputs[2]].astype(np.float64)
                if len(node.inputs) > 2 and node.inputs[2] else np.zeros(m))
        wq, sw = quantize_weights(w, w_bits, self.cfg.profile, self.cfg.weight_clip,
                                  min_scales=bias_scale_floor(bias, qx.scale))
        qmax = (1 << (w_bits - 1)) - 1
        self.weight_grid[node.name] = {"scales": sw, "qmax": qmax, "input": qx}
        if node.name in self.weights:
            wq = np.asarray(self.weights[node.name])
            if wq.shape != w.shape or wq.dtype.kind not in "iu" or (
                    wq.size and int(np.abs(wq.astype(np.int64)).max()) > qmax):
                raise IntqError(f"layer {node.name}: rounded weights must be integers of shape "
                                f"{w.shape} within +-{qmax}")
            wq = wq.astype(np.int8)
        if self.cfg.bias_correction:
            # The floor above came from the uncorrected bias: the shift is of the order of
            # one weight step times the input, far inside the floor's INT32 headroom, and
            # the overflow bound below still checks the result.
            means = getattr(self.calib, "input_means", None)
            if means is None:
                raise IntqError("bias correction needs calibration statistics (input means); "
                                "these activation ranges carry none")
            groups = node.attrs["groups"] if node.op == "Conv" else 1
            bias = bias - bias_correction(w, wq, sw, groups, means(node.name))
        acc_scales = qx.scale * sw
        bias_q = np.floor(bias / acc_scales + 0.5).astype(np.int64)
        flat = wq.reshape(m, -1).astype(np.int64)
        # Padding reads the zero point, so the correction is one constant per channel.
        bias_total = bias_q - qx.zero_point * flat.sum(axis=1)
        bound = np.abs(flat).sum(axis=1) * max(abs(qx.qmin), abs(qx.qmax)) + np.abs(bias_total)
        if bound.max() > INT32_MAX:
            ch = int(bound.argmax())
            raise IntqError(f"layer {node.name}: accumulator may overflow INT32 (bound "
                            f"{int(bound[ch])} > {INT32_MAX} at output channel {ch}); use fewer "
                            f"input bits or smaller weights")
        wname = self.const(f"{node.name}.weight_q", wq)
        self.ig.values[wname].dtype = f"int{w_bits}"
        bname = self.const(f"{node.name}.bias_q", bias_total.astype(np.int32))
        acc = f"{node.output}.acc"
        attrs = {"x_zero_point": qx.zero_point}
        if node.op == "Conv":
            attrs.update({k: list(node.attrs[k]) for k in ("strides", "pads", "dilations")},
                         groups=node.attrs["groups"])
        op = "IntConv" if node.op == "Conv" else "IntLinear"
        self.ig.add_node(op, [x, wname, bname], [acc], attrs, name=node.name)
        self.layer_info.append({"name": node.name, "op": node.op, "w_bits": w_bits, "a_bits": a_bits,
                                "weight_scale_max": float(sw.max())})
        accq = Accumulator(acc_scales)
        self.bind(acc, acc, accq)
        if self.accumulates_into_join(node):
            self.env[node.output] = (acc, accq)
            return
        q_out = self.stored_qparams(node.output)
        lo, hi = q_out.clamp_bounds(node.attrs.get("act_min"), node.attrs.get("act_max"))
        self.requantize(acc, accq, node.output, q_out, lo, hi)
        self.bind(node.output, node.output, q_out)

    @fake_quantized_as("rescale")
    def lower_join(self, node):
        """Add, Sub and Concat: each tensor operand rescaled to the output by its own
        multiplier; a Sub's second operand with sign -1; constant operands of an Add or Sub
        (an anchor grid) summed in float64 and rounded once to the output scale, `IntAdd`'s
        offset."""
        consts = [i for i, t in enumerate(node.inputs) if t in self.fg.constants]
        if consts and node.op == "Concat":
            raise IntqError(f"node {node.name}: Concat with a constant operand has no integer form")
        signs_all = [1, -1] if node.op == "Sub" else [1] * len(node.inputs)
        tensors = [(t, s) for i, (t, s) in enumerate(zip(node.inputs, signs_all)) if t and i not in consts]
        ins = [self.env[t] for t, _ in tensors]
        q_out = self.stored_qparams(node.output)
        bs, cs, zps = [], [], []
        for i, (name, q) in enumerate(ins):
            scales = q.scales if isinstance(q, Accumulator) else q.scale
            b, c = self.multipliers(f"{node.output}.in{i}", np.asarray(scales) / q_out.scale)
            bs.append(b), cs.append(c)
            zps.append(0 if isinstance(q, Accumulator) else q.zero_point)
        lo, hi = q_out.clamp_bounds(node.attrs.get("act_min"), node.attrs.get("act_max"))
        attrs = {"n": len(ins), "zero_points": zps, "out_zero_point": q_out.zero_point,
                 "lo": lo, "hi": hi, "dtype": q_out.dtype}
        op, extra = "IntAdd", []
        if node.op == "Concat":
            op, attrs["axis"] = "IntConcat", node.attrs["axis"]
        if any(s < 0 for _, s in tensors):
            attrs["signs"] = [s for _, s in tensors]
        if consts:
            total = sum(signs_all[i] * np.asarray(self.fg.constants[node.inputs[i]], np.float64)
                        for i in consts)
            offset = np.floor(total / q_out.scale + 0.5).astype(np.int64)
            attrs["offset"] = 1
            extra = [self.ig.add_constant(f"{node.output}.offset", offset)]
        self.ig.add_node(op, [n for n, _ in ins] + bs + cs + extra, [node.output], attrs, name=node.name)
        self.bind(node.output, node.output, q_out)

    def pool_input(self, node):
        """The pool's input, requantized to 16 bits first if its INT32 window sum could
        overflow (a 32-bit residual stream): pooling accumulates in INT32."""
        x, q = self.env[node.inputs[0]]
        h, w = self.fg.values[node.inputs[0]].shape[2:]
        count = h * w if node.op == "GlobalAveragePool" else int(np.prod(node.attrs["kernel_shape"]))
        if count * max(q.zero_point - q.qmin, q.qmax - q.zero_point) <= INT32_MAX:
            return x, q
        t = node.inputs[0]
        return self.requantized_copy(t, "w16", lambda: self.act_qparams(t, 16, narrow=False))

    @fake_quantized_as("pool")
    def lower_pool(self, node):
        x, q = self.pool_input(node)
        q_out = self.stored_qparams(node.output)
        attrs = {"in_zero_point": q.zero_point, "out_zero_point": q_out.zero_point,
                 "lo": q_out.qmin, "hi": q_out.qmax, "dtype": q_out.dtype}
        if node.op == "GlobalAveragePool":
            h, w = self.fg.values[node.inputs[0]].shape[2:]
            attrs.update(keepdims=node.attrs.get("keepdims", 1))
            op = "IntGlobalAvgPool"
            bname, cname = self.multipliers(node.output, q.scale / (h * w * q_out.scale))
        else:
            count = AveragePool.divisor(node.attrs, self.fg.values[node.inputs[0]].shape[2:])
            bname, cname = self.multipliers(node.output, q.scale / (count * q_out.scale))
            attrs.update({k: list(node.attrs[k]) for k in ("kernel_shape", "strides", "pads")},
                         ceil_mode=node.attrs.get("ceil_mode", 0))
            op = "IntAvgPool"
        self.ig.add_node(op, [x, bname, cname], [node.output], attrs, name=node.name)
        self.bind(node.output, node.output, q_out)

    @fake_quantized_as("pass_through")
    def lower_pass_through(self, node):
        x, q = self.env[node.inputs[0]]
        attrs = dict(node.attrs)
        op = node.op
        if node.op in ("Relu", "Clip"):
            lo, hi = (q.clamp_bounds(0.0, None) if node.op == "Relu"
                      else q.clamp_bounds(node.attrs.get("min"), node.attrs.get("max")))
            op, attrs = "IntClamp", {"lo": lo, "hi": hi}
        elif node.op == "Pad":
            op, attrs = "IntPad", {"pads": list(node.attrs["pads"]), "value": q.zero_point}
            if any(node.attrs.get("interior", (0, 0))):
                attrs["interior"] = list(node.attrs["interior"])
        elif node.op == "ResizeLinear":
            op, attrs = "IntResizeLinear", resize_linear_attrs(node.attrs)
        elif node.op == "MaxPool":
            attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.items()}
        self.ig.add_node(op, [x], list(node.outputs), attrs, name=node.name)
        for o in node.outputs:
            self.bind(o, o, q)

    def run(self) -> Graph:
        fg, ig = self.fg, self.ig
        for t in fg.inputs:
            ig.add_input(t, fg.values[t].shape, "float32")
            # An input normalisation (fold_affine leaves it) joins QuantizeInput's float step.
            norm = next((n for n in fg.consumers(t) if is_input_affine(fg, n)), None)
            src = norm.output if norm else t
            q = self.stored_qparams(src)
            name = f"{t}.q"
            attrs = {"scale": q.scale, "zero_point": q.zero_point, "lo": q.qmin, "hi": q.qmax,
                     "dtype": q.dtype}
            if norm:
                c = fg.values[t].shape[1]
                attrs.update({k: np.broadcast_to(fg.constants[i], (c,)).astype(float).tolist()
                              for k, i in zip(("in_scale", "in_shift"), norm.inputs[1:3])})
            ig.add_node("QuantizeInput", [t], [name], attrs, name="quantize_input")
            self.bind(src, name, q)
            self.env[t] = (name, q)
        for node in fg.nodes:
            if node.op == "ChannelAffine" and node.output in self.env:
                continue   # folded into QuantizeInput above
            rule = lowering_rule(node.op)
            if rule is None:
                raise IntqError(f"node {node.name}: no integer lowering for {node.op}")
            rule(self, node)
        ig.outputs = []
        for t in fg.outputs:
            name, q = self.env[t]
            if isinstance(q, Accumulator):
                raise IntqError(f"graph output {t} is an accumulator")  # cannot happen: see storage()
            ig.outputs.append(name)
        infer_shapes(ig)
        ig.metadata.update(
            format="intq-integer-graph", config=self.cfg.to_dict(), layers=self.layer_info,
            qparams=self.qparams, outputs={o: self.qparams[o] for o in ig.outputs},
            input={t: self.qparams[self.env[t][0]] for t in fg.inputs})
        validate_integer_graph(ig)
        return ig


def lowering_rule(op: str):
    """The function lowering a float op (`rule(lowering, node)`), or None: layers and
    joins by their kind tags, ops that keep their input's quantization likewise, pools and
    the nonlinear ops of `lower_nonlinear` by name."""
    spec = find_op(op)
    if spec is None or not spec.float_graph:
        return None   # not an op of the float graph (an integer op, an unknown name)
    spec_tags = spec.tags
    if "layer" in spec_tags:
        return Lowering.lower_layer
    if "join" in spec_tags:
        return Lowering.lower_join
    if "keeps_qparams" in spec_tags:
        return Lowering.lower_pass_through
    return _RULES.get(op) or LOWERINGS.get(op)


_RULES = {"AveragePool": Lowering.lower_pool, "GlobalAveragePool": Lowering.lower_pool}



def lowered_ops() -> frozenset:
    """The float ops that lowering accepts (what `intq compile` can compile)."""
    return frozenset(op for op in ops_where(float_graph=True) if lowering_rule(op) is not None)


def lowering_problem(fg: Graph, node) -> str | None:
    """Why `node` of a float graph after the passes has no integer lowering, or None."""
    if node.op == "Unsupported":
        return f"{node.attrs['onnx_op']}: {node.attrs['reason']}"
    if lowering_rule(node.op) is None:
        return f"no integer lowering for {node.op}"
    if node.op == "Concat" and any(t in fg.constants for t in node.inputs):
        return f"{node.op} with a constant input (concat constants are not quantized)"
    return None


def lower_to_integer(fg: Graph, calib, cfg: QuantConfig, weights: dict | None = None) -> Graph:
    return Lowering(fg, calib, cfg, weights).run()
