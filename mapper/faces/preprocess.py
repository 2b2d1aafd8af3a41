"""Decoding, detection (YuNet) and per-model alignment and input preparation.

The same functions run in the client before Triton, in the in-process reference path and
in tests, so every path feeds each network identical tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from mapper.errors import InvalidInput, WeightsError
from mapper.faces.registry import DETECTOR, FaceModel


def check_weights(model: FaceModel, weights_dir: str | os.PathLike[str]) -> None:
    problems = model.verify(weights_dir)
    if problems:
        raise WeightsError(f"model {model.name!r} cannot load: " + "; ".join(problems))


def decode(data: bytes) -> np.ndarray | None:
    """Encoded image bytes -> BGR uint8 (h, w, 3), or None when it is not an image."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    return img


class Detector:
    """YuNet in-process: the face nearest the image centre, as (15,) float32
    [x, y, w, h, 5 x (lx, ly), score], or None when there is no face."""

    def __init__(self, weights_dir: str | os.PathLike[str], score_threshold: float = 0.6) -> None:
        check_weights(DETECTOR, weights_dir)
        self._net = cv2.FaceDetectorYN.create(
            str(DETECTOR.weight_paths(weights_dir)[0]), "", (320, 320), score_threshold
        )

    def __call__(self, bgr: np.ndarray) -> np.ndarray | None:
        h, w = bgr.shape[:2]
        self._net.setInputSize((w, h))
        _, faces = self._net.detect(bgr)
        if faces is None or len(faces) == 0:
            return None
        centres = faces[:, :2] + faces[:, 2:4] / 2
        best = int(np.argmin(((centres - (w / 2, h / 2)) ** 2).sum(axis=1)))
        return faces[best, :15].astype(np.float32)


@dataclass
class DlibAligner:
    """dlib's own alignment: its 5-point shape predictor inside the detected box, then
    ``get_face_chip`` (150x150, padding 0.25), as dlib's ResNet expects."""

    shape_predictor_path: str

    def __post_init__(self) -> None:
        import dlib

        self._dlib = dlib
        self._predictor = dlib.shape_predictor(self.shape_predictor_path)

    @classmethod
    def for_model(cls, model: FaceModel, weights_dir: str | os.PathLike[str]) -> DlibAligner:
        """The aligner of a dlib-aligned model: its shape predictor is one of its weight files."""
        check_weights(model, weights_dir)
        found = [p for p in model.weight_paths(weights_dir) if p.name.startswith("shape_predictor")]
        if not found:
            raise WeightsError(f"model {model.name!r} is dlib-aligned but lists no shape_predictor*.dat file")
        return cls(str(found[0]))

    def __call__(self, bgr: np.ndarray, detection: np.ndarray) -> np.ndarray:
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        x, y, w, h = (int(v) for v in np.rint(detection[:4]))
        shape = self._predictor(rgb, self._dlib.rectangle(x, y, x + w, y + h))
        return np.asarray(self._dlib.get_face_chip(rgb, shape, size=150, padding=0.25))


def align(bgr: np.ndarray, landmarks: np.ndarray, model: FaceModel) -> np.ndarray:
    """Warp a face onto ``model``'s reference points: (size, size, 3) BGR uint8 chip.

    A similarity transform (rotation, uniform scale, translation) fitted robustly (LMEDS)
    from the 5 landmarks, as the face zoo's embeddings were made.
    """
    src = np.asarray(landmarks, np.float32).reshape(5, 2)
    matrix, _ = cv2.estimateAffinePartial2D(src, model.reference_points, method=cv2.LMEDS)
    if matrix is None:
        raise InvalidInput("landmarks are degenerate: no similarity transform fits them")
    return cv2.warpAffine(bgr, matrix, (model.input_size, model.input_size), flags=cv2.INTER_LINEAR)


def to_input(chips: list[np.ndarray], model: FaceModel) -> np.ndarray:
    """Aligned chips -> the network's input batch.

    dlib: (n, 150, 150, 3) uint8 RGB. Others: (n, 3, s, s) float32 in ``model.channels``
    order, ``(pixel - mean) / std``.
    """
    batch = np.stack(chips)
    if model.runtime == "dlib":
        return np.ascontiguousarray(batch)  # DlibAligner already returns RGB
    if model.channels == "RGB":
        batch = batch[..., ::-1]
    x = batch.astype(np.float32).transpose(0, 3, 1, 2)
    if model.mean or model.std != 1:
        x = (x - model.mean) / model.std
    return np.ascontiguousarray(x, dtype=np.float32)
