"""Issue 21's part-2 measurement: maps fitted on identity pairs against maps fitted on the
same number of image pairs, on the LFW protocol of ``mapper-train --full``.

The fitting people's photos (seeded identity split) give identity pairs (each person's
photos split into an old half for A and a new half for B, ``--pairing identity``) and a
seeded sample of as many image pairs; both fit the same kinds for every ordered pair of
the models (default: the four default models); both are evaluated on all pairs of the other people's photos,
one side mapped. Prints mean TAR at FAR 1e-2 / 1e-3 / 1e-4 per kind and the gaps.

    python -m tools.pairing_gap [--models all] [--kinds linear tuned] [--seed 0]
                                [--fit-fraction 0.5] [--people 1.0 ...] [--plot gap.png]

``--fit-fraction`` sets the share of LFW's people on the fitting side (0.5 is
mapper-train's split). ``--people`` fits on seeded shares of those people (nested: each
smaller share is part of the larger), the evaluation people unchanged, so several shares
show how the gap closes as a deployment re-enrols more people; ``--plot`` draws it.

The four default models' embeddings come from the face zoo's ``lfw-embeddings.npz``; any
other model's are embedded in-process (``--backend local``) into mapper-train's cache,
and photos some model finds no face in are left out for all.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mapper.datasets.face_zoo import identity_of, identity_split, lfw_images_dir, load_lfw_embeddings
from mapper.eval.crossmodel import Scored, cross_model_eval, fit_maps
from mapper.eval.pairing import identity_pairs, image_pairs
from mapper.eval.protocols import lfw_all_pairs
from mapper.eval.report import people_plot
from mapper.eval.selection import cohort_rows
from mapper.faces.cache import EmbeddingCache, embed_images
from mapper.faces.registry import BUILTIN, DEFAULT_MODELS
from mapper.triton.embedding import face_embedder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="or 'all' (the ten)")
    ap.add_argument("--cache", default=".cache/embeddings.sqlite", help="embedding cache (mapper-train's)")
    ap.add_argument("--kinds", nargs="+", default=["linear", "tuned"])
    ap.add_argument("--seed", type=int, default=0, help="identity split and samples (mapper-train's default)")
    ap.add_argument("--fit-fraction", type=float, default=0.5, help="share of LFW's people fitted on")
    ap.add_argument(
        "--people",
        type=float,
        nargs="+",
        default=[1.0],
        metavar="SHARE",
        help="shares of the fitting people fitted on",
    )
    ap.add_argument("--plot", type=Path, help="draw TAR against the people fitted on (with several --people)")
    ap.add_argument("--json", help="also write the summaries here")
    args = ap.parse_args()
    names, emb = load_lfw_embeddings()
    models = [m.name for m in BUILTIN] if args.models == ["all"] else args.models
    missing = [m for m in models if m not in emb]
    if missing:
        images = lfw_images_dir()
        with face_embedder("local", models=missing) as embedder:
            cache = EmbeddingCache(args.cache)
            failed: set[int] = set()
            for m in missing:
                emb[m], bad = embed_images(embedder, [images / str(n) for n in names], m, cache)
                failed |= set(bad)
        keep = np.setdiff1d(np.arange(len(names)), sorted(failed))
        print(f"{len(failed)} photos without a face for some model: left out", flush=True)
        names, emb = names[keep], {m: emb[m][keep] for m in models}
    ids = np.array([identity_of(str(n)) for n in names])
    evaluated = ~identity_split(names, args.fit_fraction, args.seed)
    protocol = lfw_all_pairs(names[evaluated], seed=args.seed)
    emb_eval = {m: emb[m][evaluated] for m in models}
    print(f"{evaluated.sum()} evaluation photos of {np.unique(ids[evaluated]).size} people", flush=True)
    order = np.random.default_rng(args.seed).permutation(np.unique(ids[~evaluated]))
    kinds = ("none", *args.kinds, *([Scored.compare("tuned")] if "tuned" in args.kinds else []))
    runs = []
    for share in args.people:
        fit = ~evaluated & np.isin(ids, order[: round(share * order.size)])
        fitting = {m: emb[m][fit].astype(np.float32) for m in models}
        identity = identity_pairs(fitting, ids[fit], seed=args.seed)
        sample = np.sort(np.random.default_rng(args.seed).choice(fit.sum(), len(identity), replace=False))
        image = image_pairs(fitting, ids[fit]).take(sample)
        summary = {}
        for label, pairs in (("image", image), ("identity", identity)):
            t0 = time.perf_counter()
            cohort = cohort_rows(pairs.groups, seed=args.seed)
            maps, _ = fit_maps(pairs, tuple(args.kinds), cohort=cohort)
            res = cross_model_eval(emb_eval, protocol, maps, kinds=kinds, both_ways=pairs.shared_rows)
            summary[label] = res.summary()
            print(f"{len(models)} models, {pairs.describe()}: {time.perf_counter() - t0:.0f} s", flush=True)
        reenrolled = int(np.unique(identity.groups).size)
        print(f"share {share:g} of {order.size} fitting people: {reenrolled} of them re-enrolled (2+ photos)")
        print(f"{'kind':<16}{'image pairs':>27}  {'identity pairs':>27}  {'gap':>24}")
        for kind in summary["image"]:
            a, b = summary["image"][kind], summary["identity"][kind]
            row = [" / ".join(f"{d[f]:.4f}" for f in sorted(d, reverse=True)) for d in (a, b)]
            gap = " / ".join(f"{a[f] - b[f]:.4f}" for f in sorted(a, reverse=True))
            print(f"{kind:<16}{row[0]:>27}  {row[1]:>27}  {gap:>24}", flush=True)
        runs.append({"share": share, "reenrolled": reenrolled, "pairs": len(identity), "summary": summary})
    if args.plot:
        people_plot(runs, str(kinds[-1]), args.plot)
    if args.json:  # json writes the FAR keys as Python prints them: "0.001"
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
