"""Read an ONNX model from a path, bytes or ModelProto; check it; infer shapes.

Every way a file can be wrong (missing, not ONNX, truncated, invalid graph, unsupported
opset) becomes one IntqError line naming the file. A file is trusted no further than it
was checked: external weight data must lie inside the model's folder (no `..`, no
absolute path, no link out of it), and every tensor's declared size (initializers before
their data is read, every inferred tensor before anything runs) must fit the memory limit
of `intq.limits`, so a hostile model is refused before it can allocate.
"""
from __future__ import annotations

import os

import onnx
from google.protobuf.message import DecodeError

from ..errors import IntqError
from ..limits import check_bytes
from ..ops.base import numel
from .input_shapes import fix_input_shapes

MIN_OPSET, MAX_OPSET = 7, 22


def load_onnx(model, input_shapes: dict | None = None) -> onnx.ModelProto:
    """The checked, shape-inferred ModelProto of `model`; `input_shapes` (from
    `intq.frontend.input_shapes.parse_input_shapes`) fixes dynamic input dimensions first."""
    if isinstance(model, onnx.ModelProto):
        proto, where = model, "model"
        _check_tensors(proto, where, None)
    else:
        path = os.fspath(model)
        where = path
        if not os.path.exists(path):
            raise IntqError(f"{path}: no such file")
        if os.path.isdir(path):
            raise IntqError(f"{path}: is a directory, not an ONNX file")
        try:
            check_bytes(os.path.getsize(path), f"{path}: reading the file")
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise IntqError(f"{path}: cannot read: {e.strerror}") from None
        if not data:
            raise IntqError(f"{path}: empty file, not an ONNX model")
        try:
            proto = onnx.ModelProto()
            proto.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise IntqError(f"{path}: not a valid ONNX file (truncated or corrupt: {e})") from None
        if not proto.graph.node and not proto.graph.input:
            raise IntqError(f"{path}: not an ONNX model (no graph found)")
        base = os.path.dirname(os.path.abspath(path))
        _check_tensors(proto, where, base)
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, base)
        except (OSError, ValueError) as e:
            raise IntqError(f"{path}: external weight data cannot be read: {e}") from None
    if input_shapes:
        proto = fix_input_shapes(proto, input_shapes)
    opset = onnx_opset(proto)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise IntqError(f"{where}: opset {opset} is outside the supported {MIN_OPSET}..{MAX_OPSET}")
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise IntqError(f"{where}: invalid ONNX model: {first}") from None
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, data_prop=True)
    except Exception as e:  # onnx raises several types here; all mean a broken model
        first = str(e).strip().splitlines()[0]
        raise IntqError(f"{where}: shape inference failed: {first}") from None
    for vi in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output):
        t = vi.type.tensor_type
        dims = [max(d.dim_value, 0) if d.HasField("dim_value") else 1 for d in t.shape.dim]
        check_bytes(numel(dims) * _itemsize(t.elem_type), f"{where}: tensor {vi.name!r}")
    return proto


def _itemsize(data_type: int) -> int:
    try:
        return max(onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize, 1)
    except (KeyError, ValueError, TypeError):
        return 8  # an undefined type: the checker reports it; assume the widest here


def _all_tensors(graph):
    """Every TensorProto of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _all_tensors(sub)


def _check_tensors(proto, where, base) -> None:
    """Declared sizes against the memory limit; external data paths inside `base` (the
    model's folder); inline data against the declared shape. Runs before any tensor data is
    read or converted."""
    for t in _all_tensors(proto.graph):
        if any(d < 0 for d in t.dims):
            raise IntqError(f"{where}: tensor {t.name!r} has negative dimensions {list(t.dims)}")
        size = numel(t.dims) * _itemsize(t.data_type)
        check_bytes(size, f"{where}: tensor {t.name!r}")
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            loc = info.get("location", "")
            parts = loc.replace("\\", "/").split("/")
            inside = (base is not None and loc and not os.path.isabs(loc) and ".." not in parts
                      and os.path.realpath(os.path.join(base, loc)).startswith(
                          os.path.realpath(base) + os.sep))
            if not inside:
                raise IntqError(f"{where}: tensor {t.name!r} refers to external data {loc!r} "
                                f"outside the model's folder")
            # onnx reads `length` bytes, or the whole rest of the file: never more than declared.
            target = os.path.join(base, loc)
            try:
                reads = (int(info["length"]) if "length" in info else
                         os.path.getsize(target) - int(info.get("offset", 0)))
            except (ValueError, OSError):
                reads = size  # malformed or missing: onnx's own loader reports it
            if reads > size:
                raise IntqError(f"{where}: tensor {t.name!r} would read {reads} bytes of external "
                                f"data for a shape that needs {size}")
        elif t.HasField("raw_data") and t.data_type not in _PACKED_OR_TEXT and len(t.raw_data) != size:
            # The checker catches too few bytes but not too many (numpy then fails to reshape).
            raise IntqError(f"{where}: tensor {t.name!r} holds {len(t.raw_data)} bytes of data, its "
                            f"shape {list(t.dims)} needs {size}")


# Types whose raw byte count is not numel * itemsize (sub-byte packing, strings).
_PACKED_OR_TEXT = {getattr(onnx.TensorProto, n) for n in ("STRING", "INT4", "UINT4", "FLOAT4E2M1",
                                                          "INT2", "UINT2") if hasattr(onnx.TensorProto, n)}


def onnx_opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise IntqError("model does not import the default ONNX opset")
