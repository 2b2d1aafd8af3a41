"""What the translation service does, without a transport: the gRPC servicer adapts this.

A :class:`Translator` holds the active maps of a store in memory (a :class:`Catalog` and each
map's :class:`Calibration`, swapped together), reloads them when the store's generation
moves, and answers translate / compare / list / publish / delete / rollback with plain numpy
arrays and library records. Errors are the library's own (``mapper.errors``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

import numpy as np

from mapper.core import mapfile, twoway
from mapper.core.calibration import Calibration
from mapper.core.mapfile import MapObject
from mapper.core.maps import EmbeddingMap
from mapper.core.scoring import COSINE
from mapper.core.validation import check_embeddings, check_finite
from mapper.errors import Cancelled, EmbeddingError, LimitExceeded, MapFileError, MapNotFound, Unavailable
from mapper.serving.catalog import Catalog, MapRef
from mapper.serving.store import MapStore, StoredMap

log = logging.getLogger("mapper.serving")


@dataclass
class Comparison:
    """Scores of row pairs in ``space`` (model B's), with the decision if asked."""

    scores: np.ndarray  # (n,) float32
    space: str
    map: MapRef | None = None  # the map that brought A into B's space (None: same model)
    scoring: str = "cosine"  # how the map file says to score (see mapper.core.scoring)
    reverse_map: MapRef | None = None  # the B -> A map, when scored both ways (mapper.core.twoway)
    threshold: float | None = None
    same: np.ndarray | None = None  # (n,) bool, when a FAR was given


@dataclass(frozen=True)
class Decisions:
    """What a served map's file decides Compare with: its thresholds, and its two-way
    thresholds with the id and :func:`~mapper.core.mapfile.fingerprint` of the reverse map
    they were calibrated with; ``fingerprint`` is the map's own."""

    one_way: Calibration = field(default_factory=Calibration)
    two_way: Calibration | None = None
    reverse_id: str | None = None
    reverse: str | None = None
    fingerprint: str | None = None

    @classmethod
    def of(cls, obj: MapObject, metadata: dict) -> Decisions:
        record = metadata.get("provenance", {}).get(twoway.KEY) or {}
        return cls(
            Calibration.from_metadata(metadata),
            Calibration(record["thresholds"]) if record else None,
            record.get("reverse_id"),
            record.get("reverse"),
            mapfile.fingerprint(obj) if isinstance(obj, EmbeddingMap) else None,
        )


#: Multiply-adds per row block: work is done block by block, so a cancelled call or one
#: past its deadline stops within one block (tens of ms on a CPU core), and temporaries stay
#: a few MiB whatever the request's size.
BLOCK_MACS = 2**26


Stop = Callable[[], bool]
T = TypeVar("T")


@dataclass(frozen=True)
class Cost:
    """What a request will cost, known from its shape before its bytes are read:
    ``macs`` multiply-adds (rows x the map's cost per row) and ``reply_bytes``."""

    rows: int
    macs: int
    reply_bytes: int


class Route(NamedTuple):
    """A translation resolved once from a request's names, so that pricing it and running
    it use the same map (a publish may swap the catalog in between)."""

    map: EmbeddingMap
    ref: MapRef


@dataclass
class Job(Generic[T]):
    """A request resolved to its map; ``run(stop)`` does the work in row blocks and raises
    :class:`Cancelled` as soon as ``stop()`` is true between two blocks."""

    rows: int
    work: Callable[[int, int], None]  # computes rows [start, stop)
    result: Callable[[], T]
    block: int

    def run(self, stop: Stop | None = None) -> T:
        for start in range(0, self.rows, self.block):
            if stop is not None and stop():
                raise Cancelled(f"stopped after {start} of {self.rows} rows")
            self.work(start, min(start + self.block, self.rows))
        return self.result()


def _block(macs_per_row: int) -> int:
    return max(16, BLOCK_MACS // max(macs_per_row, 1))


_MACS: weakref.WeakKeyDictionary[EmbeddingMap, int] = weakref.WeakKeyDictionary()


def macs_per_row(m: EmbeddingMap) -> int:
    """``m.macs_per_row()``, computed once per loaded map (it walks the map's arrays)."""
    found = _MACS.get(m)
    if found is None:
        found = _MACS[m] = m.macs_per_row()
    return found


class Translator:
    """Translate and compare embeddings across models with the maps of ``store``.

    ``store`` is a store or a function opening one (called on reloads until it works);
    ``watch`` asks the store to call :meth:`reload` on writes; ``load`` loads at once.
    ``max_batch`` bounds the rows of one request. ``on_reload(catalog, generation)``,
    ``on_store_error()`` and ``on_store_state(ok)`` let a server export what happened
    (metrics, health) without this module knowing how. ``ready`` is false until the maps
    were loaded once (``not_ready_reason`` says why); until then requests get
    :class:`Unavailable` rather than answers from an empty catalog.
    """

    def __init__(
        self,
        store: MapStore | Callable[[], MapStore],
        *,
        watch: bool = False,
        load: bool = True,
        max_batch: int = 65536,
        on_reload: Callable[[Catalog, int], None] | None = None,
        on_store_error: Callable[[], None] | None = None,
        on_store_state: Callable[[bool], None] | None = None,
    ) -> None:
        # A store, or how to open one: then it is opened on the first reload, and opening is
        # retried on each reload until it works (a database may be down when a replica starts).
        self._store, self._open = (None, store) if callable(store) else (store, None)
        self._watch = watch
        self.max_batch = max_batch
        self._on_reload = on_reload or (lambda catalog, generation: None)
        self._on_store_error = on_store_error or (lambda: None)
        self._on_store_state = on_store_state or (lambda ok: None)
        # One reference, so a reader always sees a catalog with its own calibrations.
        self._served: tuple[Catalog, dict[str, Decisions]] = (Catalog(), {})
        self._generation = -1
        self._reload_lock = threading.Lock()
        self.ready = False
        self.not_ready_reason = "the maps have not been loaded yet"
        if load:
            self.reload()

    # -- maps in memory ----------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        return self._served[0]

    @property
    def store(self) -> MapStore:
        if self._store is None:
            raise Unavailable(f"the map store is not open yet: {self.not_ready_reason}")
        return self._store

    def _opened(self) -> MapStore:
        if self._store is None:
            assert self._open is not None
            self._store = self._open()
        if self._watch:  # once, with the store open
            self._watch = False
            self._store.watch(self.reload)
        return self._store

    def reload(self, force: bool = False) -> bool:
        """Load the store's active maps if its generation moved; True if reloaded.

        Only maps whose version changed are read and parsed; the others are kept as they
        are. A failed store read keeps the maps being served; an unreadable stored map is
        skipped.
        """
        with self._reload_lock:
            try:
                store = self._opened()
                generation = store.generation()
                if generation == self._generation and not force:
                    return False
                entries, decisions = self._load(store.list())
            except Exception as e:
                self._on_store_state(False)
                self._on_store_error()
                if not self.ready:
                    self.not_ready_reason = f"the map store could not be read: {e}"
                if isinstance(e, Unavailable):  # expected during an outage: no traceback
                    log.warning("store unavailable (%s); still serving %d maps", e, len(self.catalog))
                else:
                    log.exception("store read failed; still serving %d maps", len(self.catalog))
                return False
            self._on_store_state(True)
            self._served = (Catalog(entries), decisions)
            self._generation = generation
            self.ready = True
            self._on_reload(self.catalog, generation)
            log.info("maps loaded: generation %d, %d maps", generation, len(entries))
            return True

    def _load(self, active: list[StoredMap]) -> tuple[list[tuple[MapRef, MapObject]], dict[str, Decisions]]:
        old, old_decisions = self._served
        entries, decisions = [], {}
        for m in active:
            kept = old.entry(m.ref.map_id)
            if kept is not None and kept[0] == m.ref:
                entries.append(kept)
                decisions[m.ref.map_id] = old_decisions[m.ref.map_id]
                continue
            data = self.store.get(m.ref.map_id, m.ref.version).data or b""  # store errors abort
            try:
                obj = mapfile.loads(data, m.ref.map_id)
            except MapFileError:
                self._on_store_error()
                log.exception("skipping unreadable stored map %s v%d", m.ref.map_id, m.ref.version)
                continue
            entries.append((m.ref, obj))
            decisions[m.ref.map_id] = Decisions.of(obj, m.metadata)
        return entries, decisions

    def _served_now(self) -> tuple[Catalog, dict[str, Decisions]]:
        if not self.ready:
            raise Unavailable(f"this server is not ready: {self.not_ready_reason}; it retries")
        return self._served

    @staticmethod
    def _reverse(
        catalog: Catalog, decisions: dict[str, Decisions], m: MapRef
    ) -> tuple[EmbeddingMap, MapRef] | None:
        """The served reverse map that ``m``'s two-way thresholds were calibrated with, if
        it is served: that very map (same fingerprint), not merely one between the same models."""
        d = decisions[m.map_id]
        entry = catalog.entry(d.reverse_id) if d.reverse_id and d.two_way is not None else None
        if entry is None or decisions[entry[0].map_id].fingerprint != d.reverse:
            return None
        reverse, ref = entry[1], entry[0]
        return (reverse, ref) if isinstance(reverse, EmbeddingMap) else None

    # -- requests ----------------------------------------------------------------------------
    def check_rows(self, rows: int, name: str) -> None:
        """:class:`LimitExceeded` if a request part has more than ``max_batch`` rows."""
        if rows > self.max_batch:
            raise LimitExceeded(f"{name} has {rows} rows; the limit is {self.max_batch} per request")

    def route(self, source: str, target: str, kind: str = "any") -> Route:
        """The map that translates ``source`` to ``target`` now (NOT_FOUND etc. if none)."""
        return Route(*self._served_now()[0].resolve(source, target, kind))

    def translate_cost(self, route: Route, rows: int) -> Cost:
        """What translating ``rows`` rows along ``route`` would cost."""
        self.check_rows(rows, "embeddings")
        m = route.map
        return Cost(rows, rows * macs_per_row(m), rows * m.n_features_out_ * 4)

    def compare_cost(self, model_a: str, model_b: str, kind: str, rows: int) -> Cost:
        """What comparing ``rows`` row pairs would cost."""
        self.check_rows(rows, "a")
        catalog, decisions = self._served_now()
        if model_a == model_b:
            per_row = 2 * catalog.models().get(model_a, 0)
        else:
            m, ref = catalog.resolve(model_a, model_b, kind)
            reverse = self._reverse(catalog, decisions, ref)
            per_row = macs_per_row(m) + (macs_per_row(reverse[0]) if reverse else 0)
        return Cost(rows, rows * per_row, 5 * rows)

    def translate_job(self, x: np.ndarray, route: Route) -> Job[tuple[np.ndarray, MapRef]]:
        """A job turning (n, d_source) ``x`` into (n, d_target) float32 in the target's space
        along ``route``; its result names the map used."""
        x = self.translate_input(x, route)
        blocks: list[np.ndarray] = []

        def work(i: int, j: int) -> None:
            blocks.append(self.translate_now(x, route, slice(i, j)))

        def result() -> tuple[np.ndarray, MapRef]:
            # One block (most requests) is the reply as it is: no copy.
            return (blocks[0] if len(blocks) == 1 else np.concatenate(blocks)), route.ref

        return Job(x.shape[0], work, result, _block(macs_per_row(route.map)))

    def translate_now(self, x: np.ndarray, route: Route, rows: slice | None = None) -> np.ndarray:
        """``x`` (from :meth:`translate_input`), or its ``rows``, along ``route`` in one go:
        :meth:`translate_job`'s work for one block, and all of it for a request small enough
        to need neither blocks nor stopping (less per-call work for 1-row calls)."""
        try:
            return route.map.transform(x if rows is None else x[rows])
        except EmbeddingError:
            check_finite(x, "embeddings")  # raises with the request's row numbers
            raise

    def translate_input(self, x: np.ndarray, route: Route) -> np.ndarray:
        """``x`` checked as a request's embeddings for ``route``: rows, dtype, dimension.
        NaN/Inf are found by the map on the way (it reports the row of its block; the whole
        input is scanned again only then, for the row number in the request)."""
        self.check_rows(x.shape[0], "embeddings")
        return check_embeddings(x, name="embeddings", dim=route.map.n_features_in_, finite=False)

    def translate_many(self, xs: list[np.ndarray], route: Route) -> list[np.ndarray | Exception]:
        """Several requests' embeddings ((n_i, d_source) each, from :meth:`translate_input`)
        along one route as one product: each request's (n_i, d_target) float32, or the error
        it alone would get (a request with a NaN fails alone). Meant for requests of one
        block together (:data:`BLOCK_MACS`): it cannot be stopped half way."""
        try:
            y = route.map.transform(np.concatenate(xs) if len(xs) > 1 else xs[0])
        except EmbeddingError:  # someone's bad rows: each request on its own
            results: list[np.ndarray | Exception] = []
            for x in xs:
                try:
                    results.append(self.translate_job(x, route).run()[0])
                except EmbeddingError as e:
                    results.append(e)
            return results
        return np.split(y, np.cumsum([len(x) for x in xs[:-1]]))

    def translate(
        self, x: np.ndarray, source: str, target: str, kind: str = "any"
    ) -> tuple[np.ndarray, MapRef]:
        """(n, d_source) -> ((n, d_target) in ``target``'s space, the map used)."""
        return self.translate_job(x, self.route(source, target, kind)).run()

    def compare_job(
        self,
        a: np.ndarray,
        b: np.ndarray,
        model_a: str,
        model_b: str,
        *,
        kind: str = "any",
        far: float = 0.0,
    ) -> Job[Comparison]:
        """A job scoring row i of ``a`` (model A) against row i of ``b`` (model B), in B's
        space: a cosine, or the scoring the map file records (centred, S-norm), both ways
        when the file has two-way thresholds and the reverse map they name is served
        (:mod:`mapper.core.twoway`). Its result is a :class:`Comparison`; with ``far`` > 0
        the calibrated threshold at that FAR decides ``same``."""
        self.check_rows(a.shape[0], "a")
        self.check_rows(b.shape[0], "b")
        if a.shape[0] != b.shape[0]:
            raise EmbeddingError(f"a and b must hold the same number of rows: {a.shape[0]} != {b.shape[0]}")
        catalog, decisions = self._served_now()
        if model_a == model_b:
            dims = catalog.models()
            if model_a not in dims:
                raise MapNotFound(f"unknown model {model_a!r}; models with maps: {sorted(dims)}")
            a = check_embeddings(a, name="a", dim=dims[model_a])
            b = check_embeddings(b, name="b", dim=dims[model_a])
            result = Comparison(np.empty(a.shape[0], np.float32), space=model_b)
            calibration, per_row = Calibration(), 2 * a.shape[1]

            def work(i: int, j: int) -> None:
                result.scores[i:j] = COSINE.rows(a[i:j], b[i:j])

        else:
            m, ref = catalog.resolve(model_a, model_b, kind)
            a = check_embeddings(a, name="a", dim=m.n_features_in_)
            b = check_embeddings(b, name="b", dim=m.n_features_out_)
            result = Comparison(
                np.empty(a.shape[0], np.float32), space=model_b, map=ref, scoring=m.score_space.method
            )
            calibration, per_row = decisions[ref.map_id].one_way, macs_per_row(m)
            both = self._reverse(catalog, decisions, ref)
            if both is None:

                def work(i: int, j: int) -> None:
                    result.scores[i:j] = m.score_rows(m.compare_input(a[i:j]), b[i:j])

            else:
                reverse, result.reverse_map = both
                result.scoring += ", both ways"
                calibration = decisions[ref.map_id].two_way
                per_row += macs_per_row(reverse)

                def work(i: int, j: int) -> None:
                    result.scores[i:j] = twoway.two_way_rows(m, reverse, a[i:j], b[i:j])

        def finish() -> Comparison:
            if far > 0:
                result.threshold = calibration.threshold(far)
                result.same = result.scores >= result.threshold
            return result

        return Job(a.shape[0], work, finish, _block(per_row))

    def compare(
        self,
        a: np.ndarray,
        b: np.ndarray,
        model_a: str,
        model_b: str,
        *,
        kind: str = "any",
        far: float = 0.0,
    ) -> Comparison:
        """See :meth:`compare_job`; runs it at once."""
        return self.compare_job(a, b, model_a, model_b, kind=kind, far=far).run()

    # -- map management ----------------------------------------------------------------------
    def models(self) -> dict[str, int]:
        return self._served_now()[0].models()

    def list(self, *, all_versions: bool = False, source: str = "", target: str = "") -> list[StoredMap]:
        """Stored maps (active ones unless ``all_versions``), optionally by model."""
        return [
            m
            for m in self.store.list(all_versions=all_versions)
            if (not source or source in (m.source, *m.hub_models))
            and (not target or target in (m.target, *m.hub_models))
        ]

    def get(self, map_id: str, version: int | None = None, *, with_data: bool = True) -> StoredMap:
        return self.store.get(map_id, version, with_data=with_data)

    def publish(self, data: bytes) -> StoredMap:
        stored = self.store.publish(data)
        self.reload()
        log.info("map published: %s v%d", stored.ref.map_id, stored.ref.version)
        return stored

    def delete(self, map_id: str) -> int:
        n = self.store.delete(map_id)
        self.reload()
        return n

    def rollback(self, map_id: str, version: int) -> StoredMap:
        stored = self.store.rollback(map_id, version)
        self.reload()
        return stored
