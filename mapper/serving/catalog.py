"""Which map answers "source -> target": direct maps first, else a canonical hub."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from mapper.core.hub import CanonicalSpace
from mapper.core.kinds import DIRECT, LABELS, REQUESTABLE
from mapper.core.mapfile import MapObject
from mapper.core.maps import EmbeddingMap
from mapper.errors import InvalidInput, MapFileError, MapNotFound

#: The longest model name or map id: longer ones are refused at publish and in every request,
#: so whatever was published can be fetched, rolled back and deleted through the API.
MAX_NAME = 256


def check_name(value: str, field: str) -> str:
    """``value`` if it is a usable model name or map id, else :class:`InvalidInput` saying why:
    at most ``MAX_NAME`` characters and no control characters (a NUL cannot even be stored
    by PostgreSQL, so both stores give this answer)."""
    if len(value) > MAX_NAME:
        raise InvalidInput(f"{field} is {len(value)} characters long; names have at most {MAX_NAME}")
    if value.isprintable():  # no control character; the per-character scan costs 2-4 us per name
        return value
    bad = next((c for c in value if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise InvalidInput(f"{field} contains the control character {bad!r}; names are printable text")
    return value


@dataclass(frozen=True)
class MapRef:
    """A stored map's identity: every translation reports the one it used."""

    map_id: str
    version: int
    sha256: str
    kind: str


def map_id_of(obj: MapObject) -> str:
    """``source->target:kind`` for a map, ``hub:name`` for a hub."""
    if isinstance(obj, CanonicalSpace):
        for model in obj.models_:
            check_name(model, "a hub model name")
        return check_name(f"hub:{obj.name}", "map id")
    if not obj.source_id or not obj.target_id:
        raise MapFileError("a stored map needs source_id and target_id (set them before fitting or saving)")
    check_name(obj.source_id, "source_id")
    check_name(obj.target_id, "target_id")
    return check_name(f"{obj.source_id}->{obj.target_id}:{obj.served_as}", "map id")


class Catalog:
    """An immutable snapshot of the maps being served, and the rule that picks one."""

    def __init__(self, entries: Iterable[tuple[MapRef, MapObject]] = ()) -> None:
        self._maps: dict[str, tuple[MapRef, MapObject]] = {ref.map_id: (ref, obj) for ref, obj in entries}
        self._hubs = [(ref, obj) for ref, obj in self._maps.values() if isinstance(obj, CanonicalSpace)]
        # Immutable, so answers can be cached: a service resolves on every call, and a hub's
        # composed source -> target map is built once. Errors are not cached. A plain dict,
        # not lru_cache on a bound method: that is a reference cycle, and a replaced catalog
        # (every map it holds) would live on until the garbage collector ran.
        self._resolved: dict[tuple[str, str, str], tuple[EmbeddingMap, MapRef]] = {}
        self._models = self._collect_models()

    def __len__(self) -> int:
        return len(self._maps)

    def refs(self) -> list[MapRef]:
        return [ref for ref, _ in self._maps.values()]

    def entry(self, map_id: str) -> tuple[MapRef, MapObject] | None:
        return self._maps.get(map_id)

    def resolve(self, source: str, target: str, kind: str = "any") -> tuple[EmbeddingMap, MapRef]:
        """The map for source -> target of ``kind`` ("any": tuned, then direct, then a hub)."""
        key = (source, target, kind)
        found = self._resolved.get(key)
        if found is None:
            found = self._resolve(source, target, kind)
            if len(self._resolved) < 4096:  # bounded: keys come from requests
                self._resolved[key] = found
        return found

    def models(self) -> dict[str, int]:
        """{model name: embedding dimension} over every map and hub served."""
        return dict(self._models)

    def _collect_models(self) -> dict[str, int]:
        dims: dict[str, int] = {}
        for _, obj in self._maps.values():
            if isinstance(obj, CanonicalSpace):
                for model, (forward, _) in obj.legs_.items():
                    dims[model] = forward.n_features_in_
            else:
                dims[obj.source_id] = obj.n_features_in_
                dims[obj.target_id] = obj.n_features_out_
        return dims

    def _resolve(self, source: str, target: str, kind: str) -> tuple[EmbeddingMap, MapRef]:
        if kind not in REQUESTABLE:
            raise InvalidInput(f"kind must be one of {REQUESTABLE}, got {kind!r}")
        unknown = [m for m in (source, target) if m not in self._models]
        if unknown:
            raise MapNotFound(f"unknown model(s) {unknown}; models with maps: {sorted(self._models)}")
        for k in (*LABELS, *DIRECT) if kind == "any" else (kind,):
            found = self._maps.get(f"{source}->{target}:{k}")
            if found:
                ref, obj = found
                assert isinstance(obj, EmbeddingMap)
                return obj, ref
        if kind in ("any", "hub"):
            for ref, hub in self._hubs:
                if source in hub.legs_ and target in hub.legs_:
                    return hub.mapping(source, target), ref
        available = sorted(r.map_id for r in self.refs())
        raise MapNotFound(f"no {kind} map from {source!r} to {target!r}; maps served: {available}")
