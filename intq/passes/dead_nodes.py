"""Remove nodes none of whose outputs reaches a graph output."""


def remove_dead_nodes(graph):
    live = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(o in live for o in node.outputs):
            kept.append(node)
            live.update(i for i in node.inputs if i)
    graph.nodes = kept[::-1]
    graph.prune()
    return graph
