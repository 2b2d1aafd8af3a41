"""Fitting time per map, and the cost of applying and scoring, for each method of the
low-FAR study, on real LFW embeddings (the face zoo's), against the papers' linear map.

Per method: seconds to fit one map on the fitting half of LFW (about 3,850 pairs), then
rows per second of transform and of Compare (transform + score) at batch 1 and 256, each
with its ratio to the linear map measured side by side. Run:
python benchmarks/bench_tuning.py [--source MODEL --target MODEL]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import numpy as np

from mapper.core.ensemble import EnsembleMap
from mapper.core.kernel import KernelMap
from mapper.core.maps import EmbeddingMap, LinearMap, RotationMap
from mapper.datasets.face_zoo import identity_of, identity_split, load_lfw_embeddings
from mapper.eval.selection import attach_scoring, select_map


def best_of(fn: Callable[[], object], seconds: float = 1.0) -> float:
    """Fastest single call among as many as fit in ``seconds`` (at least 3)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="sface-2021dec-int8bq")
    ap.add_argument("--target", default="dlib-resnet-v1")
    args = ap.parse_args()
    names, emb = load_lfw_embeddings()
    fit = identity_split(names, 0.5, 0)
    ids = np.array([identity_of(str(n)) for n in names])[fit]
    X, Y = emb[args.source][fit], emb[args.target][fit]
    print(f"{args.source} -> {args.target}: {fit.sum()} fitting pairs of {np.unique(ids).size} people")

    def plain(make: Callable[[], EmbeddingMap], scoring: str | None = None) -> Callable[[], EmbeddingMap]:
        def run() -> EmbeddingMap:
            m = make().fit(X, Y, groups=ids)
            if scoring:
                m.rescale_residual(X, Y)
                attach_scoring(m, scoring, X, Y)
            return m

        return run

    def mlp() -> EmbeddingMap:
        from mapper.core.mlp import MLPMap

        return MLPMap().fit(X, Y)

    methods: dict[str, Callable[[], EmbeddingMap]] = {
        "linear (papers, CV penalty)": plain(LinearMap),
        "rotation (papers)": plain(RotationMap),
        "linear + rescale, S-norm": plain(LinearMap, "snorm"),
        "kernel d3 a3": plain(KernelMap),
        "kernel d3 a3 + rescale, S-norm": plain(KernelMap, "snorm"),
        "ensemble (ridge, rotation, kernel) + S-norm": plain(EnsembleMap, "snorm"),
        "MLP (as configured)": mlp,
        "tuned (3-fold CV over 6 recipes x 3 scorings)": lambda: select_map(X, Y, ids),
    }
    x1 = emb[args.source][~fit][:1].astype(np.float32)
    x256 = emb[args.source][~fit][:256].astype(np.float32)
    y1 = emb[args.target][~fit][:1].astype(np.float32)
    y256 = emb[args.target][~fit][:256].astype(np.float32)
    print(
        f"\n{'method':<48}{'fit s':>8}{'x lin':>7}"
        f"{'transform/s b1':>16}{'b256':>12}{'compare/s b1':>14}{'b256':>12}{'vs lin b256':>13}"
    )
    base: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, run in methods.items():
            t0 = time.perf_counter()
            m = run()
            fit_s = time.perf_counter() - t0
            rates = {
                "t1": 1 / best_of(lambda m=m: m.transform(x1)),
                "t256": 256 / best_of(lambda m=m: m.transform(x256)),
                "c1": 1 / best_of(lambda m=m: m.score_rows(m.transform(x1), y1)),
                "c256": 256 / best_of(lambda m=m: m.score_rows(m.transform(x256), y256)),
                "fit": fit_s,
            }
            base = base or rates
            print(
                f"{name:<48}{fit_s:8.2f}{fit_s / base['fit']:6.1f}x"
                f"{rates['t1']:16,.0f}{rates['t256']:12,.0f}{rates['c1']:14,.0f}{rates['c256']:12,.0f}"
                f"{rates['c256'] / base['c256']:12.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
