"""LFW View 2 (6,000 pairs, ten folds): each face model natively, and every ordered pair
of models through fitted maps.

Embeds the images named by the pairs through Triton (started here, from model_repository/)
or in-process, caching embeddings on disk, and prints each model's accuracy and AUC beside
those of the face zoo's precomputed in-process embeddings. Then, for each fold, fits
linear and rotation maps on the people who are not in that fold and scores the fold's
pairs with one side mapped (View 2's own protocol for learned methods), and writes a
report of the cross-model accuracies (10-fold) and AUCs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from mapper.core.maps import LinearMap, RotationMap
from mapper.core.validation import l2_normalize
from mapper.datasets.face_zoo import identity_of, lfw_images_dir, lfw_pairs_path, load_lfw_embeddings
from mapper.eval.protocols import PairList, read_lfw_pairs, view2_accuracy
from mapper.eval.report import heatmaps, matrix_table
from mapper.faces.cache import EmbeddingCache, embed_images
from mapper.faces.registry import DEFAULT_MODELS
from mapper.triton.embedding import face_embedder


def _scores(emb: np.ndarray, index: dict[str, int], left: np.ndarray, right: np.ndarray) -> np.ndarray:
    e = l2_normalize(emb)
    return np.einsum("ij,ij->i", e[[index[n] for n in left]], e[[index[n] for n in right]])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mapper.cli.verify_lfw", description=__doc__)
    ap.add_argument("--backend", choices=("triton", "local"), default="triton")
    ap.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    ap.add_argument("--cache", default=".cache/embeddings.sqlite", help="embedding cache file")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    ap.add_argument("--out", default="out/lfw-view2", help="folder for the cross-model report")
    args = ap.parse_args(argv)

    pairs = read_lfw_pairs(lfw_pairs_path())
    names = pairs.images()
    rows, embedded = _native(args, pairs, names)
    print(
        f"\nLFW View 2, 6,000 pairs, {len(names)} images; {args.backend} path vs face-zoo in-process vectors"
    )
    print(
        f"| model | accuracy ({args.backend}) | AUC ({args.backend}) | accuracy (zoo) | AUC (zoo) "
        "| no face | time |"
    )
    print("|---|---|---|---|---|---|---|")
    for model, acc, std, auc, racc, rstd, rauc, nfail, seconds in rows:
        zoo_cells = "- | -" if np.isnan(racc) else f"{racc:.4f} ± {rstd:.4f} | {rauc:.4f}"
        print(f"| {model} | {acc:.4f} ± {std:.4f} | {auc:.4f} | {zoo_cells} | {nfail} | {seconds:.0f} s |")

    cross = cross_model_view2(embedded, names, pairs)
    models = list(embedded)
    out = _write_report(Path(args.out), args.backend, models, rows, cross)
    off = ~np.eye(len(models), dtype=bool)
    for kind in cross["accuracy"]:
        print(
            f"cross-model {kind}: mean accuracy {cross['accuracy'][kind][off].mean():.4f}, "
            f"mean AUC {cross['auc'][kind][off].mean():.4f}"
        )
    print(f"report: {out}")


def _native(
    args: argparse.Namespace, pairs: PairList, names: list[str]
) -> tuple[list[tuple], dict[str, np.ndarray]]:
    """Each model's View 2 accuracy and AUC through ``args.backend``, beside the face zoo's
    own vectors where it ships them: (table rows, {model: (n_images, d) embeddings})."""
    index = {n: i for i, n in enumerate(names)}
    images = lfw_images_dir()
    paths = [images / n for n in names]
    zoo_names, zoo_emb = load_lfw_embeddings()
    zoo_index = {str(n): i for i, n in enumerate(zoo_names)}
    rows, embedded = [], {}
    with face_embedder(args.backend, models=args.models) as embedder:
        cache = EmbeddingCache(args.cache)
        for model in args.models:
            t0 = time.perf_counter()
            emb, failed = embed_images(embedder, paths, model, cache, progress=args.progress)
            embedded[model] = emb
            scores = _scores(emb, index, pairs.left, pairs.right)
            acc, std = view2_accuracy(scores, pairs)
            ref_acc = ref_std = ref_auc = float("nan")  # the face zoo ships vectors of four models
            if model in zoo_emb:
                ref = _scores(zoo_emb[model], zoo_index, pairs.left, pairs.right)
                (ref_acc, ref_std), ref_auc = view2_accuracy(ref, pairs), roc_auc_score(pairs.same, ref)
            auc = roc_auc_score(pairs.same, scores)
            rows.append(
                (model, acc, std, auc, ref_acc, ref_std, ref_auc, len(failed), time.perf_counter() - t0)
            )
    return rows, embedded


def _write_report(
    out: Path, backend: str, models: list[str], rows: list[tuple], cross: dict[str, dict[str, np.ndarray]]
) -> Path:
    """report.md with heatmaps and results.json in ``out``; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        "# LFW View 2 across models",
        f"6,000 pairs in ten folds, images embedded through the {backend} path. Cross-model: for each "
        "fold, maps fitted on the people not in that fold; row A's image mapped into column B's space, the "
        "other image embedded by B. Accuracy: mean over folds, threshold chosen on the other nine folds. "
        "The diagonal is native verification.",
    ]
    off = ~np.eye(len(models), dtype=bool)
    for metric, label in (("accuracy", "10-fold accuracy"), ("auc", "AUC")):
        heatmaps(
            models,
            cross[metric],
            out / f"{metric}.png",
            label=label,
            vmin=0.5,
            title=f"LFW View 2, {label}; diagonal = native",
        )
        parts.append(f"## {label}\n\n![{label}]({metric}.png)")
        for kind, matrix in cross[metric].items():
            parts.append(
                f"**{kind}** (mean off-diagonal {matrix[off].mean():.4f})\n\n" + matrix_table(models, matrix)
            )
    (out / "report.md").write_text("\n\n".join(parts) + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "native": [dict(zip(("model", "accuracy", "std", "auc"), r[:4], strict=True)) for r in rows],
                **{metric: {k: v.tolist() for k, v in d.items()} for metric, d in cross.items()},
                "models": models,
            },
            indent=1,
        )
    )
    return out / "report.md"


def cross_model_view2(
    embedded: dict[str, np.ndarray],
    names: list[str],
    pairs: PairList,
    kinds: tuple[str, ...] = ("linear", "rotation"),
) -> dict[str, dict[str, np.ndarray]]:
    """{"accuracy"|"auc": {kind: (K, K)}}: row A's image mapped into column B's space, the
    other image of the pair embedded by B; maps fitted per fold on the other folds' people."""
    models = list(embedded)
    index = {n: i for i, n in enumerate(names)}
    ids = np.array([identity_of(n) for n in names])
    left = np.array([index[n] for n in pairs.left])
    right = np.array([index[n] for n in pairs.right])
    k = len(models)
    scores = {(a, b, kind): np.zeros(len(left)) for a in models for b in models for kind in kinds}
    unit = {m: l2_normalize(e) for m, e in embedded.items()}
    for fold in np.unique(pairs.fold):
        in_fold = pairs.fold == fold
        li, ri = left[in_fold], right[in_fold]
        fit = ~np.isin(ids, list(set(ids[li]) | set(ids[ri])))
        for a in models:
            for b in models:
                for kind in kinds:
                    if a == b:
                        side = unit[a][li]
                    else:
                        m = (LinearMap if kind == "linear" else RotationMap)()
                        side = m.fit(embedded[a][fit], embedded[b][fit], groups=ids[fit]).transform(
                            embedded[a][li]
                        )
                    scores[a, b, kind][in_fold] = np.einsum("ij,ij->i", side, unit[b][ri])
    out: dict[str, dict[str, np.ndarray]] = {"accuracy": {}, "auc": {}}
    for kind in kinds:
        acc, auc = np.zeros((k, k)), np.zeros((k, k))
        for i, a in enumerate(models):
            for j, b in enumerate(models):
                acc[i, j] = view2_accuracy(scores[a, b, kind], pairs)[0]
                auc[i, j] = roc_auc_score(pairs.same, scores[a, b, kind])
        out["accuracy"][kind], out["auc"][kind] = acc, auc
    return out


if __name__ == "__main__":
    main()
