"""One contract, every store backend: SQLite (a real file) and PostgreSQL (a real server)."""

from __future__ import annotations

import sqlite3
import threading
import unicodedata

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mapper import LinearMap, RotationMap
from mapper.core import mapfile
from mapper.errors import InvalidInput, MapFileError, MapNotFound
from mapper.serving.catalog import MAX_NAME, check_name
from mapper.serving.sqlite import SQLiteMapStore
from mapper.serving.translator import Translator

rng = np.random.default_rng(11)
X, Y = rng.standard_normal((200, 16)), rng.standard_normal((200, 12))


def linear(source: str = "a", target: str = "b", **provenance) -> bytes:
    return mapfile.dumps(LinearMap(source_id=source, target_id=target).fit(X, Y), provenance)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    """(a factory of store handles on one fresh store, raw SQL on it)."""
    if request.param == "sqlite":
        path = tmp_path / "maps.sqlite"

        def raw(sql: str, args: tuple = ()) -> None:
            with sqlite3.connect(path) as db:
                db.execute(sql, args)

        return (lambda **kw: SQLiteMapStore(path, **kw)), raw
    import psycopg

    from mapper.serving.postgres import PostgresMapStore

    url = request.getfixturevalue("postgres").new_database()

    def raw_pg(sql: str, args: tuple = ()) -> None:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(sql.replace("?", "%s"), args)

    return (lambda **kw: PostgresMapStore(url, **kw)), raw_pg


def test_publish_versions_and_generation(backend):
    open_store, _ = backend
    store = open_store()
    g0 = store.generation()
    first = store.publish(linear(n=1))
    second = store.publish(linear(n=2))
    assert (first.ref.version, second.ref.version) == (1, 2) and store.generation() == g0 + 2
    assert [m.ref.version for m in store.list()] == [2]
    assert [(m.ref.version, m.active) for m in store.list(all_versions=True)] == [(1, False), (2, True)]
    got = store.get("a->b:linear")
    assert got.ref == second.ref and mapfile.loads(got.data).n_features_out_ == 12
    assert store.get("a->b:linear", 1).ref == first.ref
    assert [m.ref.map_id for m in open_store().list()] == ["a->b:linear"]  # another handle


def test_rollback_and_delete(backend):
    store = backend[0]()
    store.publish(linear(n=1))
    store.publish(linear(n=2))
    g = store.generation()
    for bad in (0, -1):
        with pytest.raises(InvalidInput):
            store.rollback("a->b:linear", bad)
    with pytest.raises(MapNotFound):
        store.rollback("a->b:linear", 9)
    assert store.generation() == g and store.get("a->b:linear").ref.version == 2
    assert store.rollback("a->b:linear", 1).ref.version == 1
    assert store.get("a->b:linear").ref.version == 1 and store.generation() == g + 1
    with pytest.raises(MapNotFound):
        store.delete("nothing-here")
    assert store.generation() == g + 1  # a failed delete changes nothing
    assert store.delete("a->b:linear") == 2
    assert store.list(all_versions=True) == []
    with pytest.raises(MapNotFound, match="no active version of 'a->b:linear'"):
        store.get("a->b:linear")


def test_identical_republish_and_pruning(backend):
    store = backend[0](keep_versions=3)
    blob = linear()
    assert store.publish(blob).ref.version == 1
    g = store.generation()
    assert store.publish(blob).ref.version == 1 and store.generation() == g
    for n in range(5):
        store.publish(linear(n=n))
    assert [m.ref.version for m in store.list(all_versions=True)] == [4, 5, 6]


def test_bad_files_change_nothing(backend):
    store = backend[0]()
    store.publish(linear())
    g = store.generation()
    with pytest.raises(MapFileError):
        store.publish(linear()[:-10])
    other = mapfile.dumps(RotationMap(source_id="a", target_id="c").fit(rng.standard_normal((200, 8)), Y))
    with pytest.raises(InvalidInput, match="declares 'a' as 8-d"):
        store.publish(other)
    assert store.generation() == g and len(store.list(all_versions=True)) == 1


@pytest.mark.parametrize(
    "name, why",
    [("x" * 300, "at most 256"), ("a\x00b", "control character"), ("a\nb", "control character")],
)
def test_names_get_one_answer_from_every_store(backend, name, why):
    """Both stores refuse an unusable name the same way, at publish and on every lookup, and
    nothing stored is lost (PostgreSQL cannot even hold a NUL: it used to answer INTERNAL)."""
    store = backend[0]()
    store.publish(linear())
    g = store.generation()
    with pytest.raises(InvalidInput, match=why):
        store.publish(linear(source=name))
    for call in (store.get, store.delete, lambda m: store.rollback(m, 1)):
        with pytest.raises(InvalidInput, match=why):
            call(name)
    assert store.generation() == g and [m.ref.map_id for m in store.list()] == ["a->b:linear"]


@given(st.text(max_size=40))
def test_a_name_is_refused_exactly_when_it_holds_a_control_character(name):
    """check_name's fast path (str.isprintable) agrees with the rule it stands for."""
    control = any(unicodedata.category(c) == "Cc" for c in name)
    if control:
        with pytest.raises(InvalidInput, match="control character"):
            check_name(name, "map_id")
    else:
        assert check_name(name, "map_id") == name and len(name) <= MAX_NAME


def test_concurrent_publishers_lose_nothing(backend):
    open_store, _ = backend
    open_store(keep_versions=100)  # creates the schema once
    blobs = [[linear(thread=t, n=n) for n in range(4)] for t in range(6)]
    versions: list[int] = []
    errors: list[BaseException] = []

    def publish(t: int) -> None:
        store = open_store(keep_versions=100)  # its own handle, as another process would have
        try:
            versions.extend(store.publish(b).ref.version for b in blobs[t])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(versions) == list(range(1, 25))
    assert open_store().get("a->b:linear").ref.version == 24


def test_checksum_is_verified_on_read(backend):
    open_store, raw = backend
    store = open_store()
    store.publish(linear())
    store.publish(linear(source="c"))
    tampered = bytearray(store.get("c->b:linear").data)
    tampered[-5] ^= 0xFF
    raw("UPDATE maps SET data = ? WHERE map_id = ?", (bytes(tampered), "c->b:linear"))
    errors = []
    translator = Translator(store, on_store_error=lambda: errors.append(1))
    assert [r.map_id for r in translator.catalog.refs()] == ["a->b:linear"]  # the tampered one skipped
    assert errors == [1]


def test_train_and_migrate_use_postgresql(tmp_path, postgres, face_zoo):
    """mapper-train --store and mapper-migrate --store take a postgresql:// URL."""
    import argparse

    from mapper.cli import migrate, train
    from mapper.serving.stores import open_store

    url = postgres.new_database()
    models = ["sface-2021dec-int8bq", "mobilefacenet-arcface"]
    assert train.main([
        "--embeddings", str(face_zoo / "embeddings" / "lfw-embeddings.npz"), "--images", "200",
        "--models", *models, "--kinds", "linear", "--no-fewshot", "--no-security", "--no-progress",
        "--out", str(tmp_path / "out"), "--store", url,
    ]) == 0  # fmt: skip
    stored = sorted(m.ref.map_id for m in open_store(url).list())
    assert stored == sorted(f"{a}->{b}:linear" for a in models for b in models if a != b)
    args = argparse.Namespace(map=None, store=url, map_id=stored[0], version=None)
    data, meta = migrate.load_map(args)
    assert mapfile.loads(data).kind == "linear" and meta["mapper.map_version"] == "1"
