"""The map store in PostgreSQL, for several service replicas on several machines.

Same semantics as SQLite (``sqlstore.py``): versioned, atomic publish, rollback, checksum
verified on read. The write lock is the generation row (``SELECT ... FOR UPDATE``), and
every write sends ``NOTIFY mapper_maps`` in its transaction, so each replica's listener
reloads as soon as the write commits; replicas also poll, in case a notification is lost
while their listening connection is down. Needs ``pip install 'face-mapper[postgres]'``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from mapper.errors import Unavailable
from mapper.serving.sqlstore import SCHEMA, Execute, SQLMapStore, statements

log = logging.getLogger("mapper.serving")
CHANNEL = "mapper_maps"


class StoreUnavailable(Unavailable):
    """The database cannot be reached or failed mid-call (nothing was changed)."""


def _execute(cur: psycopg.Cursor) -> Execute:
    def execute(sql: str, args: tuple[Any, ...] = ()) -> psycopg.Cursor:
        cur.execute(sql.replace("?", "%s"), args)  # portable SQL holds no literal '?'
        return cur

    return execute


class PostgresMapStore(SQLMapStore):
    """:class:`~mapper.serving.store.MapStore` in a PostgreSQL database (``postgresql://...``)."""

    def __init__(self, url: str, *, keep_versions: int = 10, connect_timeout: float = 5.0) -> None:
        super().__init__(keep_versions)
        self.url = url
        self.connect_timeout = connect_timeout
        with self._connection() as db, db.transaction():
            # One schema creation at a time: CREATE TABLE IF NOT EXISTS races otherwise.
            db.execute("SELECT pg_advisory_xact_lock(727172)")
            for sql in statements(SCHEMA.format(blob="BYTEA")):
                db.execute(sql)

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"PostgresMapStore(keep_versions={self.keep_versions})"

    @contextmanager
    def _connection(self, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        try:
            with psycopg.connect(self.url, autocommit=autocommit, connect_timeout=self.connect_timeout) as db:
                yield db
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"map store database unavailable: {str(e).splitlines()[0]}") from e

    @contextmanager
    def _read(self) -> Iterator[Execute]:
        with self._connection(autocommit=True) as db, db.cursor() as cur:
            yield _execute(cur)

    @contextmanager
    def _write(self) -> Iterator[Execute]:
        with self._connection() as db, db.transaction(), db.cursor() as cur:
            execute = _execute(cur)
            execute("SELECT value FROM meta WHERE key = 'generation' FOR UPDATE")  # the write lock
            yield execute

    def _notify(self, execute: Execute, generation: int) -> None:
        execute("SELECT pg_notify(?, ?)", (CHANNEL, str(generation)))

    def watch(self, on_change: Callable[[], None]) -> None:
        """A daemon thread LISTENing on the channel; reconnects after a database outage."""

        def listen() -> None:
            while True:
                try:
                    with psycopg.connect(
                        self.url, autocommit=True, connect_timeout=self.connect_timeout
                    ) as db:
                        db.execute(f"LISTEN {CHANNEL}")
                        on_change()  # anything missed while not listening
                        for _ in db.notifies():
                            on_change()
                except psycopg.Error as e:
                    log.warning("map store listener: %s; retrying in 1 s", str(e).splitlines()[0])
                time.sleep(1.0)

        threading.Thread(target=listen, name="store-listener", daemon=True).start()
