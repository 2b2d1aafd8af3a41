"""Each embedding model on its native runtime, in-process: (n, ...) input -> (n, dim) float32.

Triton's python-backend models (``mapper.triton.backend``) call exactly these, so Triton
and in-process outputs are the same computation.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from mapper.errors import InvalidInput
from mapper.faces.preprocess import check_weights
from mapper.faces.registry import FaceModel

Runtime = Callable[[np.ndarray], np.ndarray]


def load(model: FaceModel, weights_dir: str | os.PathLike[str]) -> Runtime:
    """Load ``model``'s weights (verified by sha256 first) on its runtime."""
    check_weights(model, weights_dir)
    paths = [str(p) for p in model.weight_paths(weights_dir)]
    if model.runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("MAPPER_RUNTIME_THREADS", 0))
        sess = ort.InferenceSession(paths[0], opts, providers=["CPUExecutionProvider"])
        name = model.native_input or sess.get_inputs()[0].name
        output = [model.native_output] if model.native_output else None  # others: age, gender heads

        def run_ort(x: np.ndarray) -> np.ndarray:
            if model.fixed_batch:  # a graph whose batch dimension is fixed at 1
                return (
                    np.concatenate([run_ort_batch(one[None]) for one in x])
                    if len(x)
                    else np.zeros((0, model.dim), np.float32)
                )
            return run_ort_batch(x)

        def run_ort_batch(x: np.ndarray) -> np.ndarray:
            return sess.run(output, {name: x})[0].reshape(len(x), -1).astype(np.float32)

        return run_ort
    if model.runtime == "opencv":
        import cv2

        net = cv2.dnn.readNetFromONNX(paths[0])

        def run_cv(x: np.ndarray) -> np.ndarray:
            # One image at a time: the int8 SFace graph has a fixed batch of 1.
            out = []
            for one in x:
                net.setInput(one[None])
                out.append(net.forward().reshape(-1))
            return np.asarray(out, np.float32)

        return run_cv
    if model.runtime == "openvino":
        import openvino as ov

        core = ov.Core()
        ov_model = core.read_model(paths[0])
        ov_model.reshape([-1, 3, model.input_size, model.input_size])
        compiled = core.compile_model(ov_model, "CPU")
        return lambda x: np.asarray(compiled(x)[0], np.float32).reshape(len(x), -1)
    if model.runtime == "dlib":
        import dlib

        net = dlib.face_recognition_model_v1(paths[0])
        return lambda x: np.asarray(net.compute_face_descriptor(list(x)), np.float32).reshape(len(x), -1)
    raise InvalidInput(f"unknown runtime {model.runtime!r}")
