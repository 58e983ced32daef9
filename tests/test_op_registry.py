"""Every op is complete: an integer op has its reference `run`, its validator contract,
a Numba step and a twin module; every float op that `intq compile` can lower has a torch
float forward and a QAT rule. Found by name, from the registries themselves: an op added
in one place and forgotten in another fails here."""
import pytest

from intq.ops import get_op, known_ops, ops_where
from intq.ops.base import OpSpec
from intq.kernels.plan import STEPS
from intq.quant.lower import lowered_ops
from intq.twin.interpret import FLOAT_OPS
from intq.twin.ops import MODULES
from intq.twin.qat import lowering_kind
from intq.validate import ARITY, SCHEMAS

INTEGER_OPS = sorted(ops_where(integer_graph=True))
# Ops that only the integer graph has (not the data movement it shares with the float one)
# state semantic checks of their own.
INTEGER_ONLY = sorted(ops_where(integer_graph=True, float_graph=False))


def test_registries_are_not_empty():
    assert "IntConv" in INTEGER_OPS and "Reshape" in INTEGER_OPS and "Conv" in lowered_ops()


@pytest.mark.parametrize("op", INTEGER_OPS)
def test_integer_op_is_complete(op):
    spec = get_op(op)
    assert spec.run is not OpSpec.run, f"{op}: no reference run"
    assert spec.infer is not OpSpec.infer, f"{op}: no shape rule"
    assert op in SCHEMAS and op in ARITY, f"{op}: no validator contract"
    if op in INTEGER_ONLY:
        assert spec.check is not OpSpec.check, f"{op}: no semantic checks"
    assert op in STEPS, f"{op}: no Numba step"
    assert op in MODULES, f"{op}: no twin module"


@pytest.mark.parametrize("op", sorted(lowered_ops()))
def test_lowered_float_op_has_torch_forms(op):
    assert op in FLOAT_OPS, f"{op}: no torch float forward"
    assert lowering_kind(op) is not None, f"{op}: no QAT rule"


def test_steps_are_for_known_ops_and_fused_nodes():
    assert not set(STEPS) - set(known_ops()) - {"FusedConv"}
