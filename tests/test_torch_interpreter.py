"""The torch interpreter of the float graph (`intq.twin.interpret`): every float op that
integer lowering accepts has a torch entry (the ops are enumerated from lowering's own
check, not listed here), each entry computes what the numpy float executor computes (on
graphs that together use every such op), and QAT's overlay has a fake-quantization rule for
each of them and puts its quantization points exactly at lowering's, with lowering's
parameters."""
import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from conftest import MODELS, make_model
from intq.float_executor import run_float
from intq.ir import Graph, Node
from intq.ops import get_op, known_ops
from intq.pipeline import compile_model, float_graph
from intq.quant.lower import LAYERS, lowering_problem
from intq.quant.scheme import QuantConfig
from intq.twin.interpret import FLOAT_OPS, FloatInterpreter, Overlay, is_layer
from intq.twin.qat import QATModel, float_graph_with_batchnorms, lowering_kind

from pathlib import Path

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def lowered_float_ops() -> set:
    """Every op of the float IR (intq.ops' registry) that lowering has an integer form for:
    the ops `intq compile` accepts after the passes."""
    empty = Graph()
    return {op for op in known_ops()
            if lowering_problem(empty, Node(op, op, [], [op], {"onnx_op": op, "reason": ""})) is None}


def test_every_op_compile_accepts_has_a_torch_entry_and_a_qat_rule():
    ops = lowered_float_ops()
    # the enumeration really reaches lowering's tables (layers, data movement, nonlinear)
    assert {"Conv", "Linear", "Transpose", "HardSwish", "Mul", "Softmax", "ChannelAffine"} <= ops
    assert not {"IntConv", "BatchNormalization", "Unsupported", "Gemm"} & ops
    missing = sorted(ops - set(FLOAT_OPS))
    assert not missing, f"no torch entry in intq.twin.interpret.FLOAT_OPS for {missing}"
    assert {op for op in FLOAT_OPS if is_layer(op)} == set(LAYERS)
    no_rule = sorted(op for op in ops if lowering_kind(op) is None)
    assert not no_rule, f"QAT has no fake-quantization rule for the lowering of {no_rule}"


def every_op_model(product=True):
    """A small graph that, with the bundled nets, uses every op lowering accepts: the ones
    they lack (pads that stay, leaky and parametric ReLU, tanh, ceil-mode pools with
    asymmetric pads, split, swish, sigmoid, an unfoldable affine after a concat, nearest and
    bilinear resizes and the difference of two tensors, transpose, unfused
    ReLU and clip, reversed and strided slices, unsqueeze/squeeze, an SE product; without
    the product with `product=False`)."""
    r = np.random.default_rng(0)
    w = lambda *s: (r.standard_normal(s) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Pad", ["c1", "pads"], ["p"]),
        helper.make_node("LeakyRelu", ["p"], ["l"], alpha=0.1),
        helper.make_node("AveragePool", ["l"], ["a"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[0, 0, 1, 1], ceil_mode=1, count_include_pad=1),
        helper.make_node("MaxPool", ["a"], ["m"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        helper.make_node("Tanh", ["m"], ["t0"]),
        helper.make_node("Abs", ["t0"], ["t"]),
        helper.make_node("PRelu", ["t", "slope"], ["pr"]),
        helper.make_node("Split", ["pr", "split"], ["s1", "s2"], axis=1),
        helper.make_node("Sigmoid", ["s1"], ["g1"]),
        helper.make_node("Mul", ["s1", "g1"], ["sw"]),
        helper.make_node("Sigmoid", ["s2"], ["g2"]),
        helper.make_node("Concat", ["sw", "g2"], ["cat"], axis=1),
        helper.make_node("Mul", ["cat", "scale"], ["cs"]),
        helper.make_node("Add", ["cs", "shift"], ["aff"]),
        helper.make_node("Resize", ["aff", "", "up2"], ["up"], mode="nearest"),
        helper.make_node("Resize", ["up", "", "down2"], ["down"], mode="linear"),
        helper.make_node("Sub", ["down", "aff"], ["dif"]),
        helper.make_node("Transpose", ["dif"], ["tr"], perm=[0, 1, 3, 2]),
        helper.make_node("Relu", ["tr"], ["re"]),
        helper.make_node("Clip", ["re", "lo", "hi"], ["cl"]),
        helper.make_node("Slice", ["cl", "starts", "ends", "axes", "steps"], ["sl"]),
        helper.make_node("Unsqueeze", ["sl", "uax"], ["u"]),
        helper.make_node("Squeeze", ["u", "uax"], ["sq"]),
        helper.make_node("HardSwish", ["sq"], ["hs"]),
        helper.make_node("GlobalAveragePool", ["hs"], ["gp"]),
        helper.make_node("HardSigmoid", ["gp"], ["gate"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["hs", "gate"], ["se"]) if product else
        helper.make_node("Relu", ["hs"], ["se"]),
        helper.make_node("Conv", ["se", "w2", "b2"], ["c2"]),
        helper.make_node("Add", ["c2", "se"], ["res"]),
        helper.make_node("GlobalAveragePool", ["res"], ["gp2"]),
        helper.make_node("Flatten", ["gp2"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["z"], transB=1),
        helper.make_node("Softmax", ["z"], ["y"], axis=1),
    ]
    inits = {"w1": w(8, 3, 3, 3), "b1": w(8), "pads": np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64),
             "slope": np.linspace(-0.5, 0.5, 8).astype(np.float32).reshape(8, 1, 1),
             "split": np.array([3, 5], np.int64),
             "scale": (1 + w(1, 8, 1, 1)), "shift": w(1, 8, 1, 1),
             "up2": np.array([1, 1, 2, 2], np.float32), "down2": np.array([1, 1, 0.5, 0.5], np.float32),
             "lo": np.array(0.1, np.float32), "hi": np.array(2.0, np.float32),
             "starts": np.array([-1, 0], np.int64), "ends": np.array([-1000, 5], np.int64),
             "axes": np.array([3, 2], np.int64), "steps": np.array([-1, 2], np.int64),
             "uax": np.array([2], np.int64), "w2": w(8, 8, 1, 1), "b2": w(8),
             "w3": w(10, 8), "b3": w(10)}
    return make_model(nodes, [("x", ["N", 3, 16, 16])], [("y", None)], inits, opset=14)


def test_every_op_model_uses_what_the_bundled_nets_lack():
    ops = {n.op for n in float_graph(every_op_model()).nodes}
    for p in MODELS.glob("*.onnx"):
        ops |= {n.op for n in float_graph(p).nodes}
    ops |= {n.op for n in float_graph(LIGHT / "light_shufflenet.onnx").nodes}
    assert lowered_float_ops() <= ops, sorted(lowered_float_ops() - ops)


GRAPHS = [MODELS / f"{n}.onnx" for n in ("resnet", "inception", "mobilenet", "mobilenetv3",
                                         "mobilenetv3.dynamo")] + \
         [LIGHT / f"light_{n}.onnx" for n in ("shufflenet", "squeezenet", "inception_v2")] + ["every_op"]


def load(name):
    if name in ("every_op", "every_op_no_product"):
        return every_op_model(product=name == "every_op")
    return name


def images(fg, n):
    shape = fg.values[fg.inputs[0]].shape
    if tuple(shape[1:]) == (1, 16, 16):
        return np.load(MODELS / "digits_calib.npz")["x"][:n]
    batch = shape[0] or n
    return np.random.default_rng(0).standard_normal((batch,) + tuple(shape[1:])).astype(np.float32)


@pytest.mark.parametrize("name", GRAPHS, ids=lambda p: Path(str(p)).stem)
def test_interpreter_equals_the_float_executor_at_every_tensor(name):
    fg = float_graph(load(name))
    x = images(fg, 16)
    with torch.no_grad():
        got = FloatInterpreter(fg)(torch.as_tensor(x), trace=True)
    want = run_float(fg, x, trace=True)
    # A softmax over logits of size L amplifies their float32 rounding (L * 2^-24) through
    # exp: the dummy-weight SqueezeNet's logits are ~1e10, a rounding step of 1024, so two
    # correct float executors disagree completely after it. Its output is checked on the
    # interpreter's own input instead; every other tensor along the chain.
    softmax_input = {n.outputs[0]: n.inputs[0] for n in fg.nodes if n.op == "Softmax"}
    for t, v in got.items():
        w = want[t]
        if t in softmax_input:
            node = next(n for n in fg.nodes if n.outputs[0] == t)
            w = get_op("Softmax").run(node.attrs, got[softmax_input[t]].numpy())[0]
        assert v.shape == w.shape, t
        assert np.abs(v.numpy() - w).max() <= 1e-5 * max(np.abs(w).max(), 1.0), t


def test_a_fixed_batch_graph_runs_any_batch():
    """The opset-9 ShuffleNet spells its batch 1 in every channel-shuffle reshape."""
    fg = float_graph(LIGHT / "light_shufflenet.onnx")
    x = images(fg, 1)
    with torch.no_grad():
        two = FloatInterpreter(fg)(torch.as_tensor(np.concatenate([x, 2 * x])))
    assert np.allclose(two[:1].numpy(), run_float(fg, x)[0], atol=1e-6)


INT8, INT4, POT = QuantConfig(default_bits=8), QuantConfig(default_bits=4), QuantConfig(profile="pot")
# 32-bit residuals make lowering copy table and pool inputs down to 16 bits; the graph
# without the SE product: compile refuses a product of two 32-bit tensors (lower_mul narrows
# one operand to 8 bits, and 8 + 32 bits may still overflow IntMul's INT32).
POINT_CASES = [("every_op", INT8), ("every_op", INT4), ("every_op", POT),
               ("every_op_no_product", QuantConfig(residual_bits=32)),
               (MODELS / "mobilenetv3.onnx", INT8), (MODELS / "mobilenetv3.onnx", INT4),
               (LIGHT / "light_shufflenet.onnx", INT8),
               ("every_op", QuantConfig(default_bits="w4a8")),
               (MODELS / "mobilenetv3.onnx", QuantConfig(default_bits="w4a8"))]


@pytest.mark.parametrize("name,cfg", POINT_CASES,
                         ids=[f"{Path(str(n)).stem}-{c.profile}-bits{c.default_bits}-r{c.residual_bits}"
                              for n, c in POINT_CASES])
def test_qat_quantizes_at_lowerings_points_with_its_parameters(name, cfg):
    """Every tensor the compiled model holds as integers (input, stored outputs, pass-through
    outputs, narrow layer inputs, tables' 16-bit inputs, products' 8-bit operands, pools'
    16-bit inputs, softmax's uint8) is a fake-quantization point of QAT's forward with the
    same parameters, and QAT has no other."""
    fg, bns = float_graph_with_batchnorms(load(name))
    x = images(fg, 32)
    qm = QATModel(fg, bns, cfg, x).eval()
    with torch.no_grad():
        fake = qm(torch.as_tensor(x)).numpy()
    ig, _, _ = compile_model(fg, x, cfg)
    want = {k: v for k, v in ig.metadata["qparams"].items() if not v.get("accumulator")}
    got = {k: q.to_dict() for k, q in qm.points.items()}
    assert sorted(got) == sorted(want)
    assert all(got[k] == want[k] for k in want), [k for k in want if got[k] != want[k]][:3]
    copies = {k.rsplit(".", 1)[1] for k in got if k.endswith((".w16", ".s8"))}
    if name == "every_op":
        kinds = {qm.kinds[n.name] for n in fg.nodes}
        assert kinds == {"layer", "pass_through", "rescale", "pool", "table", "softmax", "product"}
        assert copies == {"s8"}  # the SE product of two 16-bit tensors
    if cfg.residual_bits == 32:
        # tables' and pools' inputs (both kinds read a 32-bit tensor in this graph)
        readers = {qm.kinds[n.name] for n in fg.nodes for k in got if k.endswith(".w16")
                   and n.inputs and n.inputs[0] == k[:-4]}
        assert copies == {"w16"} and {"table", "pool"} <= readers
    np.testing.assert_array_less(-1e-6, fake)  # softmax probabilities, dequantized


def test_overlays_see_every_tensor_and_every_layer():
    """The hooks' contract: `stored` once per computed tensor (the input with node None),
    `layer` once per Conv/Linear, `operands` once per node; the plain model is the
    interpreter with no overlay."""
    fg = float_graph(every_op_model())

    class Recorder(Overlay):
        def __init__(self):
            self.stored_at, self.layers, self.nodes = [], [], []

        def operands(self, node, ins):
            self.nodes.append(node.name)
            return ins

        def layer(self, node, x, w, b, forward):
            self.layers.append(node.name)
            return forward(x, w, b)

        def stored(self, t, v, node):
            self.stored_at.append((t, None if node is None else node.name))
            return v

    interp, rec = FloatInterpreter(fg), Recorder()
    x = torch.as_tensor(images(fg, 4))
    with torch.no_grad():
        assert torch.equal(interp(x, rec), interp(x))
    assert rec.nodes == [n.name for n in fg.nodes]
    assert rec.layers == [n.name for n in fg.nodes if n.op in LAYERS]
    assert rec.stored_at == [(fg.inputs[0], None)] + [(o, n.name) for n in fg.nodes for o in n.outputs]
