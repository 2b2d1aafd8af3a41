"""What the translation service does, without a transport: the gRPC servicer adapts this.

A :class:`Translator` holds the active maps of a store in memory (a :class:`Catalog` and each
map's :class:`Calibration`, swapped together), reloads them when the store's generation
moves, and answers translate / compare / list / publish / delete / rollback with plain numpy
arrays and library records. Errors are the library's own (``mapper.errors``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mapper.core import mapfile
from mapper.core.calibration import Calibration
from mapper.core.scoring import COSINE
from mapper.core.validation import check_embeddings
from mapper.errors import EmbeddingError, LimitExceeded, MapFileError, MapNotFound, Unavailable
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
    threshold: float | None = None
    same: np.ndarray | None = None  # (n,) bool, when a FAR was given


class Translator:
    """Translate and compare embeddings across models with the maps of ``store``.

    ``max_batch`` bounds the rows of one request. ``on_reload(catalog, generation)``,
    ``on_store_error()`` and ``on_store_state(ok)`` let a server export what happened
    (metrics, health) without this module knowing how.
    """

    def __init__(
        self,
        store: MapStore,
        *,
        max_batch: int = 65536,
        on_reload: Callable[[Catalog, int], None] | None = None,
        on_store_error: Callable[[], None] | None = None,
        on_store_state: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self._on_reload = on_reload or (lambda catalog, generation: None)
        self._on_store_error = on_store_error or (lambda: None)
        self._on_store_state = on_store_state or (lambda ok: None)
        # One reference, so a reader always sees a catalog with its own calibrations.
        self._served: tuple[Catalog, dict[str, Calibration]] = (Catalog(), {})
        self._generation = -1
        self._reload_lock = threading.Lock()
        self.reload()

    # -- maps in memory ----------------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        return self._served[0]

    def reload(self, force: bool = False) -> bool:
        """Load the store's active maps if its generation moved; True if reloaded.

        A failed store read keeps the maps being served; an unreadable stored map is skipped.
        """
        with self._reload_lock:
            try:
                generation = self.store.generation()
                if generation == self._generation and not force:
                    return False
                stored = self.store.active()
            except Exception as e:
                self._on_store_state(False)
                self._on_store_error()
                if isinstance(e, Unavailable):  # expected during an outage: no traceback
                    log.warning("store unavailable (%s); still serving %d maps", e, len(self.catalog))
                else:
                    log.exception("store read failed; still serving %d maps", len(self.catalog))
                return False
            self._on_store_state(True)
            entries, calibrations = [], {}
            for m in stored:
                try:
                    entries.append((m.ref, mapfile.loads(m.data or b"", m.ref.map_id)))
                except MapFileError:
                    self._on_store_error()
                    log.exception("skipping unreadable stored map %s v%d", m.ref.map_id, m.ref.version)
                    continue
                calibrations[m.ref.map_id] = Calibration.from_metadata(m.metadata)
            self._served = (Catalog(entries), calibrations)
            self._generation = generation
            self._on_reload(self.catalog, generation)
            log.info("maps loaded: generation %d, %d maps", generation, len(entries))
            return True

    # -- requests ----------------------------------------------------------------------------
    def check_rows(self, rows: int, name: str) -> None:
        """:class:`LimitExceeded` if a request part has more than ``max_batch`` rows."""
        if rows > self.max_batch:
            raise LimitExceeded(f"{name} has {rows} rows; the limit is {self.max_batch} per request")

    def translate(
        self, x: np.ndarray, source: str, target: str, kind: str = "any"
    ) -> tuple[np.ndarray, MapRef]:
        """(n, d_source) -> ((n, d_target) in ``target``'s space, the map used)."""
        self.check_rows(x.shape[0], "embeddings")
        m, ref = self.catalog.resolve(source, target, kind)
        return m.transform(x), ref

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
        """Score of row i of ``a`` (model A) against row i of ``b`` (model B), in B's space:
        a cosine, or the scoring the map file records (centred, S-norm).

        With ``far`` > 0 the map's calibrated threshold at that FAR decides ``same``.
        """
        self.check_rows(a.shape[0], "a")
        self.check_rows(b.shape[0], "b")
        if a.shape[0] != b.shape[0]:
            raise EmbeddingError(f"a and b must hold the same number of rows: {a.shape[0]} != {b.shape[0]}")
        catalog, calibrations = self._served
        if model_a == model_b:
            dims = catalog.models()
            if model_a not in dims:
                raise MapNotFound(f"unknown model {model_a!r}; models with maps: {sorted(dims)}")
            a = check_embeddings(a, name="a", dim=dims[model_a])
            b = check_embeddings(b, name="b", dim=dims[model_a])
            result = Comparison(COSINE.rows(a, b), space=model_b)
            calibration = Calibration()
        else:
            m, ref = catalog.resolve(model_a, model_b, kind)
            a_b = m.transform(a)
            b = check_embeddings(b, name="b", dim=a_b.shape[1])
            result = Comparison(m.score_rows(a_b, b), space=model_b, map=ref, scoring=m.score_space.kind)
            calibration = calibrations.get(ref.map_id, Calibration())
        if far > 0:
            result.threshold = calibration.threshold(far)
            result.same = result.scores >= result.threshold
        return result

    # -- map management ----------------------------------------------------------------------
    def models(self) -> dict[str, int]:
        return self.catalog.models()

    def list(self, *, all_versions: bool = False, source: str = "", target: str = "") -> list[StoredMap]:
        """Stored maps (active ones unless ``all_versions``), optionally by model."""
        return [
            m
            for m in self.store.list(all_versions=all_versions)
            if (not source or source in (m.source, *m.hub_models))
            and (not target or target in (m.target, *m.hub_models))
        ]

    def get(self, map_id: str, version: int | None = None) -> StoredMap:
        return self.store.get(map_id, version)

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
