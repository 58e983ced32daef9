"""Remove Identity and inference-mode Dropout: their readers read the input directly."""


def remove_identity(graph):
    for node in [n for n in graph.nodes if n.op in ("Identity", "Dropout")]:
        graph.remove_node(node)
        graph.replace_uses(node.output, node.inputs[0])
    graph.prune()
    return graph
