"""The default map store: one SQLite file in WAL mode.

Every publish is one transaction (version = max + 1, then mark it active), so concurrent
publishers never lose a write and a crash leaves either the old or the new state. The
``generation`` counter changes with every write, so servers notice new versions by polling.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mapper.core import mapfile
from mapper.errors import InvalidInput, MapNotFound
from mapper.serving.catalog import MapRef, map_id_of
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
    data BLOB NOT NULL,
    PRIMARY KEY (map_id, version)
);
CREATE TABLE IF NOT EXISTS active (map_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('generation', 0);
"""


class SQLiteMapStore:
    """:class:`MapStore` in one SQLite file (WAL; safe across threads and processes)."""

    COLUMNS = "map_id, version, sha256, kind, source, target, d_source, d_target, created, metadata"

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0, keep_versions: int = 10) -> None:
        self.path = Path(path)
        self.keep_versions = keep_versions
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = busy_timeout_s
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def _row(self, row: tuple[Any, ...], active: bool, data: bytes | None = None) -> StoredMap:
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
            data,
        )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue, readers go on); rolled
        back on any error, so a failed call changes nothing."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def publish(self, data: bytes) -> StoredMap:
        """Verify a map file's bytes and store them as the next, active, version.

        Publishing the bytes of the active version again changes nothing and returns it.
        Beyond ``keep_versions`` versions of a map, the oldest inactive ones are removed.
        """
        obj = mapfile.loads(data, "published map")  # raises MapFileError on a bad file
        meta = mapfile.read_metadata(data)
        map_id = map_id_of(obj)
        kind, source, target, d_s, d_t = describe(obj)
        sha = hashlib.sha256(data).hexdigest()
        with self._transaction() as db:
            active = db.execute(
                "SELECT m.map_id, m.version, m.sha256, m.metadata FROM active a "
                "JOIN maps m ON m.map_id = a.map_id AND m.version = a.version"
            ).fetchall()
            same = [r for r in active if r[0] == map_id and r[2] == sha]
            if same:
                return self.get(map_id, same[0][1])
            check_dims(map_id, mapfile.model_dims(meta), ((r[0], json.loads(r[3])) for r in active))
            (version,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM maps WHERE map_id = ?", (map_id,)
            ).fetchone()
            row = (map_id, version, sha, kind, source, target, d_s, d_t, meta["created"], json.dumps(meta))
            db.execute(
                f"INSERT INTO maps ({self.COLUMNS}, data) VALUES (?,?,?,?,?,?,?,?,?,?,?)", (*row, data)
            )
            db.execute("INSERT OR REPLACE INTO active VALUES (?, ?)", (map_id, version))
            db.execute(
                "DELETE FROM maps WHERE map_id = ? AND version <= ?", (map_id, version - self.keep_versions)
            )
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
        return self._row(row, True)

    def _select(self, where: str, args: tuple[Any, ...], with_data: bool) -> list[StoredMap]:
        cols = ", ".join(f"m.{c.strip()}" for c in self.COLUMNS.split(","))
        sql = (
            f"SELECT {cols}, a.version IS NOT NULL{', m.data' if with_data else ''} FROM maps m "
            f"LEFT JOIN active a ON a.map_id = m.map_id AND a.version = m.version {where} "
            "ORDER BY m.map_id, m.version"
        )
        db = self._connect()
        try:
            rows = db.execute(sql, args).fetchall()
        finally:
            db.close()
        return [self._row(r[:10], bool(r[10]), r[11] if with_data else None) for r in rows]

    def active(self) -> list[StoredMap]:
        return self._select("WHERE a.version IS NOT NULL", (), with_data=True)

    def list(self, all_versions: bool = False) -> list[StoredMap]:
        return self._select("" if all_versions else "WHERE a.version IS NOT NULL", (), with_data=False)

    def get(self, map_id: str, version: int | None = None) -> StoredMap:
        if version:
            found = self._select("WHERE m.map_id = ? AND m.version = ?", (map_id, version), with_data=True)
        else:
            found = self._select("WHERE m.map_id = ? AND a.version IS NOT NULL", (map_id,), with_data=True)
        if not found:
            known = sorted({m.ref.map_id for m in self.list(all_versions=True)})
            what = f"version {version} of {map_id!r}" if version else f"active version of {map_id!r}"
            raise MapNotFound(f"no {what}; stored maps: {known}")
        return found[0]

    def rollback(self, map_id: str, version: int) -> StoredMap:
        """Serve an earlier (or any stored) version of ``map_id`` again."""
        if version < 1:
            raise InvalidInput(f"version must be 1 or more, got {version}")
        with self._transaction() as db:
            found = db.execute(
                "SELECT 1 FROM maps WHERE map_id = ? AND version = ?", (map_id, version)
            ).fetchone()
            if not found:
                raise MapNotFound(f"no version {version} of {map_id!r}")
            db.execute("INSERT OR REPLACE INTO active VALUES (?, ?)", (map_id, version))
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
        return self.get(map_id, version)

    def delete(self, map_id: str) -> int:
        """Remove every version of ``map_id``; returns how many were removed."""
        with self._transaction() as db:
            n = db.execute("DELETE FROM maps WHERE map_id = ?", (map_id,)).rowcount
            if n == 0:
                raise MapNotFound(f"no stored map {map_id!r}")  # rolls back: nothing changed
            db.execute("DELETE FROM active WHERE map_id = ?", (map_id,))
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
        return n

    def generation(self) -> int:
        db = self._connect()
        try:
            return int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        finally:
            db.close()
