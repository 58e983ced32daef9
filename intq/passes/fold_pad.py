"""Fold a zero Pad into the Conv or pool that reads it.

Conv: pads add up. AveragePool: legal when the pool pads nothing itself or counts its pads
(then Pad + pool = pool with the sum of pads and count_include_pad=1). MaxPool: zeros only
equal the pool's implicit -inf padding when the input is known non-negative (it comes out
of a ReLU/ReLU6 clamp), so only then. A Pad with interior padding (a ConvTranspose's
zero insertion) never folds. Otherwise the Pad stays for the executors to run.
"""


def _non_negative(graph, name):
    prod = graph.producer(name)
    if prod is None:
        return False
    if prod.op == "Relu":
        return True
    if prod.op == "Clip":
        return prod.attrs.get("min") is not None and prod.attrs["min"] >= 0
    lo = prod.attrs.get("act_min")
    return lo is not None and lo >= 0


def _foldable(graph, pad, user):
    if any(pad.attrs.get("interior", (0, 0))):   # zeros between elements: no window pads those
        return False
    if user.op == "Conv":
        return True
    if user.op == "AveragePool":
        return user.attrs["count_include_pad"] or not any(user.attrs["pads"])
    if user.op == "MaxPool":
        k = user.attrs["kernel_shape"]
        total = [a + b for a, b in zip(pad.attrs["pads"], user.attrs["pads"])]
        # every window must still see a real input cell: pads stay below the kernel
        fits = all(p < k[i % 2] for i, p in enumerate(total))
        return fits and _non_negative(graph, pad.inputs[0])
    return False


def fold_pad(graph):
    for pad in [n for n in graph.nodes if n.op == "Pad"]:
        users = graph.consumers(pad.output)
        if graph.use_count(pad.output) != len(users) or not users \
                or not all(_foldable(graph, pad, u) for u in users):
            continue
        for user in users:
            user.attrs["pads"] = tuple(a + b for a, b in zip(pad.attrs["pads"], user.attrs["pads"]))
            if user.op == "AveragePool":
                user.attrs["count_include_pad"] = 1
            user.inputs = [pad.inputs[0] if i == pad.output else i for i in user.inputs]
        graph.remove_node(pad)
    graph.prune()
    return graph
