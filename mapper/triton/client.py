"""A tritonclient gRPC client for the face models: batching, concurrency, deadlines, retries."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from mapper.errors import EmbeddingError, InvalidInput, TritonModelError, TritonUnavailableError

RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")
T = TypeVar("T")


class TritonClient:
    """``infer(model, input_name, output_name, x)`` on (n, ...) arrays of any n.

    Splits ``x`` into chunks of ``batch_size`` rows (at most the model's
    ``max_batch_size``, read from Triton once per model), sends up to ``concurrency`` at once
    (Triton's dynamic batcher merges them), gives each call ``timeout`` seconds and retries
    UNAVAILABLE answers ``retries`` times with exponential backoff.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        retries: int = 2,
        concurrency: int = 4,
        batch_size: int = 16,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.batch_size = batch_size
        self._client = tc.InferenceServerClient(url)
        self._pool = ThreadPoolExecutor(max_workers=concurrency)
        self._max_batch: dict[str, int] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _with_retries(self, model: str, call: Callable[[], T]) -> T:
        """Run one Triton call with the deadline and retry policy; map errors to ours."""
        for attempt in range(self.retries + 1):
            try:
                return call()
            except InferenceServerException as e:
                status = str(e.status())
                if status == "StatusCode.DEADLINE_EXCEEDED":
                    raise TritonUnavailableError(
                        f"Triton at {self.url} did not answer {model!r} within {self.timeout:.0f} s"
                    ) from e
                if status in RETRYABLE and attempt < self.retries:
                    time.sleep(0.2 * 2**attempt)
                    continue
                if status in RETRYABLE:
                    raise TritonUnavailableError(f"Triton at {self.url} is unavailable: {e.message()}") from e
                if status == "StatusCode.INVALID_ARGUMENT":
                    raise EmbeddingError(f"{model}: Triton refused the input: {e.message()}") from e
                raise TritonModelError(f"{model}: {e.message()}") from e
        raise AssertionError("unreachable")

    def _model_max_batch(self, model: str) -> int:
        if model not in self._max_batch:
            config = self._with_retries(
                model, lambda: self._client.get_model_config(model, client_timeout=self.timeout).config
            )
            self._max_batch[model] = config.max_batch_size or self.batch_size
        return self._max_batch[model]

    def _call(self, model: str, input_name: str, output_name: str, x: np.ndarray) -> np.ndarray:
        dtype = "BYTES" if x.dtype == object else np_to_triton_dtype(x.dtype)
        inp = tc.InferInput(input_name, list(x.shape), dtype)
        inp.set_data_from_numpy(x)
        out = tc.InferRequestedOutput(output_name)
        result = self._with_retries(
            model, lambda: self._client.infer(model, [inp], outputs=[out], client_timeout=self.timeout)
        )
        return result.as_numpy(output_name)

    def infer(self, model: str, input_name: str, output_name: str, x: np.ndarray) -> np.ndarray:
        """(n, ...) -> (n, ...) through ``model``, in order."""
        if len(x) == 0:
            raise InvalidInput("nothing to infer: empty batch")
        size = min(self.batch_size, self._model_max_batch(model))
        chunks = [x[i : i + size] for i in range(0, len(x), size)]
        futures = [self._pool.submit(self._call, model, input_name, output_name, c) for c in chunks]
        return np.concatenate([f.result() for f in futures])
