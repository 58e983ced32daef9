"""The .intq file: one versioned zip holding the integer graph, the float graph it came
from (for `intq eval`), and every constant as .npy.

Layout: `manifest.json` (format name, version, graphs as JSON, and per array its file,
dtype, shape, packing and SHA-256, plus `manifest_sha256` over the manifest's canonical
JSON) plus `arrays/NNNN.npy`. INT4 weights are packed two per byte by `intq.packing`
(first element in the low nibble). Saving writes a temporary file beside the target and
renames it, so a failed save never leaves a half-written artifact.

Loading trusts nothing it reads, in this order: the manifest entry's size; the format
name and version; the manifest checksum (any changed byte: "corrupt artifact"); the JSON
structure; every array's declared size against its zip entry and the memory limit, before
decompressing it; every array's checksum, .npy header (dtype and shape as declared, never
a pickle) and length; then both graphs go through `intq.validate`, independently of the
checksums, since a crafted file can carry matching ones. Every failure is one IntqError.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
import tokenize
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

from . import __version__
from .errors import IntqError
from .ir import Graph, Node, Value
from .limits import check_bytes
from .packing import pack_int4, unpack_int4
from .validate import validate_float_graph, validate_integer_graph

FORMAT = "intq-artifact"
VERSION = 2  # 2: manifest checksum, validation on load
MAX_MANIFEST_BYTES = 64 << 20   # a full-size ResNet50's manifest is a few MB
MAX_NPY_HEADER = 4096           # np.save writes 128 bytes for any shape we store
# The numpy dtypes save_artifact writes; anything else (an object array, a pickle) is refused.
NUMPY_DTYPES = {"|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f4"}
GRAPH_KEYS = {"name", "inputs", "outputs", "values", "nodes", "constants", "metadata"}
NODE_KEYS = {"op", "name", "inputs", "outputs", "attrs"}
CONSTANT_KEYS = {"array", "shape", "dtype", "packed_int4", "numpy_dtype"}


def _graph_to_json(g: Graph, arrays: dict, prefix: str) -> dict:
    consts = {}
    for name, arr in g.constants.items():
        key = f"{prefix}{len(arrays):05d}"
        dtype = g.values[name].dtype
        packed = dtype in ("int4", "uint4")
        # reshape: ascontiguousarray turns a 0-d array into shape (1,)
        data = pack_int4(arr, signed=dtype == "int4") if packed else np.ascontiguousarray(arr).reshape(arr.shape)
        arrays[key] = data
        consts[name] = {"array": key, "shape": list(arr.shape), "dtype": dtype,
                        "packed_int4": packed, "numpy_dtype": np.asarray(arr).dtype.str}
    return {"name": g.name, "inputs": g.inputs, "outputs": g.outputs,
            "values": {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in g.values.items()},
            "nodes": [{"op": n.op, "name": n.name, "inputs": n.inputs, "outputs": n.outputs,
                       "attrs": n.attrs} for n in g.nodes],
            "constants": consts, "metadata": g.metadata}


class _Bad(Exception):
    """A structural problem in a manifest; load_artifact words it as one line."""


def _need(ok, what: str) -> None:
    if not ok:
        raise _Bad(what)


def _names(v, what: str) -> list:
    _need(isinstance(v, list) and all(isinstance(e, str) for e in v), f"{what} must be a list of names")
    return list(v)


def _shape(v, what: str, batch_ok: bool) -> tuple:
    _need(isinstance(v, list) and len(v) <= 8 and all(
        (isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 1 << 31)
        or (d is None and batch_ok) for d in v), f"{what} has an invalid shape")
    return tuple(v)


def _graph_from_json(d, where: str) -> tuple[Graph, dict]:
    """The graph without its constants, and its constants' manifest entries (checked)."""
    _need(isinstance(d, dict) and set(d) == GRAPH_KEYS, f"{where} is not a graph")
    _need(isinstance(d["name"], str), f"{where} name must be a string")
    g = Graph(d["name"])
    g.inputs, g.outputs = _names(d["inputs"], f"{where} inputs"), _names(d["outputs"], f"{where} outputs")
    _need(isinstance(d["metadata"], dict), f"{where} metadata must be a mapping")
    g.metadata = d["metadata"]
    _need(isinstance(d["values"], dict), f"{where} values must be a mapping")
    for k, v in d["values"].items():
        _need(isinstance(v, dict) and set(v) == {"shape", "dtype"} and isinstance(v["dtype"], str),
              f"{where} value {k!r} is malformed")
        g.values[k] = Value(k, _shape(v["shape"], f"{where} value {k!r}", True), v["dtype"])
    _need(isinstance(d["nodes"], list), f"{where} nodes must be a list")
    for n in d["nodes"]:
        _need(isinstance(n, dict) and set(n) == NODE_KEYS and isinstance(n["op"], str)
              and isinstance(n["name"], str) and isinstance(n["attrs"], dict), f"{where} has a malformed node")
        g.nodes.append(Node(n["op"], n["name"], _names(n["inputs"], f"node {n['name']!r} inputs"),
                            _names(n["outputs"], f"node {n['name']!r} outputs"), n["attrs"]))
    consts = d["constants"]
    _need(isinstance(consts, dict), f"{where} constants must be a mapping")
    for name, c in consts.items():
        _need(isinstance(c, dict) and set(c) == CONSTANT_KEYS and isinstance(c["array"], str)
              and c["array"].isalnum() and len(c["array"]) <= 64  # a zip member name part
              and isinstance(c["numpy_dtype"], str)
              and c["numpy_dtype"] in NUMPY_DTYPES and isinstance(c["dtype"], str)
              and c["packed_int4"] is (c["dtype"] in ("int4", "uint4")), f"constant {name!r} is malformed")
        _need(not c["packed_int4"] or c["numpy_dtype"] in ("|i1", "|u1"), f"constant {name!r} is malformed")
        _need(name in g.values and _shape(c["shape"], f"constant {name!r}", False) == g.values[name].shape
              and c["dtype"] == g.values[name].dtype, f"constant {name!r} disagrees with its value entry")
    return g, consts


def _stored(c) -> tuple[np.dtype, tuple]:
    """The dtype and shape of a constant's .npy file as save_artifact writes it."""
    count = math.prod(c["shape"])
    if c["packed_int4"]:
        return np.dtype(np.uint8), ((count + 1) // 2,)
    return np.dtype(c["numpy_dtype"]), tuple(c["shape"])


def _read_member(z: zipfile.ZipFile, name: str, max_bytes: int) -> bytes:
    """A zip entry's bytes, refused before decompression if it declares more than
    `max_bytes`; zipfile never inflates past the declared size (and checks the CRC)."""
    try:
        info = z.getinfo(name)
    except KeyError:
        raise _Bad(f"missing {name}") from None
    _need(info.file_size <= max_bytes, f"{name} declares {info.file_size} bytes, more than "
                                       f"the {max_bytes} allowed for it")
    try:
        with z.open(info) as f:
            return f.read(info.file_size)
    except (RuntimeError, NotImplementedError) as e:  # encrypted, or an unknown compression
        raise _Bad(f"{name} cannot be read: {e}") from None


def read_npy_header(f):
    """(shape, fortran_order, dtype) from the .npy header at the start of the open file f,
    without reading the data. Anything but a well-formed version 1.0/2.0 header raises
    ValueError with the reason (numpy parses the header as a Python literal, so its
    SyntaxError and TokenError are folded in). Used for the artifact's arrays and for
    every .npy/.npz a user passes in."""
    try:
        version = np.lib.format.read_magic(f)
        header = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if header is None:
            raise ValueError(f".npy version {version} is not supported")
        return header(f)
    except (SyntaxError, tokenize.TokenError) as e:
        raise ValueError(f"bad .npy header ({e})") from None


def _load_array(z, c, checksums) -> np.ndarray:
    """One constant: size, checksum, .npy header and length checked before numpy reads it."""
    key = c["array"]
    dtype, shape = _stored(c)
    nbytes = math.prod(shape) * dtype.itemsize
    blob = _read_member(z, f"arrays/{key}.npy", nbytes + MAX_NPY_HEADER)
    if not isinstance(checksums, dict) or hashlib.sha256(blob).hexdigest() != checksums.get(key):
        raise IntqError(f"corrupt artifact (checksum mismatch in {key})")
    f = io.BytesIO(blob)
    try:
        got_shape, fortran, got_dtype = read_npy_header(f)
    except ValueError as e:
        raise _Bad(f"array {key} has a bad .npy header ({e})") from None
    _need((got_shape, fortran, got_dtype) == (shape, False, dtype),
          f"array {key} holds {got_dtype} {got_shape}, its manifest declares {dtype} {shape}")
    _need(len(blob) == f.tell() + nbytes, f"array {key} has {len(blob) - f.tell()} bytes of data, "
                                          f"its shape needs {nbytes}")
    data = np.load(io.BytesIO(blob), allow_pickle=False)
    if c["packed_int4"]:
        try:
            data = unpack_int4(data, math.prod(c["shape"]), signed=c["dtype"] == "int4")
        except ValueError as e:
            raise _Bad(f"array {key}: {e}") from None
    return data.astype(np.dtype(c["numpy_dtype"])).reshape(c["shape"])


def canonical_json(obj) -> bytes:
    """The one byte string a manifest is written as and checksummed over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot serialise {type(o).__name__}")


def save_artifact(path, int_graph: Graph, float_graph: Graph | None = None, info: dict | None = None):
    arrays: dict[str, np.ndarray] = {}
    manifest = {"format": FORMAT, "version": VERSION, "intq_version": __version__,
                "int4_packing": "two values per byte, first element in the low nibble",
                "integer_graph": _graph_to_json(int_graph, arrays, "i"),
                "float_graph": _graph_to_json(float_graph, arrays, "f") if float_graph else None,
                "info": info or {}, "checksums": {}}
    blobs = {}
    for key, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        blobs[key] = buf.getvalue()
        manifest["checksums"][key] = hashlib.sha256(blobs[key]).hexdigest()
    manifest = json.loads(json.dumps(manifest, default=_json_default))  # plain JSON values
    manifest["manifest_sha256"] = hashlib.sha256(canonical_json(manifest)).hexdigest()
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", canonical_json(manifest))
        for key, blob in blobs.items():
            z.writestr(f"arrays/{key}.npy", blob)


@contextlib.contextmanager
def atomic_write(path):
    """A binary file that appears at `path` only once it is completely written: a temporary
    file in the same folder, renamed over `path` on success and removed on any failure."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".intq-", suffix=".tmp", dir=directory)
    except OSError as e:
        raise IntqError(f"{path}: cannot write: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_figure(fig, path) -> None:
    """A matplotlib figure written to `path` as a PNG, atomically (laid out first)."""
    import io

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    with atomic_write(path) as f:
        f.write(buf.getvalue())


class Contents(NamedTuple):
    """What a loaded .intq file holds, in the order `intq.model.Model(*contents)` takes it
    (the Model is the one object the commands and the API work with; this is only the
    reader's return value, named so `.integer` reads as what it is)."""

    integer: Graph
    float: Graph | None
    info: dict


def load_artifact(path) -> Contents:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise IntqError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as z:
            if "manifest.json" not in z.namelist():
                raise IntqError(f"{path}: not an intq artifact (no manifest)")
            raw = _read_member(z, "manifest.json", MAX_MANIFEST_BYTES)
            manifest = json.loads(raw)
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise IntqError(f"{path}: not an intq artifact")
            if manifest.get("version") != VERSION:
                raise IntqError(f"{path}: artifact format version {manifest.get('version')!r} "
                                f"(written by intq {manifest.get('intq_version')!r}); this intq "
                                f"reads version {VERSION}: recompile the model")
            digest = manifest.pop("manifest_sha256", None)
            if (digest != hashlib.sha256(canonical_json(manifest)).hexdigest()
                    or raw != canonical_json({**manifest, "manifest_sha256": digest})):
                raise IntqError("corrupt artifact (manifest checksum mismatch)")
            return _artifact_from_manifest(z, manifest)
    except IntqError as e:
        msg = str(e)
        raise IntqError(msg if msg.startswith(f"{path}: ") else f"{path}: {msg}") from None
    except _Bad as e:
        raise IntqError(f"{path}: invalid artifact: {e}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError,
            UnicodeDecodeError, RecursionError, zlib.error) as e:  # RecursionError: absurdly nested JSON
        raise IntqError(f"{path}: corrupt or truncated intq artifact ({type(e).__name__}: {e})") from None


def _artifact_from_manifest(z, manifest) -> Contents:
    """Graphs and constants from a checksummed manifest, sizes checked before reading."""
    ig, iconsts = _graph_from_json(manifest.get("integer_graph"), "integer graph")
    fdict = manifest.get("float_graph")
    fg, fconsts = _graph_from_json(fdict, "float graph") if fdict is not None else (None, {})
    info = manifest.get("info", {})
    _need(isinstance(info, dict), "info must be a mapping")
    acc = info.get("accuracy", {})
    _need(isinstance(acc, dict) and all(isinstance(acc.get(k, 0), (int, float))
                                         for k in ("float_top1", "int_top1")), "info accuracy is malformed")
    # Every declared array size, before any is decompressed.
    consts = list(iconsts.items()) + list(fconsts.items())
    total = sum(math.prod(c["shape"]) * np.dtype(c["numpy_dtype"]).itemsize for _, c in consts)
    check_bytes(total, "the artifact's constants")
    for g, entries in ((ig, iconsts), (fg, fconsts)):
        for name, c in entries.items():
            g.constants[name] = _load_array(z, c, manifest.get("checksums"))
    validate_integer_graph(ig)
    if fg is not None:
        validate_float_graph(fg)
    return Contents(ig, fg, info)
