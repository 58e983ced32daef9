"""Turn Gemm, and MatMul followed by a bias Add, into one Linear (x W^T + b).

Linear holds W as (out, in) with alpha folded in and b as (out,) with beta folded in, so
later stages (BN folding, per-channel weight quantization) see one layout.
"""
import numpy as np

from ..errors import IntqError


def _bias_vector(c, m):
    """Return a Gemm/Add bias as an (m,) vector, or None if it is not per output feature."""
    c = np.asarray(c, dtype=np.float32)
    if c.size == 1:
        return np.full(m, c.ravel()[0], dtype=np.float32)
    if c.shape in ((m,), (1, m)):
        return c.reshape(m)
    return None


def canonicalize_linear(graph):
    for node in list(graph.nodes):
        if node.op == "Gemm":
            if node.attrs.get("transA", 0):
                raise IntqError(f"node {node.name}: Gemm with transA=1 is not supported")
            b = graph.constants.get(node.inputs[1])
            if b is None:
                raise IntqError(f"node {node.name}: Gemm weight must be a constant")
            w = (b if node.attrs.get("transB", 0) else b.T) * node.attrs.get("alpha", 1.0)
            inputs = [node.inputs[0], graph.add_constant(f"{node.name}.weight", w.astype(np.float32))]
            if len(node.inputs) > 2 and node.inputs[2]:
                c = graph.constants.get(node.inputs[2])
                bias = None if c is None else _bias_vector(c * node.attrs.get("beta", 1.0), w.shape[0])
                if bias is None:
                    raise IntqError(f"node {node.name}: Gemm C must be a constant bias per output")
                inputs.append(graph.add_constant(f"{node.name}.bias", bias))
            node.op, node.inputs, node.attrs = "Linear", inputs, {}
        elif node.op == "MatMul":
            b = graph.constants.get(node.inputs[1])
            if b is None:
                raise IntqError(f"node {node.name}: MatMul weight must be a constant")
            inputs = [node.inputs[0], graph.add_constant(f"{node.name}.weight",
                                                         np.ascontiguousarray(b.T))]
            users = graph.consumers(node.output)
            if len(users) == 1 and graph.use_count(node.output) == 1 and users[0].op == "Add" \
                    and len(users[0].inputs) == 2:
                add = users[0]
                other = [i for i in add.inputs if i != node.output]
                c = graph.constants.get(other[0]) if other else None
                bias = None if c is None else _bias_vector(c, b.shape[1])
                if bias is not None:
                    inputs.append(graph.add_constant(f"{node.name}.bias", bias))
                    graph.remove_node(add)
                    graph.replace_uses(add.output, node.output)
            node.op, node.inputs, node.attrs = "Linear", inputs, {}
    graph.prune()
    return graph
