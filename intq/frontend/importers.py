"""One importer per ONNX op: turns a (folded) ONNX node into IR nodes.

Each importer reads ONNX attributes under their ONNX names, resolves opset differences
(attributes that became inputs, auto_pad) and emits canonical IR ops from `intq.ops`.
`import_onnx` first checks every node has an importer and reports all that do not.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..errors import IntqError, UnsupportedOpsError
from ..ir import Graph, Value
from ..ops import get_op, infer_shapes, ops_where
from ..ops.contract import MAX_DIM
from .folding import OnnxView, attr, fold_onnx_constants
from . import resize as resize_rules
from .load import load_onnx

IMPORTERS = {}


def importer(*op_types):
    def register(fn):
        for op in op_types:
            IMPORTERS[op] = fn
        return fn
    return register


class Context:
    """What an importer may use: constants, ONNX-inferred shapes, the IR under construction."""

    def __init__(self, view: OnnxView, graph: Graph):
        self.view, self.graph, self.opset = view, graph, view.opset

    def const(self, name, what="input"):
        if name not in self.graph.constants:
            raise IntqError(f"{what} {name!r} must be a constant")
        return self.graph.constants[name]

    def optional_const(self, node, index):
        if len(node.input) > index and node.input[index]:
            return self.const(node.input[index])
        return None

    def spatial(self, name):
        shape = self.view.shapes.get(name)
        if shape is None or len(shape) != 4 or None in shape[2:]:
            raise IntqError(f"tensor {name!r} needs a known 4-D shape, got {shape}")
        return shape[2:]

    def emit(self, node, op, inputs, attrs=None, outputs=None):
        return self.graph.add_node(op, inputs, outputs or [node.output[0]], attrs,
                                   name=node.name or op)


def _unused_extra_outputs(ctx, node, keep=1):
    """Training-only outputs (BN statistics, dropout masks, pool indices) must be unused."""
    for out in node.output[keep:]:
        if out and any(out in n.input for n in ctx.view.nodes) or out in ctx.view.outputs:
            raise IntqError(f"node {node.name}: output {out!r} of {node.op_type} is only "
                            f"defined in training mode and cannot be used")


def _window_attrs(ctx, node, kernel):
    """strides, dilations and explicit pads (t, l, b, r), auto_pad resolved."""
    strides = tuple(attr(node, "strides", [1, 1]))
    dilations = tuple(attr(node, "dilations", [1, 1]))
    if len(kernel) != 2:
        raise IntqError(f"node {node.name}: only 2-D {node.op_type} is supported")
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", ""):
        pads = tuple(attr(node, "pads", [0, 0, 0, 0]))
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for n, k, s, d in zip(ctx.spatial(node.input[0]), kernel, strides, dilations):
            out = -(-n // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
            small, big = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
        pads = (begin[0], begin[1], end[0], end[1])
    else:
        raise IntqError(f"node {node.name}: unknown auto_pad {auto_pad}")
    if any(p < 0 for p in pads):
        raise IntqError(f"node {node.name}: negative pads {pads}")
    return {"strides": strides, "pads": pads, "dilations": dilations}


@importer("Conv")
def conv(ctx, node):
    w = ctx.const(node.input[1], "Conv weight")
    kernel = tuple(attr(node, "kernel_shape", w.shape[2:]))
    attrs = _window_attrs(ctx, node, kernel)
    attrs["groups"] = attr(node, "group", 1)
    inputs = [node.input[0], node.input[1]]
    if len(node.input) > 2 and node.input[2]:
        ctx.const(node.input[2], "Conv bias")
        inputs.append(node.input[2])
    ctx.emit(node, "Conv", inputs, attrs)


@importer("ConvTranspose")
def conv_transpose(ctx, node):
    """A transposed convolution as the plain one it equals: the input with s - 1 zeros
    between its elements (Pad's interior padding), then a stride-1 Conv with the kernel
    flipped and its in/out channels swapped per group, padded d(k - 1) - p at each side
    (plus output_padding at the end). It then runs on the integer Conv kernels with their
    INT32 accumulation and fused epilogue; the zeros cost s^2 - 1 of every s^2 MACs."""
    where = f"ConvTranspose {node.name}"
    w = ctx.const(node.input[1], "ConvTranspose weight")
    if w.ndim != 4:
        raise IntqError(f"{where}: only 2-D ConvTranspose is supported")
    groups = int(attr(node, "group", 1))
    cin, cout_g, kh, kw = w.shape
    if cin % groups:
        raise IntqError(f"{where}: group {groups} does not divide the {cin} input channels")
    kernel = tuple(attr(node, "kernel_shape", (kh, kw)))
    if kernel != (kh, kw):
        raise IntqError(f"{where}: kernel_shape {kernel} differs from the weight's {(kh, kw)}")
    strides = tuple(attr(node, "strides", (1, 1)))
    dilations = tuple(attr(node, "dilations", (1, 1)))
    adj = tuple(attr(node, "output_padding", (0, 0)))
    in_hw = ctx.spatial(node.input[0])
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    out_shape = attr(node, "output_shape", None)
    pads = list(attr(node, "pads", (0, 0, 0, 0)))
    if out_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # ONNX's rule, as onnxruntime runs it: the total padding that gives the output
        # size, an odd one at the end for SAME_UPPER and at the start otherwise.
        outs = list(out_shape)[-2:] if out_shape is not None else [n * s for n, s in zip(in_hw, strides)]
        for a in range(2):
            total = strides[a] * (in_hw[a] - 1) + adj[a] + (kernel[a] - 1) * dilations[a] + 1 - outs[a]
            if total < 0:
                raise IntqError(f"{where}: output_shape {outs} is larger than the transposed "
                                f"convolution can make")
            small, big = total // 2, total - total // 2
            pads[a], pads[a + 2] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad not in ("NOTSET", "", "VALID"):
        raise IntqError(f"{where}: unknown auto_pad {auto_pad}")
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    conv_pads = []
    for side in range(4):
        a = side % 2
        p = dilations[a] * (kernel[a] - 1) - pads[side] + (adj[a] if side >= 2 else 0)
        if p < 0:
            raise IntqError(f"{where}: pads {pads} larger than the dilated kernel are not supported")
        conv_pads.append(p)
    flipped = w.reshape(groups, cin // groups, cout_g, kh, kw).transpose(0, 2, 1, 3, 4)
    flipped = np.ascontiguousarray(flipped.reshape(groups * cout_g, cin // groups, kh, kw)[:, :, ::-1, ::-1])
    w_name = ctx.graph.add_constant(f"{node.input[1]}.as_conv", flipped)
    x = node.input[0]
    if strides != (1, 1):
        x = ctx.graph.add_node("Pad", [x], [f"{node.output[0]}.zero_inserted"],
                               {"pads": (0, 0, 0, 0), "interior": (strides[0] - 1, strides[1] - 1)},
                               name=f"{node.name or 'ConvTranspose'}.zero_insert").outputs[0]
    inputs = [x, w_name]
    if len(node.input) > 2 and node.input[2]:
        ctx.const(node.input[2], "ConvTranspose bias")
        inputs.append(node.input[2])
    ctx.emit(node, "Conv", inputs, {"strides": (1, 1), "pads": tuple(conv_pads),
                                    "dilations": dilations, "groups": groups})


@importer("BatchNormalization")
def batchnorm(ctx, node):
    for name in node.input[1:5]:
        ctx.const(name, "BatchNormalization parameter")
    if attr(node, "training_mode", 0):
        raise IntqError(f"node {node.name}: BatchNormalization in training mode")
    _unused_extra_outputs(ctx, node)
    ctx.emit(node, "BatchNormalization", list(node.input[:5]),
             {"epsilon": float(attr(node, "epsilon", 1e-5))})


@importer("Relu")
def relu(ctx, node):
    ctx.emit(node, "Relu", [node.input[0]])


@importer("Clip")
def clip(ctx, node):
    if ctx.opset < 11:
        lo, hi = attr(node, "min", None), attr(node, "max", None)
    else:
        lo, hi = ctx.optional_const(node, 1), ctx.optional_const(node, 2)
    for bound in (lo, hi):
        if bound is not None and np.size(bound) != 1:
            raise IntqError(f"node {node.name}: Clip bounds must be scalars, got shape {np.shape(bound)}")
    # ONNX's "no bound" defaults are +-FLT_MAX; keep them as None (unbounded).
    lo = None if lo is None or float(lo) <= -3.4e38 else float(lo)
    hi = None if hi is None or float(hi) >= 3.4e38 else float(hi)
    ctx.emit(node, "Clip", [node.input[0]], {"min": lo, "max": hi})


@importer("Add", "Sum")
def add(ctx, node):
    ctx.emit(node, "Add", list(node.input))


@importer("Mul", "Sub", "Div")
def binary(ctx, node):
    ctx.emit(node, node.op_type, list(node.input))


@importer("Concat")
def concat(ctx, node):
    ctx.emit(node, "Concat", list(node.input), {"axis": attr(node, "axis")})


@importer("MaxPool")
def maxpool(ctx, node):
    _unused_extra_outputs(ctx, node)
    if attr(node, "storage_order", 0):
        raise IntqError(f"node {node.name}: MaxPool storage_order=1 is not supported")
    kernel = tuple(attr(node, "kernel_shape"))
    attrs = _window_attrs(ctx, node, kernel)
    attrs.update(kernel_shape=kernel, ceil_mode=int(attr(node, "ceil_mode", 0)))
    ctx.emit(node, "MaxPool", [node.input[0]], attrs)


@importer("AveragePool")
def avgpool(ctx, node):
    kernel = tuple(attr(node, "kernel_shape"))
    attrs = _window_attrs(ctx, node, kernel)
    if attrs.pop("dilations") != (1, 1):
        raise IntqError(f"node {node.name}: dilated AveragePool is not supported")
    attrs.update(kernel_shape=kernel, ceil_mode=int(attr(node, "ceil_mode", 0)),
                 count_include_pad=int(attr(node, "count_include_pad", 0)))
    ctx.emit(node, "AveragePool", [node.input[0]], attrs)


@importer("GlobalAveragePool")
def global_avgpool(ctx, node):
    ctx.emit(node, "GlobalAveragePool", [node.input[0]], {"keepdims": 1})


@importer("ReduceMean")
def reduce_mean(ctx, node):
    shape = ctx.view.shapes.get(node.input[0])
    rank = len(shape) if shape else 4
    if ctx.opset >= 18:
        axes = ctx.optional_const(node, 1)
    else:
        axes = attr(node, "axes", None)
    axes = sorted(int(a) % rank for a in np.ravel(axes)) if axes is not None else None
    if rank != 4 or axes != [2, 3]:
        raise IntqError(f"node {node.name}: ReduceMean is supported over H and W of a 4-D "
                        f"tensor only (axes {axes}, rank {rank})")
    ctx.emit(node, "GlobalAveragePool", [node.input[0]],
             {"keepdims": int(attr(node, "keepdims", 1))})


@importer("Flatten")
def flatten(ctx, node):
    ctx.emit(node, "Flatten", [node.input[0]], {"axis": attr(node, "axis", 1)})


@importer("Reshape")
def reshape(ctx, node):
    if node.input[1] in ctx.view.symbolic:
        raise IntqError(f"node {node.name}: Reshape target depends on the batch size in a "
                        f"way intq cannot resolve")
    target = ctx.const(node.input[1], "Reshape shape")
    if np.ndim(target) != 1 or np.asarray(target).dtype.kind not in "iu":
        raise IntqError(f"node {node.name}: Reshape shape must be a 1-D integer tensor")
    target = [int(v) for v in target]
    if attr(node, "allowzero", 0) and 0 in target:
        raise IntqError(f"node {node.name}: Reshape with allowzero and a zero dimension")
    ctx.emit(node, "Reshape", [node.input[0]], {"shape": target})


@importer("Gemm")
def gemm(ctx, node):
    ctx.emit(node, "Gemm", list(node.input),
             {"alpha": float(attr(node, "alpha", 1.0)), "beta": float(attr(node, "beta", 1.0)),
              "transA": attr(node, "transA", 0), "transB": attr(node, "transB", 0)})


@importer("MatMul")
def matmul(ctx, node):
    ctx.emit(node, "MatMul", list(node.input))


@importer("Pad")
def pad(ctx, node):
    mode = attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if ctx.opset < 11:
        pads, value = attr(node, "pads"), attr(node, "value", 0.0)
        axes = None
    else:
        pads = ctx.const(node.input[1], "Pad pads")
        value = ctx.optional_const(node, 2)
        axes = ctx.optional_const(node, 3)
    pads = [int(p) for p in np.ravel(pads)]
    value = 0.0 if value is None else float(np.ravel(value)[0]) if np.size(value) else 0.0
    if mode != "constant" or value != 0.0:
        raise IntqError(f"node {node.name}: only constant zero padding is supported "
                        f"(mode {mode}, value {value})")
    rank = 4
    if axes is not None:
        full = [0] * (2 * rank)
        axes = [int(a) % rank for a in np.ravel(axes)]
        for j, a in enumerate(axes):
            full[a], full[a + rank] = pads[j], pads[j + len(axes)]
        pads = full
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        raise IntqError(f"node {node.name}: Pad must add non-negative padding to H and W of "
                        f"a 4-D tensor only, got pads {pads}")
    ctx.emit(node, "Pad", [node.input[0]], {"pads": (pads[2], pads[3], pads[6], pads[7])})


def declared_importer(spec):
    """The importer of an op whose spec declares its ONNX form (`OpSpec.onnx_ops`)."""
    def one_to_one(ctx, node):
        ctx.emit(node, spec.name, list(node.input),
                 {k: float(attr(node, k, v)) for k, v in spec.onnx_attrs.items()})
    return one_to_one


for _name in ops_where(float_graph=True):
    for _onnx_op in get_op(_name).onnx_ops:
        importer(_onnx_op)(declared_importer(get_op(_name)))


@importer("PRelu")
def prelu(ctx, node):
    slope = np.asarray(ctx.const(node.input[1], "PRelu slope"), dtype=np.float32)
    shape = ctx.view.shapes.get(node.input[0])
    c = shape[1] if shape and len(shape) > 1 else None
    if slope.size not in (1, c) or (slope.size > 1 and max(slope.shape) != slope.size):
        raise IntqError(f"node {node.name}: PRelu slope of shape {slope.shape} must be one "
                        f"value per channel or a scalar")
    name = ctx.graph.add_constant(f"{node.input[1]}.per_channel", slope.reshape(-1))
    ctx.emit(node, "PRelu", [node.input[0], name])


@importer("Softmax")
def softmax(ctx, node):
    shape = ctx.view.shapes.get(node.input[0])
    rank = len(shape) if shape else 2
    if ctx.opset < 13:   # over the input flattened from `axis` on
        axes = list(range(attr(node, "axis", 1) % rank, rank))
    else:
        axes = [attr(node, "axis", -1) % rank]
    if 0 in axes:  # the batch axis: samples would depend on each other (and its size is dynamic)
        raise IntqError(f"Softmax {node.name}: normalising over the batch axis is not supported")
    ctx.emit(node, "Softmax", [node.input[0]], {"axes": axes})


@importer("Transpose")
def transpose(ctx, node):
    shape = ctx.view.shapes.get(node.input[0])
    perm = attr(node, "perm", None)
    if perm is None:
        perm = list(range(len(shape)))[::-1]
    ctx.emit(node, "Transpose", [node.input[0]], {"perm": [int(p) for p in perm]})


def _axes(ctx, node, what):
    """Axes given as an attribute (before opset 13) or as a constant second input."""
    if ctx.opset < 13:
        axes = attr(node, "axes", None)
    else:
        axes = ctx.optional_const(node, 1)
    if axes is None:
        raise IntqError(f"node {node.name}: {what} needs explicit axes")
    return [int(a) for a in np.ravel(axes)]


@importer("Squeeze", "Unsqueeze")
def squeeze(ctx, node):
    ctx.emit(node, node.op_type, [node.input[0]], {"axes": _axes(ctx, node, node.op_type)})


@importer("Slice")
def slice_(ctx, node):
    if ctx.opset < 10:
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes, steps = attr(node, "axes", None), None
    else:
        starts, ends = ctx.const(node.input[1]), ctx.const(node.input[2])
        axes, steps = ctx.optional_const(node, 3), ctx.optional_const(node, 4)
    starts, ends = [int(v) for v in np.ravel(starts)], [int(v) for v in np.ravel(ends)]
    axes = list(range(len(starts))) if axes is None else [int(v) for v in np.ravel(axes)]
    steps = [1] * len(starts) if steps is None else [int(v) for v in np.ravel(steps)]
    # INT64_MAX means "to the end" (and INT64_MIN, with a negative step, "to the start"):
    # past any dimension intq accepts, the bounds clamp to MAX_DIM + 1 without changing
    # the slice.
    big = MAX_DIM + 1
    starts = [min(max(v, -big), big) for v in starts]
    ends = [min(max(v, -big), big) for v in ends]
    ctx.emit(node, "Slice", [node.input[0]],
             {"starts": starts, "ends": ends, "axes": axes, "steps": steps})


@importer("Split")
def split(ctx, node):
    shape = ctx.view.shapes.get(node.input[0])
    axis = attr(node, "axis", 0) % len(shape)
    sizes = attr(node, "split", None) if ctx.opset < 13 else ctx.optional_const(node, 1)
    n = len(node.output)
    if sizes is None:
        if shape[axis] is None or shape[axis] % n:
            raise IntqError(f"node {node.name}: cannot split axis {axis} of {shape} evenly")
        sizes = [shape[axis] // n] * n
    ctx.emit(node, "Split", [node.input[0]], {"axis": axis, "split": [int(v) for v in np.ravel(sizes)]},
             outputs=list(node.output))


@importer("Resize", "Upsample")
def resize(ctx, node):
    """Nearest and (bi)linear modes on H and W (N and C scale 1); see `intq.frontend.resize`."""
    where = f"{node.op_type} {node.name}"
    shape = ctx.view.shapes.get(node.input[0])
    if shape is None or len(shape) != 4 or None in shape[1:]:
        raise IntqError(f"{where}: needs an NCHW input of known C, H, W, got {shape}")
    text = lambda name, default: (lambda v: v.decode() if isinstance(v, bytes) else v)(
        attr(node, name, default))
    mode = text("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise IntqError(f"{where}: mode {mode!r} is not supported (nearest and linear are)")
    if attr(node, "antialias", 0):
        raise IntqError(f"{where}: antialias is not supported")
    if node.op_type == "Upsample" or ctx.opset < 11:
        transform, rounding = "asymmetric", "simple"
        scales = attr(node, "scales") if ctx.opset < 9 else ctx.optional_const(node, 1)
        sizes = None
        if node.op_type == "Upsample" and scales is not None and np.min(scales) < 1:
            raise IntqError(f"{where}: Upsample scales must be at least 1, got {np.ravel(scales).tolist()}")
    else:
        transform = text("coordinate_transformation_mode", "half_pixel")
        rounding = text("nearest_mode", "round_prefer_floor")
        scales, sizes = ctx.optional_const(node, 2), ctx.optional_const(node, 3)
        if transform == "tf_crop_and_resize":
            raise IntqError(f"{where}: coordinate_transformation_mode 'tf_crop_and_resize' "
                            f"is not supported")
        if text("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise IntqError(f"{where}: keep_aspect_ratio_policy other than 'stretch' is not supported")
        axes = attr(node, "axes", None)
        if axes is not None:   # opset 18: scales or sizes for these axes only
            full_s, full_z = [1.0] * 4, list(shape)
            for j, a in enumerate(int(a) % 4 for a in axes):
                if scales is not None and np.size(scales):
                    full_s[a] = float(np.ravel(scales)[j])
                if sizes is not None and np.size(sizes):
                    full_z[a] = int(np.ravel(sizes)[j])
            scales = full_s if scales is not None and np.size(scales) else None
            sizes = full_z if sizes is not None and np.size(sizes) else None
    if transform not in resize_rules.TRANSFORMS:
        raise IntqError(f"{where}: coordinate_transformation_mode {transform!r} is not supported")
    if mode == "nearest" and rounding not in resize_rules.ROUNDINGS:
        raise IntqError(f"{where}: nearest_mode {rounding!r} is not supported")
    in_shape = (1,) + tuple(shape[1:])
    out, scale = resize_rules.resolve_sizes(in_shape, scales, sizes, where)
    batch_changes = scale[0] != 1 if sizes is None else shape[0] not in (None, out[0])
    if out[1] != shape[1] or batch_changes:
        raise IntqError(f"{where}: only height and width may be resized, got output {out}")
    if mode == "linear":
        (r0, r1, rw0, rw1), (c0, c1, cw0, cw1) = (
            resize_rules.linear_taps(shape[a], out[a], scale[a], transform) for a in (2, 3))
        ctx.emit(node, "ResizeLinear", [node.input[0]],
                 {"rows0": r0, "rows1": r1, "row_w0": rw0, "row_w1": rw1,
                  "cols0": c0, "cols1": c1, "col_w0": cw0, "col_w1": cw1})
        return
    if all(sc == 1 for sc in scale):   # onnxruntime copies then, whatever the formula says
        rows, cols = list(range(shape[2])), list(range(shape[3]))
    else:
        rows, cols = (resize_rules.nearest_indices(shape[a], out[a], scale[a], transform, rounding)
                      for a in (2, 3))
    ctx.emit(node, "ResizeNearest", [node.input[0]], {"rows": rows, "cols": cols})


@importer("Identity")
def identity(ctx, node):
    ctx.emit(node, "Identity", [node.input[0]])


@importer("Dropout")
def dropout(ctx, node):
    _unused_extra_outputs(ctx, node)
    if attr(node, "is_test", 1) == 0 and ctx.opset < 7:
        raise IntqError(f"node {node.name}: Dropout in training mode")
    ctx.emit(node, "Dropout", [node.input[0]])


_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def _placeholder(ctx, node, reason):
    """An `Unsupported` node standing in for `node` (for `intq inspect` only)."""
    shapes = [ctx.view.shapes.get(o) for o in node.output]
    ctx.emit(node, "Unsupported", [i for i in node.input if i],
             {"onnx_op": node.op_type, "reason": reason, "shapes": shapes}, outputs=list(node.output))


def import_onnx(model, allow_unsupported: bool = False, input_shapes: dict | None = None) -> Graph:
    """Load, check, fold and convert an ONNX model (path or ModelProto) to a float Graph;
    `input_shapes` fixes dynamic input dimensions (`intq.frontend.input_shapes`).

    With allow_unsupported=True (for `intq inspect`), a node with no importer, or one whose
    importer rejects it, becomes an `Unsupported` placeholder instead of an error."""
    proto = load_onnx(model, input_shapes)
    view = fold_onnx_constants(proto)
    # Inputs first: with a dynamic height or width, the shape arithmetic cannot fold, and
    # the Shape nodes left over would be reported as unsupported ops, hiding the cause.
    for name in view.inputs:
        shape = view.shapes.get(name)
        if view.dtypes.get(name) not in _FLOAT_TYPES:
            raise IntqError(f"input {name!r} must be a float tensor")
        if shape is None or len(shape) != 4 or None in shape[1:]:
            raise IntqError(f"input {name!r} must be NCHW with static C, H, W; got {shape} "
                            f"(fix it with --input-shape {name}:1,C,H,W)")
    unsupported: dict[str, list[str]] = {}
    for node in view.nodes:
        if node.op_type not in IMPORTERS or node.domain not in ("", "ai.onnx"):
            unsupported.setdefault(node.op_type, []).append(node.name or "<unnamed>")
    if unsupported and not allow_unsupported:
        raise UnsupportedOpsError(unsupported)

    graph = Graph(view.name)
    graph.metadata.update(opset=view.opset, producer=proto.producer_name,
                          folded_onnx_nodes=view.folded)
    for name in view.inputs:
        graph.add_input(name, view.shapes.get(name))
    used = {i for n in view.nodes for i in n.input} | set(view.outputs)
    for name, value in view.consts.items():
        if name in used:
            value = np.asarray(value)
            if value.dtype.kind == "f":
                value = value.astype(np.float32)
            # ONNX names are unique already: keep them, so node inputs need no renaming.
            graph.constants[name] = value
            graph.values[name] = Value(name, tuple(value.shape), value.dtype.name)
    ctx = Context(view, graph)
    for node in view.nodes:
        if not allow_unsupported:
            IMPORTERS[node.op_type](ctx, node)
        elif node.op_type in unsupported:
            _placeholder(ctx, node, "no importer")
        else:
            try:
                IMPORTERS[node.op_type](ctx, node)
            except IntqError as e:
                _placeholder(ctx, node, str(e))
    graph.outputs = list(view.outputs)
    for out in graph.outputs:
        if out in graph.constants or out in graph.inputs:
            raise IntqError(f"graph output {out!r} is not computed by any node")
    infer_shapes(graph)
    return graph
