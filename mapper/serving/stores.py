"""Opening a map store by its location: a SQLite file path or a PostgreSQL URL.

Its own module so that the store interface (``store.py``) does not import the stores that
implement it.
"""

from __future__ import annotations

from pathlib import Path

from mapper.serving.store import MapStore


def open_store(location: str | Path, *, keep_versions: int = 10) -> MapStore:
    """The store at ``location``: ``postgresql://...`` (needs the ``postgres`` extra), else a
    SQLite file path (created if new)."""
    if str(location).startswith(("postgresql://", "postgres://")):
        from mapper.serving.postgres import PostgresMapStore

        return PostgresMapStore(str(location), keep_versions=keep_versions)
    from mapper.serving.sqlite import SQLiteMapStore

    return SQLiteMapStore(location, keep_versions=keep_versions)
