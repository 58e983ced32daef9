"""Seeded mutation fuzzing of intq's two loaders: the .intq artifact and the ONNX frontend.

    python tools/fuzz_inputs.py [--artifact-cases 1000] [--onnx-cases 300] [--seed 0]

Artifact cases change one thing of a compiled artifact: a field of `manifest.json` (any
leaf or container, of any type, into a value of the same or another type), one byte of
the manifest's text, or one array (a flipped byte, a truncation, another array's bytes, a
pickled object array); half the cases then recompute every checksum ("re-signed"), as a
crafted file would. ONNX cases change one node attribute, node input, op type,
initializer shape or graph input shape, or reorder nodes, of a bundled model, which is
then compiled. Each case ends in one of: accepted with unchanged meaning (same integer and
float outputs), accepted with another meaning (only possible when re-signed), refused with
IntqError, or another exception (a bug: its traceback summary is printed). The process
exits 1 if any case ended in another exception, or if an artifact whose checksums were not
recomputed was accepted with another meaning. `tests/test_hostile.py` runs a small slice.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from intq.artifact import canonical_json, load_artifact, save_artifact  # noqa: E402
from intq.errors import IntqError  # noqa: E402
from intq.float_executor import run_float  # noqa: E402
from intq.pipeline import compile_model  # noqa: E402
from intq.quant.scheme import QuantConfig  # noqa: E402
from intq.executor import make_executor  # noqa: E402
from intq.reference import run_integer  # noqa: E402
from intq.report import cost_table, quantization_card  # noqa: E402

MODELS = os.path.join(ROOT, "models")
# (model, bits): W4A4, W8A8, and W4A8 (int4 weights beside 8-bit inputs)
ARTIFACT_BASES = [("resnet", 4), ("inception", 8), ("mobilenetv3", 8), ("mobilenet", "w4a8")]
ONNX_BASES = ["resnet", "inception", "mobilenet", "mobilenetv3"]
OUTCOMES = ("accepted-unchanged", "accepted-changed", "refused", "other")


# -- artifacts as bytes ---------------------------------------------------------------
def read_entries(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def write_entries(path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, blob in entries.items():
            z.writestr(name, blob)


def resign(entries: dict[str, bytes]) -> dict[str, bytes]:
    """Recompute every array checksum and the manifest checksum, as a forger would."""
    try:
        manifest = json.loads(entries["manifest.json"])
        sums = manifest["checksums"]
        for name, blob in entries.items():
            if name.startswith("arrays/") and isinstance(sums, dict):
                sums[name[len("arrays/"):-len(".npy")]] = hashlib.sha256(blob).hexdigest()
        manifest.pop("manifest_sha256", None)
        manifest["manifest_sha256"] = hashlib.sha256(canonical_json(manifest)).hexdigest()
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return entries  # not JSON any more (or no checksum table): nothing to re-sign
    return {**entries, "manifest.json": canonical_json(manifest)}


# -- one-field changes ----------------------------------------------------------------
def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


def _names_in(manifest) -> list[str]:
    g = manifest.get("integer_graph") or {}
    return list(g.get("values", {})) or ["x"]


def _candidates(v, rng, names):
    """Replacements for v: near values of its own type, extremes, and other types."""
    if isinstance(v, bool):
        return [not v, int(v), None, "true"]
    if isinstance(v, int):
        return [v + 1, v - 1, -v, 0, -1, 2, 1 << 31, 1 << 62, 10 ** 18, v * 1000, str(v),
                v + 0.5, None, [v], True, 1 << 26, 3]
    if isinstance(v, float):
        return [v * 2, -v, 0.0, math.nan, math.inf, 1e308, 5e-324, int(v), str(v), None]
    if isinstance(v, str):
        return [str(rng.choice(names)), "", v + "x", "int64", "float32", "uint4", "int4", "-1",
                "|O", "<f8", "two\nlines", 5, None]
    if v is None:
        return [0, 1.0, "x", [], {}]
    if isinstance(v, list):
        out = [[], v[:-1], v + v[-1:] if v else [0], v[::-1], [v], None, 0, v * 2]
        if v and all(isinstance(e, int) and not isinstance(e, bool) for e in v):
            i = int(rng.integers(len(v)))
            out += [v[:i] + [e] + v[i + 1:] for e in (0, -1, v[i] + 1, 1 << 26, 1 << 40)]
        return out
    if isinstance(v, dict):
        out = [[], None, {**v, "extra": 1}]
        if v:
            key = list(v)[int(rng.integers(len(v)))]
            out.append({k: x for k, x in v.items() if k != key})
        return out
    return [None]


def mutate_field(manifest, rng) -> str:
    """Change one field of the manifest in place; returns a description."""
    region = rng.random()
    # Bias towards the parts every executor reads; metadata and info are large but less used.
    if region < 0.5:
        root = ("integer_graph", str(rng.choice(["nodes", "values", "constants", "inputs", "outputs"])))
    elif region < 0.7 and manifest.get("float_graph"):
        root = ("float_graph", str(rng.choice(["nodes", "values", "constants"])))
    else:
        root = ()
    paths = [p for p in _paths(_get(manifest, root), root) if p != ()]
    path = paths[int(rng.integers(len(paths)))]
    old = _get(manifest, path)
    options = [c for c in _candidates(old, rng, _names_in(manifest))
               if json.dumps(c, sort_keys=True) != json.dumps(old, sort_keys=True)]
    new = options[int(rng.integers(len(options)))]
    _get(manifest, path[:-1])[path[-1]] = new
    return f"field {'/'.join(map(str, path))}: {json.dumps(old)[:40]} -> {json.dumps(new)[:40]}"


def pickled_npy(marker: str) -> bytes:
    """A .npy object array whose unpickling would create the file `marker`."""
    class Trap:
        def __reduce__(self):
            return (open, (marker, "w"))
    arr = np.empty(1, dtype=object)
    arr[0] = Trap()
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def mutate_artifact(entries: dict[str, bytes], rng, marker: str) -> tuple[dict[str, bytes], str]:
    """One changed field, manifest byte or array of an artifact's zip entries."""
    entries = dict(entries)
    kind = rng.choice(["field"] * 6 + ["manifest-byte"] * 2 + ["array"] * 2)
    if kind == "field":
        manifest = json.loads(entries["manifest.json"])
        what = mutate_field(manifest, rng)
        entries["manifest.json"] = canonical_json(manifest)
        return entries, what
    if kind == "manifest-byte":
        raw = bytearray(entries["manifest.json"])
        i = int(rng.integers(len(raw)))
        raw[i] ^= int(rng.integers(1, 256))
        entries["manifest.json"] = bytes(raw)
        return entries, f"manifest byte {i}"
    arrays = sorted(n for n in entries if n.startswith("arrays/"))
    name = arrays[int(rng.integers(len(arrays)))]
    blob = entries[name]
    how = rng.choice(["flip-header", "flip-data", "truncate", "other-array", "pickle", "extend"])
    if how == "flip-header" or (how == "flip-data" and len(blob) <= 128):
        i = int(rng.integers(min(len(blob), 128)))
    elif how == "flip-data":
        i = int(rng.integers(128, len(blob)))
    if how in ("flip-header", "flip-data"):
        b = bytearray(blob)
        b[i] ^= int(rng.integers(1, 256))
        entries[name] = bytes(b)
        return entries, f"{name} byte {i}"
    if how == "truncate":
        entries[name] = blob[: int(rng.integers(len(blob)))]
    elif how == "extend":
        entries[name] = blob + b"\0" * int(rng.integers(1, 64))
    elif how == "other-array":
        others = [n for n in arrays if entries[n] != blob]
        entries[name] = entries[others[int(rng.integers(len(others)))]]
    else:
        entries[name] = pickled_npy(marker)
    return entries, f"{name} {how}"


# -- running a case -------------------------------------------------------------------
def exercise_artifact(path, x):
    """Everything the CLI does with a loaded artifact: run (both backends), eval's float
    side, report."""
    art = load_artifact(path)
    ints = run_integer(art.integer, x)[0]
    # The default backend relies on the validator's guarantees: whatever was accepted must
    # also run there, to the same integers (a mismatch is a bug, reported as "other").
    fast = make_executor(art.integer, "numba").run(x)[0]
    if fast.shape != ints.shape or not np.array_equal(fast, ints):
        raise AssertionError("numba backend differs from the reference on an accepted artifact")
    floats = run_float(art.float, x)[0] if art.float is not None else None
    card = quantization_card(art.integer, art.info)
    json.dumps({**cost_table(art.integer), "card": card})
    return ints, floats


def classify(fn, baseline=None):
    """(outcome, detail) of calling fn(): outputs equal to `baseline`, or not, or refused."""
    try:
        result = fn()
    except IntqError as e:
        text = str(e)
        if "\n" in text:
            return "other", f"multi-line IntqError: {text[:200]!r}"
        return "refused", text
    except Exception:  # noqa: BLE001 - the point of the fuzzer: any other exception is a bug
        return "other", traceback.format_exc(limit=3).strip().splitlines()[-1]
    if baseline is None:
        return "accepted-unchanged", ""
    same = all((a is None and b is None) or (a is not None and b is not None and a.shape == b.shape
                                             and np.array_equal(a, b)) for a, b in zip(result, baseline))
    return ("accepted-unchanged" if same else "accepted-changed"), ""


class ArtifactFuzzer:
    """Compiles the base artifacts once and runs seeded mutation cases against them."""

    def __init__(self, workdir, calib_images=32):
        self.workdir = workdir
        calib = np.load(os.path.join(MODELS, "digits_calib.npz"))["x"][:calib_images]
        self.x = np.load(os.path.join(MODELS, "digits_test.npz"))["x"][:2]
        self.bases = []
        for name, bits in ARTIFACT_BASES:
            path = os.path.join(workdir, f"{name}{bits}.intq")
            save_artifact(path, *compile_model(os.path.join(MODELS, f"{name}.onnx"), calib,
                                               QuantConfig(default_bits=bits)))
            self.bases.append((read_entries(path), exercise_artifact(path, self.x)))

    def case(self, i, rng, signed: bool):
        entries, baseline = self.bases[i % len(self.bases)]
        marker = os.path.join(self.workdir, "pickle-ran")
        mutated, what = mutate_artifact(entries, rng, marker)
        if signed:
            mutated = resign(mutated)
        path = os.path.join(self.workdir, "case.intq")
        write_entries(path, mutated)
        outcome, detail = classify(lambda: exercise_artifact(path, self.x), baseline)
        if os.path.exists(marker):
            outcome, detail = "other", "a pickled array was unpickled"
            os.unlink(marker)
        return outcome, what, detail


def fuzz_artifacts(n, seed, workdir, report=None):
    """Counts per (signed, outcome) over n cases, half of them re-signed."""
    fuzzer = ArtifactFuzzer(workdir)
    rng = np.random.default_rng(seed)
    counts = Counter()
    for i in range(n):
        signed = bool(i % 2)
        outcome, what, detail = fuzzer.case(i, rng, signed)
        counts[signed, outcome] += 1
        if report and (outcome == "other" or (outcome == "accepted-changed" and not signed)):
            report(f"artifact case {i} ({'re-signed' if signed else 'as changed'}) {what}: {outcome} {detail}")
    return counts


# -- ONNX -----------------------------------------------------------------------------
OP_TYPES = ["Relu", "Conv", "Add", "MaxPool", "Sigmoid", "Reshape", "Gemm", "Identity",
            "Concat", "Flatten", "GlobalAveragePool", "AveragePool", "BatchNormalization", "Foo"]


def mutate_onnx(proto: onnx.ModelProto, rng) -> tuple[onnx.ModelProto, str]:
    m = copy.deepcopy(proto)
    g = m.graph
    kind = rng.choice(["attribute", "attribute", "input", "op", "initializer", "order", "graph-input"])
    nodes = list(g.node)
    node = nodes[int(rng.integers(len(nodes)))]
    if kind == "attribute":
        if not node.attribute or rng.random() < 0.15:
            node.attribute.append(onnx.helper.make_attribute(
                str(rng.choice(["pads", "strides", "group", "axis", "kernel_shape", "bogus"])),
                [int(v) for v in rng.choice([0, -1, 1, 2, 1 << 30], size=4)]))
            return m, f"{node.name}: attribute added"
        a = node.attribute[int(rng.integers(len(node.attribute)))]
        if rng.random() < 0.15:
            node.attribute.remove(a)
            return m, f"{node.name}: attribute {a.name} removed"
        values = [0, -1, 1, 2, 3, 7, 1 << 20, 1 << 40, -(1 << 40)]
        if a.type == onnx.AttributeProto.INTS and len(a.ints):
            i = int(rng.integers(len(a.ints)))
            a.ints[i] = int(rng.choice(values))
        elif a.type == onnx.AttributeProto.INTS:
            a.ints.extend([int(rng.choice(values))])
        elif a.type == onnx.AttributeProto.INT:
            a.i = int(rng.choice(values))
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = float(rng.choice([0.0, -1.0, 1e30, math.nan, math.inf]))
        else:
            node.attribute.remove(a)
        return m, f"{node.name}: attribute {a.name} changed"
    if kind == "input":
        names = [i.name for i in g.input] + [i.name for i in g.initializer] + \
                [o for n in nodes for o in n.output] + ["", "nowhere"]
        if not node.input:
            node.input.append(str(rng.choice(names)))
        else:
            node.input[int(rng.integers(len(node.input)))] = str(rng.choice(names))
        return m, f"{node.name}: input rewired"
    if kind == "op":
        node.op_type = str(rng.choice(OP_TYPES))
        return m, f"{node.name}: op -> {node.op_type}"
    if kind == "initializer" and len(g.initializer):
        t = g.initializer[int(rng.integers(len(g.initializer)))]
        dims = list(t.dims)
        choice = rng.integers(4)
        if choice == 0 and dims:
            dims[int(rng.integers(len(dims)))] = int(rng.choice([0, 1, 2, 1 << 20, 1 << 40]))
        elif choice == 1:
            dims.append(int(rng.choice([1, 2])))
        elif choice == 2 and dims:
            dims.pop()
        else:
            dims = dims[::-1]
        del t.dims[:]
        t.dims.extend(dims)
        return m, f"initializer {t.name} dims -> {dims}"
    if kind == "order":
        i, j = sorted(rng.choice(len(nodes), size=2, replace=False)) if len(nodes) > 1 else (0, 0)
        order = nodes[:i] + [nodes[j]] + nodes[i:j] + nodes[j + 1:]
        del g.node[:]
        g.node.extend(copy.deepcopy(order))
        return m, f"node {j} moved before node {i}"
    dims = g.input[0].type.tensor_type.shape.dim
    d = dims[int(rng.integers(len(dims)))]
    d.dim_value = int(rng.choice([0, 1, 3, 7, 1 << 20, 1 << 31]))
    return m, "graph input shape changed"


def fuzz_onnx(n, seed, workdir, report=None, calib_images=4):
    """Counts per outcome over n mutated ONNX models, each compiled from a file."""
    calib = np.load(os.path.join(MODELS, "digits_calib.npz"))["x"][:calib_images]
    protos = [onnx.load(os.path.join(MODELS, f"{name}.onnx")) for name in ONNX_BASES]
    rng = np.random.default_rng(seed)
    counts = Counter()
    path = os.path.join(workdir, "case.onnx")
    for i in range(n):
        proto, what = mutate_onnx(protos[i % len(protos)], rng)
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
        outcome, detail = classify(lambda: compile_model(path, calib, QuantConfig()))
        outcome = "compiled" if outcome == "accepted-unchanged" else outcome
        counts[outcome] += 1
        if report and outcome == "other":
            report(f"onnx case {i} {what}: {detail}")
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact-cases", type=int, default=1000)
    p.add_argument("--onnx-cases", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    bad = 0
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        a = fuzz_artifacts(args.artifact_cases, args.seed, work, report=print)
        t1 = time.perf_counter()
        o = fuzz_onnx(args.onnx_cases, args.seed, work, report=print)
        t2 = time.perf_counter()
    for signed in (False, True):
        label = "re-signed (checksums recomputed)" if signed else "as changed (checksums kept)"
        row = ", ".join(f"{k} {a[signed, k]}" for k in OUTCOMES)
        print(f"artifact, {label}: {sum(a[signed, k] for k in OUTCOMES)} cases: {row}")
    print(f"artifact time {t1 - t0:.1f} s")
    print(f"onnx: {sum(o.values())} cases: compiled {o['compiled']}, refused {o['refused']}, "
          f"other {o['other']} ({t2 - t1:.1f} s)")
    bad = a[False, "other"] + a[True, "other"] + o["other"] + a[False, "accepted-changed"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
