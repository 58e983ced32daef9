"""The .intq file: one versioned zip holding the integer graph, the float graph it came
from (for `intq eval`), and every constant as .npy.

Layout: `manifest.json` (format name, version, graphs as JSON, and per array its file,
dtype, shape, packing and SHA-256) plus `arrays/NNNN.npy`. INT4 weights are packed two per
byte by `intq.packing` (first element in the low nibble). Loading checks the format name,
the version and every checksum; saving writes a temporary file beside the target and
renames it, so a failed save never leaves a half-written artifact.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import zipfile

import numpy as np

from . import __version__
from .errors import IntqError
from .ir import Graph, Node, Value
from .packing import pack_int4, unpack_int4

FORMAT = "intq-artifact"
VERSION = 1


def _graph_to_json(g: Graph, arrays: dict, prefix: str) -> dict:
    consts = {}
    for name, arr in g.constants.items():
        key = f"{prefix}{len(arrays):05d}"
        dtype = g.values[name].dtype
        packed = dtype in ("int4", "uint4")
        data = pack_int4(arr, signed=dtype == "int4") if packed else np.ascontiguousarray(arr)
        arrays[key] = data
        consts[name] = {"array": key, "shape": list(arr.shape), "dtype": dtype,
                        "packed_int4": packed, "numpy_dtype": np.asarray(arr).dtype.str}
    return {"name": g.name, "inputs": g.inputs, "outputs": g.outputs,
            "values": {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in g.values.items()},
            "nodes": [{"op": n.op, "name": n.name, "inputs": n.inputs, "outputs": n.outputs,
                       "attrs": n.attrs} for n in g.nodes],
            "constants": consts, "metadata": g.metadata}


def _graph_from_json(d: dict, arrays) -> Graph:
    g = Graph(d["name"])
    g.inputs, g.outputs, g.metadata = list(d["inputs"]), list(d["outputs"]), d["metadata"]
    g.values = {k: Value(k, tuple(v["shape"]), v["dtype"]) for k, v in d["values"].items()}
    g.nodes = [Node(n["op"], n["name"], n["inputs"], n["outputs"], n["attrs"]) for n in d["nodes"]]
    for name, c in d["constants"].items():
        data = arrays(c["array"])
        count = int(np.prod(c["shape"], dtype=np.int64))
        if c["packed_int4"]:
            data = unpack_int4(data, count, signed=c["dtype"] == "int4")
        g.constants[name] = data.astype(np.dtype(c["numpy_dtype"])).reshape(c["shape"])
    return g


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
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(manifest, default=_json_default))
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


class Artifact:
    """A loaded .intq file: `.integer`, `.float` (or None) and `.info`."""

    def __init__(self, integer: Graph, float_graph: Graph | None, info: dict):
        self.integer, self.float, self.info = integer, float_graph, info


def load_artifact(path) -> Artifact:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise IntqError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as z:
            try:
                manifest = json.loads(z.read("manifest.json"))
            except KeyError:
                raise IntqError(f"{path}: not an intq artifact (no manifest)") from None
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise IntqError(f"{path}: not an intq artifact")
            if manifest.get("version") != VERSION:
                raise IntqError(f"{path}: artifact format version {manifest.get('version')} "
                                f"(written by intq {manifest.get('intq_version')}); this intq "
                                f"reads version {VERSION}: recompile the model")

            def array(key):
                blob = z.read(f"arrays/{key}.npy")
                if hashlib.sha256(blob).hexdigest() != manifest["checksums"].get(key):
                    raise IntqError(f"{path}: corrupt artifact (checksum mismatch in {key})")
                return np.load(io.BytesIO(blob), allow_pickle=False)

            ig = _graph_from_json(manifest["integer_graph"], array)
            fg = _graph_from_json(manifest["float_graph"], array) if manifest["float_graph"] else None
            return Artifact(ig, fg, manifest.get("info", {}))
    except IntqError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, EOFError, OSError,
            json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntqError(f"{path}: corrupt or truncated intq artifact ({type(e).__name__}: {e})") from None
