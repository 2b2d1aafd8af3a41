"""Compare both ways (mapper.core.twoway): the scores, their out-of-fold thresholds, and the
serving rule that scores both ways only with the very reverse map the thresholds were
calibrated with (real SQLite store, real gRPC server)."""

from __future__ import annotations

import numpy as np
import pytest

from mapper import KernelMap, LinearMap
from mapper.core import mapfile, twoway
from mapper.core.calibration import Calibration
from mapper.eval.selection import attach_scoring
from mapper.eval.thresholds import calibrate, out_of_fold_scores, thresholds
from mapper.serving.catalog import map_id_of
from mapper.serving.sqlite import SQLiteMapStore
from mapper.serving.translator import Translator, macs_per_row

from .servers import start_server

rng = np.random.default_rng(5)
PEOPLE, PER, DA, DB = 120, 3, 24, 16
ids = np.repeat(np.arange(PEOPLE), PER)
identity = rng.standard_normal((PEOPLE, DA))
XA = identity[ids] + 0.6 * rng.standard_normal((len(ids), DA))
XB = np.tanh(XA @ rng.standard_normal((DA, DB)) / 3) + 0.05 * rng.standard_normal((len(ids), DB))


def fitted(kind: type, a: str, b: str, X: np.ndarray, Y: np.ndarray):
    m = kind(source_id=a, target_id=b).fit(X, Y, groups=ids[len(ids) - len(X) :])
    return attach_scoring(m, "snorm", X, Y)


@pytest.fixture(scope="module")
def maps():
    return fitted(LinearMap, "a", "b", XA, XB), fitted(KernelMap, "b", "a", XB, XA)


def test_two_way_scores_are_the_mean_of_both_directions(maps):
    forward, reverse = maps
    a, b = XA[:50].astype(np.float32), XB[:50].astype(np.float32)
    there = forward.score_rows(forward.compare_input(a), b)
    back = reverse.score_rows(reverse.compare_input(b), a)
    rows = twoway.two_way_rows(forward, reverse, a, b)
    np.testing.assert_allclose(rows, (there + back) / 2, atol=1e-6)
    np.testing.assert_allclose(np.diag(twoway.two_way_matrix(forward, reverse, a, b)), rows, atol=1e-5)


def test_a_fingerprint_names_what_a_map_computes(maps):
    forward, reverse = maps
    assert mapfile.fingerprint(mapfile.loads(mapfile.dumps(forward, {"any": "provenance"}))) == (
        mapfile.fingerprint(forward)
    )
    other = fitted(LinearMap, "a", "b", XA[1:], XB[1:])  # one photo fewer: other weights
    assert mapfile.fingerprint(other) != mapfile.fingerprint(forward)
    assert mapfile.fingerprint(reverse) != mapfile.fingerprint(forward)


def test_two_way_thresholds_come_from_out_of_fold_two_way_scores(maps):
    forward, reverse = maps
    genuine, impostor = out_of_fold_scores(forward, XA, XB, ids, reverse=reverse)
    one_genuine, one_impostor = out_of_fold_scores(forward, XA, XB, ids)
    assert genuine.shape == one_genuine.shape and impostor.shape == one_impostor.shape
    assert not np.allclose(impostor, one_impostor)  # the reverse copies took part
    both = calibrate(forward, XA, XB, ids, reverse=reverse)
    np.testing.assert_allclose(both.threshold(1e-2), thresholds(genuine, impostor).threshold(1e-2), rtol=1e-6)
    assert both.threshold(1e-2) != calibrate(forward, XA, XB, ids).threshold(1e-2)


def file_with_two_way(forward, reverse, one_way: float = 0.9, both: float = 0.4) -> bytes:
    return mapfile.dumps(
        forward,
        {
            Calibration.PROVENANCE_KEY: {"0.01": one_way},
            twoway.KEY: {
                "reverse_id": map_id_of(reverse),
                "reverse": mapfile.fingerprint(reverse),
                "thresholds": {"0.01": both},
            },
        },
    )


def test_compare_scores_both_ways_only_with_the_reverse_map_it_was_calibrated_with(tmp_path, maps):
    forward, reverse = maps
    store = SQLiteMapStore(tmp_path / "maps.sqlite")
    store.publish(file_with_two_way(forward, reverse))
    translator = Translator(store, max_batch=1000)
    a, b = XA[:40].astype(np.float32), XB[:40].astype(np.float32)

    alone = translator.compare(a, b, "a", "b", far=0.01)  # no b -> a map served yet
    assert alone.reverse_map is None and alone.scoring == "snorm" and alone.threshold == 0.9
    np.testing.assert_allclose(alone.scores, forward.score_rows(forward.compare_input(a), b), atol=1e-5)

    store.publish(mapfile.dumps(reverse))
    translator.reload()
    both = translator.compare(a, b, "a", "b", far=0.01)
    assert both.reverse_map.map_id == "b->a:kernel" and both.scoring == "snorm, both ways"
    assert both.threshold == 0.4
    np.testing.assert_allclose(both.scores, twoway.two_way_rows(forward, reverse, a, b), atol=1e-5)
    np.testing.assert_array_equal(both.same, both.scores >= 0.4)
    cost = translator.compare_cost("a", "b", "any", 40)
    served = [translator.catalog.entry(i)[1] for i in ("a->b:linear", "b->a:kernel")]
    assert cost.macs == 40 * sum(macs_per_row(m) for m in served)

    # A retrained b -> a map is not the one the thresholds were calibrated with: one way.
    store.publish(mapfile.dumps(fitted(KernelMap, "b", "a", XB[3:], XA[3:])))
    translator.reload()
    again = translator.compare(a, b, "a", "b", far=0.01)
    assert again.reverse_map is None and again.threshold == 0.9
    np.testing.assert_allclose(again.scores, alone.scores, atol=1e-6)


def test_the_reply_names_both_maps(tmp_path, maps):
    forward, reverse = maps
    store = SQLiteMapStore(tmp_path / "maps.sqlite")
    store.publish(file_with_two_way(forward, reverse))
    store.publish(mapfile.dumps(reverse))
    srv = start_server(tmp_path, tmp_path / "maps.sqlite")
    with srv.client() as c:
        result = c.compare(XA[:5].astype(np.float32), "a", XB[:5].astype(np.float32), "b", far=0.01)
    srv.stop()
    assert result.map.map_id == "a->b:linear" and result.reverse_map.map_id == "b->a:kernel"
    assert result.scoring == "snorm, both ways" and result.threshold == pytest.approx(0.4)
