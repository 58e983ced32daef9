"""Fixing a model's dynamic input dimensions (`--input-shape`), as onnxsim's
`--overwrite-input-shape` and trtexec's `--shapes` do.

Detectors and OCR models are exported with symbolic height and width (`dynamic_axes`);
intq compiles for one shape. `parse_input_shapes` reads the user's text, `fix_input_shapes`
writes the dimensions into the graph's inputs before shape inference runs, so that the
shape arithmetic computed from them (Shape / Gather / Range / Expand / ConstantOfShape)
folds to constants in `intq.frontend.folding` like any other.

A given dimension may replace a symbolic or unknown one; a static one must be given its
own value (a model fixed at 640x640 cannot be compiled at 320x320 by relabelling it: its
reshape constants were computed for 640). A symbolic batch dimension stays symbolic,
whatever number is given for it: intq runs any batch.
"""
from __future__ import annotations

import onnx

from ..errors import IntqError


def parse_input_shapes(texts) -> dict | None:
    """`["1,3,640,640"]` or `["images:1,3,640,640", "mask:1,1,640,640"]` (also one string
    with `;` between inputs) -> {name or None: (dims...)}; None for no text. A name-less
    shape applies to the model's only input."""
    if not texts:
        return None
    if isinstance(texts, str):
        texts = [texts]
    shapes: dict = {}
    for text in (part for t in texts for part in str(t).split(";")):
        text = text.strip()
        if not text:
            continue
        name, _, dims = text.rpartition(":")
        name = name.strip() or None
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError:
            raise IntqError(f"--input-shape {text!r}: expected [NAME:]N,C,H,W with whole numbers") from None
        if not shape or any(d <= 0 for d in shape):
            raise IntqError(f"--input-shape {text!r}: every dimension must be a positive whole number")
        if name in shapes:
            raise IntqError(f"--input-shape names {'the input' if name is None else repr(name)} twice")
        shapes[name] = shape
    if None in shapes and len(shapes) > 1:
        raise IntqError("--input-shape: give every shape with its input's name when there are several")
    return shapes or None


def graph_inputs(proto: onnx.ModelProto) -> list:
    """The graph inputs that are not initializers (the model's real inputs)."""
    inits = {t.name for t in proto.graph.initializer}
    return [vi for vi in proto.graph.input if vi.name not in inits]


def fix_input_shapes(proto: onnx.ModelProto, shapes: dict) -> onnx.ModelProto:
    """A copy of `proto` whose named inputs have the given static shapes, with every
    intermediate shape annotation dropped (stale symbolic shapes would otherwise be merged
    back by shape inference)."""
    inputs = graph_inputs(proto)
    by_name = {vi.name: vi for vi in inputs}
    if None in shapes:
        if len(inputs) != 1:
            raise IntqError(f"--input-shape without a name, but the model has {len(inputs)} inputs "
                            f"({', '.join(by_name)}): give NAME:shape")
        shapes = {inputs[0].name: shapes[None]}
    unknown = [n for n in shapes if n not in by_name]
    if unknown:
        raise IntqError(f"--input-shape names {unknown[0]!r}, which is not an input of the model "
                        f"(inputs: {', '.join(by_name)})")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for vi in graph_inputs(out):
        if vi.name not in shapes:
            continue
        want = shapes[vi.name]
        t = vi.type.tensor_type
        have = list(t.shape.dim)
        if t.HasField("shape") and len(have) != len(want):
            raise IntqError(f"--input-shape {vi.name}: the model's input has {len(have)} dimensions, "
                            f"{len(want)} given")
        for axis, (d, w) in enumerate(zip(have, want)):
            if d.HasField("dim_value") and d.dim_value != w:
                raise IntqError(f"--input-shape {vi.name}: dimension {axis} is fixed at {d.dim_value} "
                                f"in the model, {w} given")
        t.ClearField("shape")
        for axis, w in enumerate(want):
            # The batch stays as exported where it was symbolic: intq runs any batch.
            old = have[axis] if axis < len(have) else None
            dim = t.shape.dim.add()
            if axis == 0 and old is not None and not old.HasField("dim_value"):
                dim.dim_param = old.dim_param or "N"
            else:
                dim.dim_value = w
    # Graph outputs keep their declared (possibly symbolic) shapes: inference refines them.
    del out.graph.value_info[:]
    return out


def with_input_shapes(model, shapes):
    """`model` (a path or ModelProto) with its inputs fixed to `shapes`, as a checked
    ModelProto; `model` itself where `shapes` is empty. `shapes`: a dict from
    `parse_input_shapes`, the text it reads, or one tuple for a single-input model."""
    if isinstance(shapes, tuple) or (isinstance(shapes, list) and shapes and isinstance(shapes[0], int)):
        shapes = {None: tuple(int(d) for d in shapes)}
    elif not isinstance(shapes, dict):
        shapes = parse_input_shapes(shapes)
    if not shapes:
        return model
    from .load import load_onnx

    return load_onnx(model, shapes)
