"""What a versioned map store is: the records it keeps and the operations a server needs.

Backends (``sqlstore.py`` holds their shared SQL): :class:`mapper.serving.sqlite.SQLiteMapStore`
(the default, one file) and :class:`mapper.serving.postgres.PostgresMapStore` (several
replicas). :func:`open_store` picks one from a location string.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mapper.core import mapfile
from mapper.core.hub import CanonicalSpace
from mapper.errors import InvalidInput
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
    def list(self, all_versions: bool = False) -> list[StoredMap]: ...  # without the bytes
    def get(self, map_id: str, version: int | None = None, *, with_data: bool = True) -> StoredMap: ...
    def rollback(self, map_id: str, version: int) -> StoredMap: ...
    def delete(self, map_id: str) -> int: ...
    def generation(self) -> int: ...
    def watch(self, on_change: Callable[[], None]) -> None: ...  # may do nothing: servers poll too


def describe(obj: mapfile.MapObject) -> tuple[str, str, str, int, int]:
    """(kind, source, target, d_source, d_target) of a map or hub."""
    if isinstance(obj, CanonicalSpace):
        dims = [leg[0].n_features_in_ for leg in obj.legs_.values()]
        return "hub", ",".join(obj.models_), obj.name, max(dims), obj.dim_
    return obj.served_as, obj.source_id or "", obj.target_id or "", obj.n_features_in_, obj.n_features_out_


def check_dims(map_id: str, dims: dict[str, int], active: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """:class:`InvalidInput` if a new map declares a model's dimension unlike an active map
    of another id does (e.g. SFace as 64-d beside maps that take it as 128-d)."""
    for other_id, meta in active:
        if other_id == map_id:
            continue  # the version being replaced
        for model, d in mapfile.model_dims(meta).items():
            if model in dims and dims[model] != d:
                raise InvalidInput(
                    f"{map_id} declares {model!r} as {dims[model]}-d, but the active map {other_id} "
                    f"takes it as {d}-d; delete that map first if the model really changed"
                )
