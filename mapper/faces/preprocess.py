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


def align(bgr: np.ndarray, detection: np.ndarray, model: FaceModel) -> np.ndarray:
    """The face of a (15,) YuNet detection as ``model`` takes it: (size, size, 3) BGR uint8.

    Landmark alignments warp the 5 landmarks onto the model's reference points with a
    similarity transform (rotation, uniform scale, translation) fitted robustly (LMEDS), as
    the face zoo's embeddings were made. ``box`` takes a square of ``crop_scale`` times the
    detection box's longer side around its centre (models trained on loose crops).
    """
    size = model.input_size
    if model.alignment == "box":
        x, y, w, h = (float(v) for v in detection[:4])
        side = model.crop_scale * max(w, h)
        cx, cy, s = x + w / 2, y + h / 2, size / side
        matrix = np.float32([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]])
        return cv2.warpAffine(
            bgr, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
        )
    src = np.asarray(detection[4:14], np.float32).reshape(5, 2)
    matrix, _ = cv2.estimateAffinePartial2D(src, model.reference_points, method=cv2.LMEDS)
    if matrix is None:
        raise InvalidInput("landmarks are degenerate: no similarity transform fits them")
    return cv2.warpAffine(bgr, matrix, (size, size), flags=cv2.INTER_LINEAR)


def to_input(chips: list[np.ndarray], model: FaceModel) -> np.ndarray:
    """Aligned chips -> the network's input batch: (n, *model.input_shape).

    dlib: uint8 RGB. Others: float32 in ``model.channels`` order and ``model.layout``,
    ``(pixel - mean) / std``, or per image ``(x - mean(x)) / max(std(x), 1/sqrt(x.size))``.
    """
    batch = np.stack(chips)
    if model.runtime == "dlib":
        return np.ascontiguousarray(batch)  # DlibAligner already returns RGB
    if model.channels == "RGB":
        batch = batch[..., ::-1]
    x = batch.astype(np.float32)
    if model.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    if model.standardize == "per-image":
        axes = tuple(range(1, x.ndim))
        std = np.maximum(x.std(axis=axes, keepdims=True), 1 / np.sqrt(x[0].size))
        x = (x - x.mean(axis=axes, keepdims=True)) / std
    elif model.mean or model.std != 1:
        x = (x - model.mean) / model.std
    return np.ascontiguousarray(x, dtype=np.float32)
