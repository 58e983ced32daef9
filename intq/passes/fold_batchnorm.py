"""Fold inference BatchNormalization into the Conv or Linear that produces its input.

With s = gamma / sqrt(var + eps) per output channel: W' = W * s, b' = (b - mean) * s + beta
(HAWQ-V3 App. D). Folding happens in float64 so the folded layer matches the unfolded pair
to float32 rounding. A BatchNorm with no such producer is an error: intq has no integer
BatchNorm, by design (the scale belongs in the weights).
"""
import numpy as np

from ..errors import IntqError


def fold_batchnorm(graph):
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        prod = graph.producer(bn.inputs[0])
        if prod is None or prod.op not in ("Conv", "Linear") or prod.attrs.get("act_min") is not None \
                or prod.attrs.get("act_max") is not None or graph.use_count(bn.inputs[0]) != 1:
            what = "nothing" if prod is None else f"{prod.op} {prod.name}"
            raise IntqError(f"BatchNormalization {bn.name} has no Conv or Gemm producer to fold "
                            f"into (its input comes from {what})")
        gamma, beta, mean, var = (graph.constants[i].astype(np.float64) for i in bn.inputs[1:5])
        if not np.all(var + bn.attrs["epsilon"] > 0):  # NaN fails too
            raise IntqError(f"BatchNormalization {bn.name}: variance + epsilon must be positive")
        scale = gamma / np.sqrt(var + bn.attrs["epsilon"])
        w = graph.constants[prod.inputs[1]].astype(np.float64)
        b = (graph.constants[prod.inputs[2]].astype(np.float64)
             if len(prod.inputs) > 2 and prod.inputs[2] else np.zeros(w.shape[0]))
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        b = (b - mean) * scale + beta
        # New constants: the originals may be shared with other layers.
        prod.inputs = [prod.inputs[0],
                       graph.add_constant(f"{prod.name}.weight_folded", w.astype(np.float32)),
                       graph.add_constant(f"{prod.name}.bias_folded", b.astype(np.float32))]
        graph.remove_node(bn)
        graph.replace_uses(bn.output, prod.output)
    graph.prune()
    return graph
