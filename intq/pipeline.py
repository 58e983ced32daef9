"""Entry points that chain the stages: ONNX -> float graph -> passes."""
from __future__ import annotations

from .frontend import import_onnx
from .ir import Graph
from .passes import run_passes


def float_graph(model) -> Graph:
    """Import an ONNX model (path or ModelProto) and run the whole float pass pipeline."""
    return run_passes(import_onnx(model))
