"""Embedding API: encoded images and a model id in, embeddings out.

Detection (YuNet) and the model run in-process (``LocalBackend``, the reference path) or
on Triton (``mapper.triton.embedding.TritonBackend``); alignment and input preparation are the same code
(``mapper.faces``) on both. Images without a face are reported, not fatal.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from mapper.datasets.face_zoo import models_dir
from mapper.faces import preprocess, registry, runtimes


class Backend(Protocol):
    def detect(self, images: Sequence[bytes]) -> np.ndarray: ...  # (n, 15), score 0 = no face
    def run(self, model: registry.FaceModel, x: np.ndarray) -> np.ndarray: ...


class LocalBackend:
    """Every model on its runtime in this process."""

    def __init__(self, weights_dir: str | os.PathLike[str]) -> None:
        self.weights_dir = Path(weights_dir)
        self._detector: preprocess.Detector | None = None
        self._runtimes: dict[str, runtimes.Runtime] = {}

    def detect(self, images: Sequence[bytes]) -> np.ndarray:
        if self._detector is None:
            self._detector = preprocess.Detector(self.weights_dir)
        out = np.zeros((len(images), 15), np.float32)
        for i, data in enumerate(images):
            img = preprocess.decode(data)
            found = self._detector(img) if img is not None else None
            if found is not None:
                out[i] = found
        return out

    def run(self, model: registry.FaceModel, x: np.ndarray) -> np.ndarray:
        if model.name not in self._runtimes:
            self._runtimes[model.name] = runtimes.load(model, self.weights_dir)
        return self._runtimes[model.name](x)


@dataclass
class EmbedResult:
    embeddings: np.ndarray  # (n, dim) float32 raw embeddings; rows of failed images are zero
    failed: list[int]  # indices of images that could not be decoded or had no face
    detections: np.ndarray  # (n, 15) YuNet detections used (given landmarks are copied in)


class FaceEmbedder:
    """``FaceEmbedder(backend).embed(images, "sface-2021dec-int8bq")``; build one with
    :func:`mapper.triton.embedding.face_embedder`.

    ``weights_dir`` is needed on this side only for dlib's shape predictor (its alignment).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        weights_dir: str | os.PathLike[str] | None = None,
        models_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.backend = backend
        self.weights_dir = Path(weights_dir) if weights_dir else models_dir()
        self.registry = registry.load(models_file)
        self._dlib_aligner: preprocess.DlibAligner | None = None
        # Detections by image content: embedding one image with several models detects once.
        self._detections: dict[str, np.ndarray] = {}

    def model(self, name: str) -> registry.FaceModel:
        if name not in self.registry:
            raise registry.UnknownModelError(f"unknown face model {name!r}; known: {sorted(self.registry)}")
        return self.registry[name]

    def chips(self, images: Sequence[bytes], model: registry.FaceModel, detections: np.ndarray) -> list:
        """Aligned chips, None where the image has no face or cannot be decoded."""
        out = []
        for data, det in zip(images, detections, strict=True):
            img = preprocess.decode(data) if det[14] > 0 else None
            if img is None:
                out.append(None)
            elif model.alignment == "dlib":
                if self._dlib_aligner is None:
                    self._dlib_aligner = preprocess.DlibAligner.for_model(model, self.weights_dir)
                out.append(self._dlib_aligner(img, det))
            else:
                out.append(preprocess.align(img, det, model))
        return out

    def detect(self, images: Sequence[bytes]) -> np.ndarray:
        """(n, 15) detections, remembered by image content (up to 200,000 images)."""
        keys = [hashlib.sha256(b).hexdigest() for b in images]
        todo = [i for i, k in enumerate(keys) if k not in self._detections]
        if todo:
            found = self.backend.detect([images[i] for i in todo])
            if len(self._detections) > 200_000:
                self._detections.clear()
            self._detections.update({keys[i]: d for i, d in zip(todo, found, strict=True)})
        return np.stack([self._detections[k] for k in keys]) if keys else np.zeros((0, 15), np.float32)

    def embed(
        self,
        images: Sequence[bytes],
        model: str,
        landmarks: np.ndarray | None = None,
        *,
        mirror: bool = False,
    ) -> EmbedResult:
        """Embed encoded images with ``model``.

        landmarks: optional (n, 15) detections ([box 4, 5 landmarks x/y, score], e.g. from
        IJB-C's ijbc_name_5pts_score.txt with a box around them): detection is skipped.
        mirror: embed each aligned face flipped left-right (a second view of the same
        image, for more fitting pairs).
        """
        m = self.model(model)
        if landmarks is not None:
            detections = np.asarray(landmarks, np.float32).reshape(len(images), 15)
        else:
            detections = self.detect(images)
        chips = self.chips(images, m, detections)
        if mirror:  # chips are (h, w, 3) and aligned about the face's vertical midline
            chips = [None if c is None else np.ascontiguousarray(c[:, ::-1]) for c in chips]
        ok = [i for i, c in enumerate(chips) if c is not None]
        emb = np.zeros((len(images), m.dim), np.float32)
        if ok:
            emb[ok] = self.backend.run(m, preprocess.to_input([chips[i] for i in ok], m))
        failed = [i for i, c in enumerate(chips) if c is None]
        return EmbedResult(emb, failed, detections)
