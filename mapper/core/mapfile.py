"""Map files: safetensors tensors plus JSON metadata, with a checksum. Never pickle.

A file holds one map or one canonical hub (its legs). The safetensors header carries one
metadata entry, ``mapper``: a JSON document with the format version, each map's kind,
parameters, model ids and dimensions, fit statistics, the provenance given at save time,
and a sha256 over the metadata and every tensor's name, dtype, shape and bytes. Loading
checks all of it and raises :class:`MapFileError` naming the file and the fault.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from mapper import __version__
from mapper.core.hub import CanonicalSpace
from mapper.core.kinds import FILE_CLASSES, LABELS
from mapper.core.maps import EmbeddingMap
from mapper.errors import MapFileError

FORMAT = "face-mapper/1"
#: The largest embedding dimension a map file may declare.
MAX_DIM = 65536
MapObject = EmbeddingMap | CanonicalSpace


def _checksum(meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{t.dtype.str}|{t.shape}".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def fingerprint(m: EmbeddingMap) -> str:
    """sha256 of a map's class, models and every parameter tensor: what it computes, not
    when or with what provenance it was saved. A file names the reverse map its two-way
    thresholds were calibrated with by it (see :mod:`mapper.core.twoway`)."""
    tensors = {k: np.ascontiguousarray(t) for k, t in m._state_tensors().items()}
    return _checksum({"class": m.kind, "source": m.source_id, "target": m.target_id}, tensors)


def _map_entry(m: EmbeddingMap, prefix: str, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    names = []
    for name, t in m._state_tensors().items():
        tensors[prefix + name] = np.ascontiguousarray(t)
        names.append(name)
    return {
        "kind": m.served_as,
        "class": m.kind,
        "prefix": prefix,
        "tensors": names,
        "params": m.get_params(),
        "source_id": m.source_id,
        "target_id": m.target_id,
        "d_source": int(m.n_features_in_),
        "d_target": int(m.n_features_out_),
        "fit_info": m.fit_info_,
    }


def dumps(obj: MapObject, provenance: dict[str, Any] | None = None) -> bytes:
    """Serialise a fitted map or hub to bytes (the content of a ``.safetensors`` file)."""
    tensors: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {
        "format": FORMAT,
        "library_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "provenance": provenance or {},
    }
    if isinstance(obj, CanonicalSpace):
        meta["object"] = "hub"
        meta["hub"] = {
            "params": obj.get_params(),
            "models": obj.models_,
            "dim": obj.dim_,
            "fit_info": obj.fit_info_,
        }
        meta["maps"] = [
            _map_entry(leg, f"{model}/{direction}/", tensors)
            for model in obj.models_
            for direction, leg in zip(("forward", "backward"), obj.legs_[model], strict=True)
        ]
    else:
        meta["object"] = "map"
        meta["maps"] = [_map_entry(obj, "", tensors)]
    meta = json.loads(json.dumps(meta, default=_json_default))  # normalise types for the checksum
    meta["checksum"] = _checksum(meta, tensors)
    return _st_save(tensors, metadata={"mapper": json.dumps(meta, sort_keys=True)})


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | np.ndarray):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in map metadata")


def read_metadata(data: bytes, source: str = "<bytes>") -> dict[str, Any]:
    """The ``mapper`` metadata of a map file's bytes, without loading tensors or verifying."""
    if len(data) < 8:
        raise MapFileError(f"{source}: too short to be a map file ({len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise MapFileError(f"{source}: truncated (header says {header_len} bytes, file has {len(data) - 8})")
    try:
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["mapper"])
    except (ValueError, KeyError, TypeError) as e:
        raise MapFileError(f"{source}: not a face-mapper map file ({e})") from e
    if meta.get("format") != FORMAT:
        raise MapFileError(f"{source}: unsupported format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def loads(data: bytes, source: str = "<bytes>") -> MapObject:
    """Load a map or hub from bytes, verifying checksum, shapes and metadata."""
    meta = read_metadata(data, source)
    try:
        tensors = _st_load(data)
    except Exception as e:  # safetensors raises its own error types for bad buffers
        raise MapFileError(f"{source}: corrupt tensor data ({e})") from e
    expected = meta.pop("checksum", None)
    if expected is None or _checksum(meta, tensors) != expected:
        raise MapFileError(f"{source}: checksum mismatch: the file is corrupt or was modified")
    _check_schema(meta, source)
    for name, t in tensors.items():
        if t.dtype.kind != "f" or not np.isfinite(t).all():
            raise MapFileError(f"{source}: tensor {name!r} is not finite floating point")
    try:  # the schema holds; what is left is values a constructor refuses
        maps = [_build_map(entry, tensors, source) for entry in meta["maps"]]
        if meta["object"] == "map":
            return maps[0]
        hub_meta = meta["hub"]
        params = dict(hub_meta["params"])
        if "kind" in params:  # files written before the parameter was named for what it is
            params["legs"] = params.pop("kind")
        hub = CanonicalSpace(**params)
        hub.models_ = list(hub_meta["models"])
        hub.dim_ = int(hub_meta["dim"])
        hub.fit_info_ = hub_meta["fit_info"]
        hub.n_iter_ = hub.fit_info_.get("n_iter")
        hub.legs_ = {m: (maps[2 * i], maps[2 * i + 1]) for i, m in enumerate(hub.models_)}
        return hub
    except MapFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise MapFileError(f"{source}: invalid map metadata ({type(e).__name__}: {e})") from e


#: Required fields of each map entry and their JSON types.
_ENTRY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "prefix": str,
    "tensors": list,
    "params": dict,
    "source_id": (str, type(None)),
    "target_id": (str, type(None)),
    "d_source": int,
    "d_target": int,
    "fit_info": dict,
}


def _check_schema(meta: dict[str, Any], source: str) -> None:
    """The metadata's structure, field by field, naming the first fault."""

    def fail(what: str) -> None:
        raise MapFileError(f"{source}: invalid map metadata: {what}")

    if meta.get("object") not in ("map", "hub"):
        fail(f"'object' must be 'map' or 'hub', got {meta.get('object')!r}")
    maps = meta.get("maps")
    if not isinstance(maps, list) or not maps or not all(isinstance(e, dict) for e in maps):
        fail("'maps' must be a non-empty list of map entries")
    for k, entry in enumerate(maps):
        for name, kind in _ENTRY_FIELDS.items():
            if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
                fail(f"maps[{k}].{name} is missing or not {getattr(kind, '__name__', kind)}")
        if not 0 < entry["d_source"] <= MAX_DIM or not 0 < entry["d_target"] <= MAX_DIM:
            fail(f"maps[{k}] dimensions must be 1..{MAX_DIM}, got {entry['d_source']}, {entry['d_target']}")
    if meta["object"] == "map" and len(maps) != 1:
        fail(f"a map file holds one map, this one lists {len(maps)}")
    if meta["object"] == "hub":
        hub = meta.get("hub")
        if not isinstance(hub, dict) or not isinstance(hub.get("models"), list):
            fail("'hub' must hold the list of its models")
        if len(maps) != 2 * len(hub["models"]):
            fail(f"a hub of {len(hub['models'])} models needs {2 * len(hub['models'])} legs, has {len(maps)}")


def model_dims(meta: dict[str, Any]) -> dict[str, int]:
    """{face model: embedding dimension} that a map file's metadata declares."""
    if meta["object"] == "hub":
        return {m: meta["maps"][2 * i]["d_source"] for i, m in enumerate(meta["hub"]["models"])}
    entry = meta["maps"][0]
    return {entry["source_id"]: entry["d_source"], entry["target_id"]: entry["d_target"]}


def _build_map(entry: dict[str, Any], tensors: dict[str, np.ndarray], source: str) -> EmbeddingMap:
    # "kind" is what the map is served as; "class" (absent in older files) what computes it.
    cls = FILE_CLASSES.get(entry.get("class", entry["kind"]))
    if cls is None or entry["kind"] not in (cls.kind, *LABELS):
        raise MapFileError(f"{source}: unknown map kind {entry['kind']!r} / class {entry.get('class')!r}")
    own = {name: tensors[entry["prefix"] + name] for name in entry["tensors"]}
    params = dict(entry["params"])
    for key, value in params.items():
        if isinstance(value, list):
            params[key] = tuple(value)
    m = cls(**params)
    m.label = entry["kind"] if entry["kind"] != cls.kind else None
    m._load_state(own, entry["fit_info"])
    if (m.n_features_in_, m.n_features_out_) != (entry["d_source"], entry["d_target"]):
        raise MapFileError(
            f"{source}: the map's tensors are {m.n_features_in_} -> {m.n_features_out_}-d, not the "
            f"stated {entry['d_source']} -> {entry['d_target']}"
        )
    m.transform(np.zeros((1, m.n_features_in_), np.float32))  # every tensor fits the others
    return m


def save(obj: MapObject, path: str | os.PathLike[str], provenance: dict[str, Any] | None = None) -> Path:
    """Serialise ``obj`` and :func:`write` it."""
    return write(path, dumps(obj, provenance))


def write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write map-file bytes atomically (temporary file, fsync, rename): a crash leaves the old
    file or the new."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike[str]) -> MapObject:
    """Read and verify a map file written by :func:`save`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MapFileError(f"{path}: cannot read map file ({e.strerror})") from e
    return loads(data, str(path))
