"""Fit all ordered maps among K synthetic models and translate a million embeddings.

Prints wall time and peak traced memory per phase, and the ratio of LinearMap.transform
to a bare numpy matmul of the same shapes (the floor). Run: python benchmarks/bench_maps.py
"""

from __future__ import annotations

import argparse
import time
import timeit
import tracemalloc
import warnings
from contextlib import contextmanager
from typing import Any

import numpy as np

from mapper import CanonicalSpace, LinearMap, RotationMap

rows: list[tuple[str, float, float, str]] = []


@contextmanager
def phase(name: str, note: str = "") -> Any:
    tracemalloc.start()
    t0 = time.perf_counter()
    info: dict[str, str] = {"note": note}
    yield info
    wall = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rows.append((name, wall, peak, info["note"]))
    print(f"  {name:<42} {wall:9.2f} s  peak {peak:8.0f} MiB  {info['note']}", flush=True)


def synthetic_models(k: int, n: int, d: int, seed: int = 0) -> dict[str, np.ndarray]:
    """K noisy linear images of one latent identity space, each with its own mean."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, d)).astype(np.float32)
    out = {}
    for i in range(k):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        a = (q * rng.uniform(0.5, 1.5, d)).astype(np.float32)
        x = latent @ a + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
        out[f"model{i}"] = x + rng.standard_normal(d).astype(np.float32)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--translate", type=int, default=1_000_000, help="embeddings to translate")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    k, n, d = args.models, args.pairs, args.dim
    print(f"{k} models x {n} pairs x {d} dims; {k * (k - 1)} ordered maps")
    models = synthetic_models(k, n, d)
    names = list(models)
    pairs = [(a, b) for a in names for b in names if a != b]

    with phase(f"fit {len(pairs)} linear maps (5-fold CV)") as info:
        alphas = [LinearMap().fit(models[a], models[b]).alpha_ for a, b in pairs]
        info["note"] = f"alpha chosen: {sorted(set(alphas))}"
    with phase(f"fit {len(pairs)} rotation maps"):
        for a, b in pairs:
            RotationMap().fit(models[a], models[b])
    with phase(f"fit hub over {k} models (GPA)") as info, warnings.catch_warnings():
        hub = CanonicalSpace().fit(models)
        info["note"] = f"{hub.n_iter_} iterations"

    m = LinearMap(alpha=1.0).fit(models[names[0]], models[names[1]])
    X = np.random.default_rng(1).standard_normal((args.translate, d)).astype(np.float32)
    W = m.weight_.astype(np.float32)
    # X @ W allocates its output, like transform.
    floor = min(timeit.repeat(lambda: X @ W, number=1, repeat=args.repeats))
    with phase(f"translate {args.translate:,} x {d} float32") as info:
        t = min(timeit.repeat(lambda: m.transform(X), number=1, repeat=args.repeats))
        info["note"] = f"best of {args.repeats}: {t:.2f} s"
    print(
        f"\ntranslate {args.translate:,} embeddings: map {t:.2f} s, bare matmul {floor:.2f} s, "
        f"ratio {t / floor:.2f}x the floor ({args.translate / t:,.0f} embeddings/s)"
    )


if __name__ == "__main__":
    main()
