"""Evaluate every node whose inputs are all constants and keep its result as a constant."""
from ..ops import get_op


def constant_fold(graph):
    for node in list(graph.nodes):
        if node.inputs and all(not i or graph.is_constant(i) for i in node.inputs) \
                and not any(o in graph.outputs for o in node.outputs):
            args = [graph.constants[i] if i else None for i in node.inputs]
            for name, value in zip(node.outputs, get_op(node.op).run(node.attrs, *args)):
                graph.constants[name] = value
                graph.values[name].shape = tuple(value.shape)
            graph.remove_node(node)
    graph.prune()
    return graph
