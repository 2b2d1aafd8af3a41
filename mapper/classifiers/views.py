"""Each classifier's input, and the augmented views that multiply the fitting inputs.

A map is fitted on pairs of embeddings of the same input by two networks; labels are not
needed. So each training photo can give several inputs: crops at other scales and places,
mirror images, brighter and darker copies. Views are named and fixed, so embeddings cache
by (photo, view), and ``VIEWS[:k]`` is the same set on every run.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from mapper.classifiers.registry import Classifier


@dataclass(frozen=True)
class View:
    name: str
    scale: float = 1.0  # the crop's side / the stored photo's side
    dx: float = 0.0  # the crop's place in the free margin: -1 left/top, 0 centre, 1 right/bottom
    dy: float = 0.0
    flip: bool = False
    brightness: float = 1.0


#: The evaluation view first: the stored photo as it is (already ImageNet's central 87.5% crop).
VIEWS: tuple[View, ...] = (
    View("photo"),
    View("flip", flip=True),
    View("crop80", 0.8),
    View("crop80-tl-flip", 0.8, -1, -1, flip=True),
    View("crop80-br", 0.8, 1, 1),
    View("crop65-tr", 0.65, 1, -1),
    View("crop65-bl-flip", 0.65, -1, 1, flip=True),
    View("dark-flip", flip=True, brightness=0.7),
    View("bright-crop90", 0.9, brightness=1.3),
    View("crop50", 0.5),
)
BY_NAME = {v.name: v for v in VIEWS}


def render(image: Image.Image, model: Classifier, view: View = VIEWS[0]) -> np.ndarray:
    """``image`` seen through ``view``, resized for ``model``: (S, S, 3) uint8 RGB."""
    image = image.convert("RGB")
    w, h = image.size
    side = round(min(w, h) * view.scale)
    left = round((w - side) * (1 + view.dx) / 2)
    top = round((h - side) * (1 + view.dy) / 2)
    image = image.crop((left, top, left + side, top + side))
    if view.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if view.brightness != 1.0:
        image = ImageEnhance.Brightness(image).enhance(view.brightness)
    resample = Image.Resampling[model.resample.upper()]
    return np.asarray(image.resize((model.input_size, model.input_size), resample), np.uint8)


def load(source: str | os.PathLike[str] | bytes, model: Classifier, view: View = VIEWS[0]) -> np.ndarray:
    """A photo file (or its bytes) as ``model``'s input: (S, S, 3) uint8 RGB."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return render(image, model, view)
