"""The default map store: one SQLite file in WAL mode, safe across threads and processes.
Servers learn about writes by polling its generation counter."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mapper.serving.sqlstore import SCHEMA, Execute, SQLMapStore, statements


class SQLiteMapStore(SQLMapStore):
    """:class:`~mapper.serving.store.MapStore` in one SQLite file."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0, keep_versions: int = 10) -> None:
        super().__init__(keep_versions)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = busy_timeout_s
        db = self._connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")
            for sql in statements(SCHEMA.format(blob="BLOB")):
                db.execute(sql)
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        return db

    @contextmanager
    def _read(self) -> Iterator[Execute]:
        db = self._connect()
        try:
            yield db.execute
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[Execute]:
        # BEGIN IMMEDIATE takes the write lock at once: writers queue, readers go on.
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db.execute
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()
