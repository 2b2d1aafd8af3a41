"""The map store's logic in portable SQL, shared by the SQLite and PostgreSQL backends.

Every publish is one transaction that first takes the store's write lock (version =
max + 1, mark it active, prune, bump the generation), so concurrent publishers never lose a
write and a crash leaves either the old or the new state. A backend supplies connections,
the write lock and its column types; SQL is written with ``?`` placeholders.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from mapper.core import mapfile
from mapper.errors import InvalidInput, MapNotFound
from mapper.serving.catalog import MapRef, check_name, map_id_of
from mapper.serving.store import StoredMap, check_dims, describe

SCHEMA = """
CREATE TABLE IF NOT EXISTS maps (
    map_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    d_source INTEGER NOT NULL,
    d_target INTEGER NOT NULL,
    created TEXT NOT NULL,
    metadata TEXT NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (map_id, version)
);
CREATE TABLE IF NOT EXISTS active (map_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta VALUES ('generation', 0) ON CONFLICT DO NOTHING;
"""
COLUMNS = (
    "map_id",
    "version",
    "sha256",
    "kind",
    "source",
    "target",
    "d_source",
    "d_target",
    "created",
    "metadata",
)
ACTIVATE = "INSERT INTO active VALUES (?, ?) ON CONFLICT (map_id) DO UPDATE SET version = excluded.version"
BUMP = "UPDATE meta SET value = value + 1 WHERE key = 'generation' RETURNING value"

Execute = Callable[..., Any]  # execute(sql, args=()) -> a cursor with fetchone/fetchall/rowcount


class SQLMapStore:
    """:class:`~mapper.serving.store.MapStore` over a SQL database; see the backends."""

    def __init__(self, keep_versions: int = 10) -> None:
        if keep_versions < 1:
            raise InvalidInput(f"keep_versions must be 1 or more, got {keep_versions}")
        self.keep_versions = keep_versions

    # -- what a backend provides -------------------------------------------------------------
    def _read(self) -> AbstractContextManager[Execute]:
        """A connection for reads, as its ``execute``."""
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Execute]:
        """A transaction holding the store's write lock; rolled back on any error."""
        raise NotImplementedError

    def _notify(self, execute: Execute, generation: int) -> None:
        """Tell other servers a write happened (inside the write transaction)."""

    def watch(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` soon after any process writes (servers also poll)."""

    # -- the store ---------------------------------------------------------------------------
    @staticmethod
    def _row(row: tuple[Any, ...], active: bool, data: bytes | None = None) -> StoredMap:
        map_id, version, sha, kind, source, target, d_s, d_t, created, meta = row
        return StoredMap(
            MapRef(map_id, version, sha, kind),
            source,
            target,
            d_s,
            d_t,
            created,
            active,
            json.loads(meta),
            bytes(data) if data is not None else None,
        )

    def _bump(self, execute: Execute) -> None:
        self._notify(execute, int(execute(BUMP).fetchone()[0]))

    def publish(self, data: bytes) -> StoredMap:
        """Verify a map file's bytes and store them as the next, active, version.

        Publishing the bytes of the active version again changes nothing and returns it.
        Beyond ``keep_versions`` versions of a map, the oldest inactive ones are removed.
        A file declaring a model's dimension unlike an active map of another id is refused.
        """
        obj = mapfile.loads(data, "published map")  # raises MapFileError on a bad file
        meta = mapfile.read_metadata(data)
        map_id = map_id_of(obj)
        kind, source, target, d_s, d_t = describe(obj)
        sha = hashlib.sha256(data).hexdigest()
        with self._write() as execute:
            active = execute(
                "SELECT m.map_id, m.version, m.sha256, m.metadata FROM active a "
                "JOIN maps m ON m.map_id = a.map_id AND m.version = a.version"
            ).fetchall()
            same = [r for r in active if r[0] == map_id and r[2] == sha]
            if same:
                return self.get(map_id, same[0][1])
            check_dims(map_id, mapfile.model_dims(meta), ((r[0], json.loads(r[3])) for r in active))
            (version,) = execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM maps WHERE map_id = ?", (map_id,)
            ).fetchone()
            row = (map_id, version, sha, kind, source, target, d_s, d_t, meta["created"], json.dumps(meta))
            execute(
                f"INSERT INTO maps ({', '.join(COLUMNS)}, data) VALUES ({', '.join('?' * 11)})", (*row, data)
            )
            execute(ACTIVATE, (map_id, version))
            execute(
                "DELETE FROM maps WHERE map_id = ? AND version <= ?", (map_id, version - self.keep_versions)
            )
            self._bump(execute)
        return self._row(row, True)

    def _select(self, where: str, args: tuple[Any, ...], with_data: bool) -> list[StoredMap]:
        cols = ", ".join(f"m.{c}" for c in COLUMNS)
        sql = (
            f"SELECT {cols}, a.version IS NOT NULL{', m.data' if with_data else ''} FROM maps m "
            f"LEFT JOIN active a ON a.map_id = m.map_id AND a.version = m.version {where} "
            "ORDER BY m.map_id, m.version"
        )
        with self._read() as execute:
            rows = execute(sql, args).fetchall()
        return [self._row(r[:10], bool(r[10]), r[11] if with_data else None) for r in rows]

    def list(self, all_versions: bool = False) -> list[StoredMap]:
        """Stored maps without their bytes: active versions, or every version."""
        return self._select("" if all_versions else "WHERE a.version IS NOT NULL", (), with_data=False)

    def get(self, map_id: str, version: int | None = None, *, with_data: bool = True) -> StoredMap:
        """One version (the active one by default); its bytes only ``with_data``."""
        check_name(map_id, "map_id")
        if version:
            found = self._select("WHERE m.map_id = ? AND m.version = ?", (map_id, version), with_data)
        else:
            found = self._select("WHERE m.map_id = ? AND a.version IS NOT NULL", (map_id,), with_data)
        if not found:
            known = sorted({m.ref.map_id for m in self.list(all_versions=True)})
            what = f"version {version} of {map_id!r}" if version else f"active version of {map_id!r}"
            raise MapNotFound(f"no {what}; stored maps: {known}")
        return found[0]

    def rollback(self, map_id: str, version: int) -> StoredMap:
        """Serve an earlier (or any stored) version of ``map_id`` again."""
        check_name(map_id, "map_id")
        if version < 1:
            raise InvalidInput(f"version must be 1 or more, got {version}")
        with self._write() as execute:
            if not execute(
                "SELECT 1 FROM maps WHERE map_id = ? AND version = ?", (map_id, version)
            ).fetchone():
                raise MapNotFound(f"no version {version} of {map_id!r}")
            execute(ACTIVATE, (map_id, version))
            self._bump(execute)
        return self.get(map_id, version)

    def delete(self, map_id: str) -> int:
        """Remove every version of ``map_id``; returns how many were removed."""
        check_name(map_id, "map_id")
        with self._write() as execute:
            n = execute("DELETE FROM maps WHERE map_id = ?", (map_id,)).rowcount
            if n == 0:
                raise MapNotFound(f"no stored map {map_id!r}")  # rolls back: nothing changed
            execute("DELETE FROM active WHERE map_id = ?", (map_id,))
            self._bump(execute)
        return n

    def generation(self) -> int:
        with self._read() as execute:
            return int(execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])


def statements(script: str) -> Iterator[str]:
    """The statements of a schema script, for drivers that run one at a time."""
    return (s.strip() for s in script.split(";") if s.strip())
