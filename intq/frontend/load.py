"""Read an ONNX model from a path, bytes or ModelProto; check it; infer shapes.

Every way a file can be wrong (missing, not ONNX, truncated, invalid graph, unsupported
opset) becomes one IntqError line naming the file.
"""
from __future__ import annotations

import os

import onnx
from google.protobuf.message import DecodeError

from ..errors import IntqError

MIN_OPSET, MAX_OPSET = 7, 22


def load_onnx(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        proto, where = model, "model"
    else:
        path = os.fspath(model)
        where = path
        if not os.path.exists(path):
            raise IntqError(f"{path}: no such file")
        if os.path.isdir(path):
            raise IntqError(f"{path}: is a directory, not an ONNX file")
        try:
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
        try:
            base = os.path.dirname(os.path.abspath(path))
            onnx.external_data_helper.load_external_data_for_model(proto, base)
        except (OSError, ValueError) as e:
            raise IntqError(f"{path}: external weight data cannot be read: {e}") from None
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
    return proto


def onnx_opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise IntqError("model does not import the default ONNX opset")
