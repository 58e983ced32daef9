"""ONNX frontend: an ONNX file or ModelProto in, a float `intq.ir.Graph` out.

`load_onnx` reads and checks the file, `fold_onnx_constants` removes every computation on
constants and on shapes (so exporter shape arithmetic disappears), `import_onnx` checks
that every remaining op is supported (reporting all that are not at once) and converts each
node with its importer. Graph passes run afterwards, in `intq.passes`.
"""
from .load import load_onnx
from .folding import fold_onnx_constants
from .importers import import_onnx, IMPORTERS

__all__ = ["load_onnx", "fold_onnx_constants", "import_onnx", "IMPORTERS"]
