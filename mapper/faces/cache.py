"""On-disk embedding cache keyed by model and image content (SQLite, one row per image).

Every chunk is committed as it is embedded, so an interrupted run loses at most one chunk
and a rerun embeds only what is missing.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mapper.faces.embed import FaceEmbedder

SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    model TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    failed INTEGER NOT NULL,
    embedding BLOB NOT NULL,
    PRIMARY KEY (model, image_sha256)
)
"""


def content_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EmbeddingCache:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def get(self, model: str, keys: Sequence[str]) -> dict[str, np.ndarray | None]:
        """{key: embedding, or None for an image that failed}; absent keys are not cached."""
        out: dict[str, np.ndarray | None] = {}
        for i in range(0, len(keys), 500):
            chunk = list(keys[i : i + 500])
            rows = self._db.execute(
                f"SELECT image_sha256, failed, embedding FROM embeddings WHERE model = ? "
                f"AND image_sha256 IN ({','.join('?' * len(chunk))})",
                (model, *chunk),
            )
            for key, failed, blob in rows:
                out[key] = None if failed else np.frombuffer(blob, np.float32)
        return out

    def put(self, model: str, keys: Sequence[str], embeddings: np.ndarray, failed: Sequence[int]) -> None:
        bad = set(failed)
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                [
                    (model, k, int(i in bad), np.ascontiguousarray(e, np.float32).tobytes())
                    for i, (k, e) in enumerate(zip(keys, embeddings, strict=True))
                ],
            )


def embed_images(
    embedder: FaceEmbedder,
    paths: Sequence[str | os.PathLike[str]],
    model: str,
    cache: EmbeddingCache,
    *,
    chunk: int = 64,
    progress: bool = True,
    landmarks: np.ndarray | None = None,
    mirror: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """(n, dim) float32 embeddings of image files by ``model`` and the indices that failed,
    embedding only images not in ``cache``. ``landmarks``: optional (n, 15) detections
    (e.g. IJB-C's 5 points), which skip detection. ``mirror``: the faces flipped left-right
    (cached as the view ``<model>+mirror``)."""
    view = f"{model}+mirror" if mirror else model
    keys = [content_key(Path(p).read_bytes()) for p in paths]
    cached = cache.get(view, keys)
    todo = [i for i, k in enumerate(keys) if k not in cached]
    print(f"{view}: {len(paths) - len(todo)} images cached, {len(todo)} to embed", flush=True)
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc=view, unit="img", disable=not progress)
    for start in range(0, len(todo), chunk):
        idx = todo[start : start + chunk]
        given = landmarks[idx] if landmarks is not None else None
        images = [Path(paths[i]).read_bytes() for i in idx]
        result = embedder.embed(images, model, landmarks=given, mirror=mirror)
        cache.put(view, [keys[i] for i in idx], result.embeddings, result.failed)
        for j, i in enumerate(idx):
            cached[keys[i]] = None if j in set(result.failed) else result.embeddings[j]
        bar.update(len(idx))
    bar.close()
    dim = embedder.model(model).dim
    out = np.zeros((len(paths), dim), np.float32)
    failed = []
    for i, k in enumerate(keys):
        e = cached[k]
        if e is None:
            failed.append(i)
        else:
            out[i] = e
    return out, failed
