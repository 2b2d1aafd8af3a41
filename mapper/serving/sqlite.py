"""The default map store: one SQLite file in WAL mode.

Every publish is one transaction (version = max + 1, then mark it active), so concurrent
publishers never lose a write and a crash leaves either the old or the new state. The
``generation`` counter changes with every write, so servers notice new versions by polling.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from mapper.core import mapfile
from mapper.errors import MapNotFound
from mapper.serving.catalog import MapRef, map_id_of
from mapper.serving.store import StoredMap, describe

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

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
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

    def publish(self, data: bytes) -> StoredMap:
        """Verify a map file's bytes and store them as the next, active, version."""
        obj = mapfile.loads(data, "published map")  # raises MapFileError on a bad file
        meta = mapfile.read_metadata(data)
        map_id = map_id_of(obj)
        kind, source, target, d_s, d_t = describe(obj)
        sha = hashlib.sha256(data).hexdigest()
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            (version,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM maps WHERE map_id = ?", (map_id,)
            ).fetchone()
            row = (map_id, version, sha, kind, source, target, d_s, d_t, meta["created"], json.dumps(meta))
            db.execute(
                f"INSERT INTO maps ({self.COLUMNS}, data) VALUES (?,?,?,?,?,?,?,?,?,?,?)", (*row, data)
            )
            db.execute("INSERT OR REPLACE INTO active VALUES (?, ?)", (map_id, version))
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK") if db.in_transaction else None
            raise
        finally:
            db.close()
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
            what = f"version {version} of {map_id!r}" if version else f"an active {map_id!r}"
            raise MapNotFound(f"no {what}; stored maps: {known}")
        return found[0]

    def rollback(self, map_id: str, version: int) -> StoredMap:
        """Serve an earlier (or any stored) version of ``map_id`` again."""
        self.get(map_id, version)  # raises MapNotFound
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT OR REPLACE INTO active VALUES (?, ?)", (map_id, version))
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
            db.execute("COMMIT")
        finally:
            db.close()
        return self.get(map_id, version)

    def delete(self, map_id: str) -> int:
        """Remove every version of ``map_id``; returns how many were removed."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            n = db.execute("DELETE FROM maps WHERE map_id = ?", (map_id,)).rowcount
            db.execute("DELETE FROM active WHERE map_id = ?", (map_id,))
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
            db.execute("COMMIT")
        finally:
            db.close()
        if n == 0:
            raise MapNotFound(f"no stored map {map_id!r}")
        return n

    def generation(self) -> int:
        db = self._connect()
        try:
            return int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        finally:
            db.close()
