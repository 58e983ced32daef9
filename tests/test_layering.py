"""Data flows one way: ONNX -> frontend -> passes -> quantization -> executors. The core
never imports torch or pulp (they are for the twin and the ILP, which read the graph), and
no stage imports a later one. The twin is a second implementation of the integer graph, so
it never imports the first (the numpy reference, the op specs, the kernels, the dyadic
helpers)."""
import ast
from pathlib import Path

import intq

PKG = Path(intq.__file__).parent

# Each stage may import only from stages listed before it (and itself).
# `pipeline` chains the stages, so it comes after all of them.
ORDER = ["errors", "limits", "ir", "dyadic", "packing", "ops", "frontend", "passes", "validate",
         "float_executor", "quant", "reference", "artifact", "images", "data", "pipeline", "executor",
         "evaluate", "analysis", "report", "export", "model", "twin", "bench", "alloc", "cli"]
CONSUMERS = {"twin": ("torch",), "alloc": ("torch", "pulp"), "rounding": ("torch",),
             "export.py": ("onnxruntime",)}  # consumers of the graph that may import what the core may not (export checks its file in onnxruntime)


def stage(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def imports(path: Path):
    tree = ast.parse(path.read_text())
    mod = "intq." + ".".join(path.relative_to(PKG).with_suffix("").parts)
    pkg = mod.rsplit(".", 1)[0] if path.name != "__init__.py" else mod
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module


def test_core_never_imports_torch_or_pulp():
    for path in PKG.rglob("*.py"):
        allowed = CONSUMERS.get(path.relative_to(PKG).parts[0], ())
        for name in imports(path):
            top = name.split(".")[0]
            assert top not in ("torch", "pulp", "onnxruntime") or top in allowed, (path, name)


def test_twin_is_independent_of_the_specification():
    """The twin's ops, arithmetic and model read the graph only: no numpy reference, op
    `run`s, kernels, dyadic helpers or lowering code. (verify.py, the harness that compares
    the two, runs the executors through the model object; qat.py trains a float model and
    converts it with the compiler, so it uses the lowering's decisions on purpose.)"""
    banned = ("intq.reference", "intq.ops", "intq.kernels", "intq.dyadic", "intq.quant",
              "intq.executor", "intq.float_executor")
    for path in [PKG / "twin" / f for f in ("__init__.py", "arith.py", "ops.py", "model.py")]:
        for name in imports(path):
            assert not any(name == b or name.startswith(b + ".") for b in banned), (path, name)


def test_no_stage_imports_a_later_one():
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("").parts
        own = rel[0] if rel[0] != "__init__" else None
        if own in (None, "__main__", "kernels"):
            continue
        for name in imports(path):
            if not name.startswith("intq.") or name == "intq":
                continue
            target = stage(name)
            if target in ORDER and own in ORDER:
                assert ORDER.index(target) <= ORDER.index(own), f"{path}: imports {name}"


def test_every_subpackage_is_installed():
    """setup.cfg lists every package under intq/ (a non-editable install ships only those)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(PKG.parent / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split(",")}
    found = {"intq." + ".".join(p.parent.relative_to(PKG).parts) if p.parent != PKG else "intq"
             for p in PKG.rglob("__init__.py") if "__pycache__" not in p.parts}
    assert found | {"intq.kernels"} <= listed, sorted(found - listed)
