"""Fuse x * sigmoid(x) into Swish (SiLU) and x * hardsigmoid(x) into HardSwish.

Exporters spell SiLU as Sigmoid then Mul, and HardSwish (before opset 14) as HardSigmoid
then Mul. As one elementwise op of one tensor each becomes a single lookup table in the
integer graph, with one rounding, instead of a table and an integer product.
"""


def fuse_gated_activation(graph):
    for mul in [n for n in graph.nodes if n.op == "Mul" and len(n.inputs) == 2]:
        for gate_in, x in (mul.inputs, mul.inputs[::-1]):
            gate = graph.producer(gate_in)
            if gate is None or gate.op not in ("Sigmoid", "HardSigmoid") or gate.inputs[0] != x \
                    or graph.use_count(gate_in) != 1:
                continue
            if gate.op == "Sigmoid":
                mul.op, mul.attrs = "Swish", {}
            else:
                mul.op, mul.attrs = "HardSwish", {"alpha": gate.attrs["alpha"], "beta": gate.attrs["beta"]}
            mul.inputs = [x]
            graph.remove_node(gate)
            break
    graph.prune()
    return graph
