"""A real job of the library on real face CNNs' embeddings of LFW (no Triton needed).

Splits LFW's identities in two (seeded), fits linear, rotation and hub maps between every
ordered pair of the face zoo's four models on one half, and measures TAR at fixed FAR on
all pairs of a sample of the other half: one side embedded by model A and mapped into B's
space, the other embedded by B. Writes the fitted maps as map files.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from . import io
from .hub import CanonicalSpace
from .maps import LinearMap, RotationMap
from .metrics import evaluate
from .zoo import identity_of, identity_split, load_lfw_embeddings

FARS = (1e-2, 1e-3, 1e-4)
PAPERS = {"native": 0.96, "linear": 0.95, "rotation": 0.91}  # IJB-C, TAR@FAR=1e-2, 10 CNNs


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mapper.demo", description=__doc__)
    ap.add_argument("--embeddings", help="npz of precomputed embeddings (default: the face zoo's)")
    ap.add_argument(
        "--eval-images", type=int, default=3000, help="images of held-out people scored all-pairs"
    )
    ap.add_argument("--out", default="out/demo", help="folder for the fitted map files")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    names, emb = load_lfw_embeddings(args.embeddings)
    models = list(emb)
    ids = np.array([identity_of(str(n)) for n in names])
    fit = identity_split(names, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    ev = np.sort(rng.choice(np.flatnonzero(~fit), min(args.eval_images, int((~fit).sum())), replace=False))
    iu = np.triu_indices(ev.size, 1)
    labels = (ids[ev][:, None] == ids[ev][None, :])[iu]
    print(
        f"LFW: {fit.sum()} images of {np.unique(ids[fit]).size} people to fit; "
        f"{ev.size} images of other people scored all-pairs: {labels.sum():,} genuine, "
        f"{(~labels).sum():,} impostor pairs"
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    provenance = {
        "dataset": "LFW (face-zoo embeddings)",
        "split_seed": args.seed,
        "fit_images": int(fit.sum()),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hub = CanonicalSpace(name="lfw-hub").fit({m: emb[m][fit] for m in models}, groups=ids[fit])
    io.save(hub, out / "hub.safetensors", provenance)

    def tar(a_side: np.ndarray, b_side: np.ndarray) -> dict[float, float]:
        return evaluate((a_side @ b_side.T)[iu], labels, FARS).tar

    results: dict[str, list[float]] = {"native": [], "linear": [], "rotation": [], "hub": []}
    print(
        f"\nTAR@FAR=1e-2 (strict convention); A's side mapped into B's space\n{'A -> B':<50} "
        f"{'linear':>7} {'rotation':>8} {'hub':>6}"
    )
    for a in models:
        results["native"].append(tar(_unit(emb[a][ev]), _unit(emb[a][ev]))[1e-2])
        for b in models:
            if a == b:
                continue
            target = _unit(emb[b][ev])
            row = {}
            for kind, cls in (("linear", LinearMap), ("rotation", RotationMap)):
                m = cls(source_id=a, target_id=b).fit(emb[a][fit], emb[b][fit], groups=ids[fit])
                io.save(m, out / f"{a}__{b}.{kind}.safetensors", provenance)
                row[kind] = tar(m.transform(emb[a][ev]), target)[1e-2]
            row["hub"] = tar(hub.translate(emb[a][ev], a, b), target)[1e-2]
            for kind, v in row.items():
                results[kind].append(v)
            print(f"{a + ' -> ' + b:<50} {row['linear']:7.4f} {row['rotation']:8.4f} {row['hub']:6.4f}")

    print(f"\nMean TAR@FAR=1e-2 (strict)   ours (LFW, {len(models)} CNNs)   papers (IJB-C, 10 CNNs)")
    for kind, vals in results.items():
        paper = PAPERS.get(kind)
        print(f"  {kind:<10} {np.mean(vals):27.4f}   {paper if paper else '-':>22}")
    n_files = len(list(out.glob("*.safetensors")))
    print(f"\nmaps written to {out}/ ({n_files} files); {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
