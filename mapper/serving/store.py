"""What a versioned map store is: the records it keeps and the operations a server needs.

Backends: :class:`mapper.serving.sqlite.SQLiteMapStore` (the default, one file).
:func:`open_store` picks one from a location string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mapper.core import mapfile
from mapper.core.hub import CanonicalSpace
from mapper.serving.catalog import MapRef


@dataclass
class StoredMap:
    """One stored version of a map file, with what the store knows about it."""

    ref: MapRef
    source: str
    target: str
    d_source: int
    d_target: int
    created: str
    active: bool
    metadata: dict[str, Any]
    data: bytes | None = field(default=None, repr=False)

    @property
    def hub_models(self) -> list[str]:
        return list(self.metadata.get("hub", {}).get("models", []))


class MapStore(Protocol):
    """What the service needs from a store; another backend implements these."""

    def publish(self, data: bytes) -> StoredMap: ...
    def active(self) -> list[StoredMap]: ...
    def list(self, all_versions: bool = False) -> list[StoredMap]: ...
    def get(self, map_id: str, version: int | None = None) -> StoredMap: ...
    def rollback(self, map_id: str, version: int) -> StoredMap: ...
    def delete(self, map_id: str) -> int: ...
    def generation(self) -> int: ...


def describe(obj: mapfile.MapObject) -> tuple[str, str, str, int, int]:
    """(kind, source, target, d_source, d_target) of a map or hub."""
    if isinstance(obj, CanonicalSpace):
        dims = [leg[0].n_features_in_ for leg in obj.legs_.values()]
        return "hub", ",".join(obj.models_), obj.name, max(dims), obj.dim_
    return obj.kind, obj.source_id or "", obj.target_id or "", obj.n_features_in_, obj.n_features_out_


def open_store(location: str | Path) -> MapStore:
    """The store at ``location``: a SQLite file path (created if new)."""
    from mapper.serving.sqlite import SQLiteMapStore

    return SQLiteMapStore(location)
