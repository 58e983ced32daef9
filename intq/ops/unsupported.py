"""Unsupported: a placeholder for an ONNX node intq cannot import, made only for
`intq inspect` (`import_onnx(..., allow_unsupported=True)`) so that the rest of the graph
can still be shown. Its output shapes are the ones ONNX shape inference found (() when
unknown); attrs `onnx_op` and `reason`. It has no semantics: running it is an error.
"""
from ..errors import IntqError
from . import contract as k
from .base import OpSpec


class Unsupported(OpSpec):
    name = "Unsupported"
    # `intq inspect`'s placeholder: never valid in a graph that is compiled or loaded.
    float_graph = False
    arity = (0, 0)

    @staticmethod
    def infer(node, ins, graph):
        return [(tuple(s) if s is not None else (), "float32") for s in node.attrs["shapes"]]

    @staticmethod
    def run(attrs, *xs):
        raise IntqError(f"{attrs['onnx_op']} is not supported: {attrs['reason']}")


SPECS = [Unsupported]
