"""Proto <-> numpy and library objects: the only place that knows the wire layout."""

from __future__ import annotations

import json

import numpy as np

from mapper.errors import EmbeddingError
from mapper.serving.catalog import MapRef
from mapper.serving.store import StoredMap

from .gen import mapper_pb2 as pb

# MAP_KIND_<NAME> <-> the library's kind names (mapper.core.kinds.REQUESTABLE).
KIND_NAMES = {v.number: v.name.removeprefix("MAP_KIND_").lower() for v in pb.MapKind.DESCRIPTOR.values}
KIND_VALUES = {v: k for k, v in KIND_NAMES.items()}
_F32 = np.dtype("<f4")


def to_array(msg: pb.Embeddings, name: str = "embeddings") -> np.ndarray:
    """(rows, dim) float32 view of a message; EmbeddingError if its bytes do not fit its shape."""
    if msg.rows == 0 or msg.dim == 0:
        raise EmbeddingError(f"{name} is empty (rows={msg.rows}, dim={msg.dim})")
    expected = msg.rows * msg.dim * 4
    data = msg.data  # each access copies the bytes out of the message: once only
    if len(data) != expected:
        raise EmbeddingError(
            f"{name}: {len(data)} bytes do not hold {msg.rows} x {msg.dim} float32 ({expected} bytes)"
        )
    return np.frombuffer(data, dtype=_F32).reshape(msg.rows, msg.dim)


def from_array(x: np.ndarray) -> pb.Embeddings:
    x = np.ascontiguousarray(x, dtype=_F32)
    return pb.Embeddings(rows=x.shape[0], dim=x.shape[1], data=x.tobytes())


def ref_to_pb(ref: MapRef) -> pb.MapRef:
    return pb.MapRef(map_id=ref.map_id, version=ref.version, sha256=ref.sha256, kind=ref.kind)


def ref_from_pb(msg: pb.MapRef) -> MapRef:
    return MapRef(msg.map_id, msg.version, msg.sha256, msg.kind)


def info_to_pb(m: StoredMap) -> pb.MapInfo:
    return pb.MapInfo(
        ref=ref_to_pb(m.ref),
        source_model=m.source,
        target_model=m.target,
        d_source=m.d_source,
        d_target=m.d_target,
        created=m.created,
        active=m.active,
        metadata_json=json.dumps(m.metadata),
        hub_models=m.hub_models,
    )
