"""The python-backend model every face model in ``model_repository/`` (and every ImageNet
classifier, ``mapper.classifiers``) runs.

Each ``model_repository/<name>/1/model.py`` imports :class:`TritonPythonModel` from here;
the model name picks the registry entry (``mapper.faces.registry``) and the runtime
(``mapper.faces.runtimes``), so Triton computes exactly what the in-process path computes.
Requests of one dynamic batch are concatenated and run as one batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mapper.classifiers import registry as classifiers
from mapper.classifiers import runtimes as classifier_runtimes
from mapper.datasets.face_zoo import models_dir
from mapper.datasets.imagenet_zoo import imagenet_zoo_dir
from mapper.faces import preprocess, registry, runtimes


def weights_dir(parameters: dict[str, Any]) -> Path:
    """The config parameter ``weights_dir``, else $MAPPER_WEIGHTS_DIR, else <face zoo>/registry."""
    configured = parameters.get("weights_dir", {}).get("string_value", "")
    configured = configured or os.environ.get("MAPPER_WEIGHTS_DIR", "")
    return Path(configured) if configured else models_dir()


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        name = args["model_name"]
        if name in classifiers.BY_NAME:  # an ImageNet classifier: weights from the ImageNet zoo
            self.model = classifiers.get(name)
            zoo = params.get("weights_dir", {}).get("string_value", "") or imagenet_zoo_dir()
            self.run = classifier_runtimes.load(self.model, zoo).embed
            return
        models_file = params.get("models_file", {}).get("string_value", "") or os.environ.get(
            "MAPPER_MODELS_FILE"
        )
        self.model = registry.DETECTOR if name == registry.DETECTOR.name else registry.get(name, models_file)
        directory = weights_dir(params)
        if self.model is registry.DETECTOR:
            detector = preprocess.Detector(directory)
            self.run = lambda x: np.stack([_detect(detector, bytes(item[0])) for item in x])
        else:
            self.run = runtimes.load(self.model, directory)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        inputs = [pb_utils.get_input_tensor_by_name(r, self.model.input_name).as_numpy() for r in requests]
        sizes = np.cumsum([len(x) for x in inputs])[:-1]
        try:
            outputs = np.split(self.run(np.concatenate(inputs)), sizes)
        except Exception as e:  # a bad batch fails its requests, not the server
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.model.name}: {e}"))] * len(
                requests
            )
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(self.model.output_name, out.astype(np.float32))])
            for out in outputs
        ]


def _detect(detector: preprocess.Detector, data: bytes) -> np.ndarray:
    """YuNet's detection of the central face; all zeros (score 0) when none or not an image."""
    img = preprocess.decode(data)
    found = detector(img) if img is not None else None
    return found if found is not None else np.zeros(15, np.float32)
