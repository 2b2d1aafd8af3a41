"""LFW View 2 verification of each face model: accuracy (10-fold) and AUC on the 6,000 pairs.

Embeds the images named by the pairs through Triton (started here, from model_repository/)
or in-process, caching embeddings on disk, and prints each model's figures beside those
of the face zoo's precomputed in-process embeddings.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from .cache import EmbeddingCache, embed_images
from .embed import FaceEmbedder, LocalBackend, TritonBackend
from .models import BUILTIN
from .protocols import read_lfw_pairs, view2_accuracy
from .triton import TritonServer
from .triton_client import TritonClient
from .zoo import face_zoo_dir, load_lfw_embeddings

ROOT = Path(__file__).resolve().parents[1]


def _scores(emb: np.ndarray, index: dict[str, int], left: np.ndarray, right: np.ndarray) -> np.ndarray:
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", e[[index[n] for n in left]], e[[index[n] for n in right]])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mapper.verify_lfw", description=__doc__)
    ap.add_argument("--backend", choices=("triton", "local"), default="triton")
    ap.add_argument("--models", nargs="*", default=[m.name for m in BUILTIN])
    ap.add_argument(
        "--cache", default=str(ROOT / ".cache" / "embeddings.sqlite"), help="embedding cache file"
    )
    args = ap.parse_args(argv)

    zoo = face_zoo_dir()
    pairs = read_lfw_pairs(zoo / "lfw" / "pairs.csv")
    names = pairs.images()
    index = {n: i for i, n in enumerate(names)}
    paths = [zoo / "lfw" / "images" / n for n in names]
    zoo_names, zoo_emb = load_lfw_embeddings()
    zoo_index = {str(n): i for i, n in enumerate(zoo_names)}
    rows = []
    with ExitStack() as stack:
        if args.backend == "triton":
            server = stack.enter_context(
                TritonServer(ROOT / "model_repository", models=[*args.models, "yunet-2023mar-int8bq"])
            )
            client = stack.enter_context(TritonClient(server.url, concurrency=4, batch_size=16))
            embedder = FaceEmbedder(TritonBackend(client))
        else:
            embedder = FaceEmbedder(LocalBackend(zoo / "models"))
        cache = EmbeddingCache(args.cache)
        for model in args.models:
            t0 = time.perf_counter()
            emb, failed = embed_images(embedder, paths, model, cache)
            scores = _scores(emb, index, pairs.left, pairs.right)
            acc, std = view2_accuracy(scores, pairs)
            ref = _scores(zoo_emb[model], zoo_index, pairs.left, pairs.right)
            ref_acc, ref_std = view2_accuracy(ref, pairs)
            rows.append(
                (
                    model,
                    acc,
                    std,
                    roc_auc_score(pairs.same, scores),
                    ref_acc,
                    ref_std,
                    roc_auc_score(pairs.same, ref),
                    len(failed),
                    time.perf_counter() - t0,
                )
            )
    print(
        f"\nLFW View 2, 6,000 pairs, {len(names)} images; {args.backend} path vs face-zoo in-process vectors"
    )
    print(
        f"| model | accuracy ({args.backend}) | AUC ({args.backend}) | accuracy (zoo) | AUC (zoo) | no face |"
    )
    print("|---|---|---|---|---|---|")
    for model, acc, std, auc, racc, rstd, rauc, nfail, _ in rows:
        print(
            f"| {model} | {acc:.4f} ± {std:.4f} | {auc:.4f} "
            f"| {racc:.4f} ± {rstd:.4f} | {rauc:.4f} | {nfail} |"
        )


if __name__ == "__main__":
    main()
