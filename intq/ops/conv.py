"""Conv: 2-D convolution (groups, strides, dilations, explicit pads) with optional bias
and an optional fused clamp (`act_min`/`act_max`, left by `passes.fuse_activation`)."""
import numpy as np

from ..errors import IntqError
from . import contract as k
from .base import OpSpec, apply_activation, require_rank
from .window import conv2d, spatial_output


class Conv(OpSpec):
    name = "Conv"
    attrs = {"groups": k.GROUPS, **k.WINDOW}
    optional = k.ACT
    arity = (2, 3)
    optional_inputs = (2,)
    tags = frozenset({"windowed", "layer"})

    @staticmethod
    def window_kernel(node, g):
        w = g.values[node.inputs[1]].shape
        return tuple(w[2:]) if len(w) == 4 else (1, 1)

    @staticmethod
    def precheck(node, g, p):
        k.window(p, g, node, Conv.window_kernel(node, g))
        k.groups_divide(p, g, node)

    @staticmethod
    def infer(node, ins, graph):
        x, w = ins[0], ins[1]
        require_rank(x, 4)
        require_rank(w, 4, "weight")
        a = node.attrs
        n, c, h, wd = x.shape
        m, cg, kh, kw = w.shape
        if a["groups"] < 1:
            raise IntqError(f"groups must be >= 1, got {a['groups']}")
        if c is not None and c != cg * a["groups"]:
            raise IntqError(f"input has {c} channels, weight expects {cg}x{a['groups']} groups")
        if m % a["groups"]:
            raise IntqError(f"{m} output channels do not split into {a['groups']} groups")
        if len(ins) > 2 and ins[2] is not None and tuple(ins[2].shape) != (m,):
            raise IntqError(f"bias shape {ins[2].shape} != ({m},)")
        ho, wo = spatial_output((h, wd), (kh, kw), a["strides"], a["pads"], a["dilations"])
        return [((n, m, ho, wo), x.dtype)]

    @staticmethod
    def run(attrs, x, w, b=None):
        y = conv2d(x, w, attrs["strides"], attrs["pads"], attrs["dilations"], attrs["groups"])
        if b is not None:
            y = y + b.reshape(1, -1, 1, 1)
        return (apply_activation(y.astype(x.dtype, copy=False), attrs),)

    @staticmethod
    def macs(node, graph):
        out = graph.values[node.output].shape
        w = graph.values[node.inputs[1]].shape
        return int(np.prod(out[1:])) * int(np.prod(w[1:]))

    @staticmethod
    def params(node, graph):
        return sum(int(np.prod(graph.values[i].shape)) for i in node.inputs[1:] if i)


SPECS = [Conv]
