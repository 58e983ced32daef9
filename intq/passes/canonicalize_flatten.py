"""Canonicalise the reshape in front of the classifier.

A Reshape from (N, C, H, W) to (N, C*H*W), which is what `x.view(x.size(0), -1)` and
`torch.flatten(x, 1)` export to, becomes Flatten(axis=1); a Flatten of a keepdims pool
merges into the pool (keepdims=0). The classifier head then reads a 2-D tensor whose batch
dimension stays dynamic.
"""
from ..ops.base import numel


def canonicalize_flatten(graph):
    for node in list(graph.nodes):
        if node.op != "Reshape":
            continue
        src = graph.values[node.inputs[0]].shape
        dst = graph.values[node.output].shape
        if len(src) >= 2 and len(dst) == 2 and src[0] == dst[0] and None not in src[1:] \
                and dst[1] == numel(src[1:]):
            node.op, node.attrs = "Flatten", {"axis": 1}
    for node in list(graph.nodes):
        if node.op != "Flatten" or node.attrs.get("axis", 1) != 1:
            continue
        prod = graph.producer(node.inputs[0])
        if prod is not None and prod.op == "GlobalAveragePool" and prod.attrs.get("keepdims", 1) \
                and graph.use_count(prod.output) == 1:
            prod.attrs["keepdims"] = 0
            graph.remove_node(node)
            graph.replace_uses(node.output, prod.output)
    graph.prune()
    return graph
