"""The one way to build a :class:`~mapper.faces.embed.FaceEmbedder` (and the classifiers'
:data:`~mapper.classifiers.embed.Embed`): in-process, through a running Triton, or through
a Triton started here for the models asked for."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import numpy as np

from mapper.classifiers.embed import Embed, LocalEmbed
from mapper.classifiers.registry import Classifier
from mapper.datasets.face_zoo import models_dir
from mapper.datasets.imagenet_zoo import imagenet_zoo_dir
from mapper.errors import InvalidInput
from mapper.faces.embed import FaceEmbedder, LocalBackend
from mapper.faces.registry import DETECTOR, FaceModel
from mapper.triton.client import TritonClient
from mapper.triton.server import TritonServer


class TritonBackend:
    """Detection and embedding models served by Triton."""

    def __init__(self, client: TritonClient) -> None:
        self.client = client

    def detect(self, images: Sequence[bytes]) -> np.ndarray:
        batch = np.array([[bytes(b)] for b in images], dtype=object)
        return self.client.infer(DETECTOR.name, DETECTOR.input_name, DETECTOR.output_name, batch)

    def run(self, model: FaceModel, x: np.ndarray) -> np.ndarray:
        return self.client.infer(model.name, model.input_name, model.output_name, x)


@contextmanager
def face_embedder(
    backend: str = "triton",
    *,
    triton_url: str | None = None,
    models: Sequence[str] | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
    models_file: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
    concurrency: int = 4,
    batch_size: int = 16,
    log: Callable[[str], None] | None = None,
) -> Iterator[FaceEmbedder]:
    """A FaceEmbedder for the block's duration.

    ``backend="local"`` runs every model in this process. ``"triton"`` uses the Triton at
    ``triton_url``, or, without one, starts a private ``tritonserver`` serving ``models``
    (and the detector) from a repository generated from the registry, stopped on exit.
    """
    weights = weights_dir or models_dir()
    with ExitStack() as stack:
        if backend == "local":
            yield FaceEmbedder(LocalBackend(weights), weights_dir=weights, models_file=models_file)
            return
        if backend != "triton":
            raise InvalidInput(f"backend must be 'triton' or 'local', got {backend!r}")
        if not triton_url:
            if log is not None:
                log(f"starting Triton with {len(models or [])} models ...")
            chosen = [*models, DETECTOR.name] if models is not None else None
            triton_url = stack.enter_context(TritonServer(models=chosen, weights_dir=weights)).url
        client = stack.enter_context(
            TritonClient(triton_url, timeout=timeout, concurrency=concurrency, batch_size=batch_size)
        )
        yield FaceEmbedder(TritonBackend(client), weights_dir=weights, models_file=models_file)


@contextmanager
def classifier_embed(
    backend: str = "triton",
    *,
    models: Sequence[str],
    triton_url: str | None = None,
    zoo_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[Embed]:
    """An :data:`Embed` for ImageNet classifiers for the block's duration: in-process
    (``"local"``) or through Triton. Without ``triton_url`` a private ``tritonserver``
    serving ``models`` starts on the first call, so a run whose embeddings are all cached
    starts nothing."""
    if backend == "local":
        yield LocalEmbed(zoo_dir or imagenet_zoo_dir())
        return
    if backend != "triton":
        raise InvalidInput(f"backend must be 'triton' or 'local', got {backend!r}")
    with ExitStack() as stack:
        clients: list[TritonClient] = []

        def embed(model: Classifier, x: np.ndarray) -> np.ndarray:
            if not clients:
                url = triton_url
                if not url:
                    if log is not None:
                        log(f"starting Triton with {len(models)} classifiers ...")
                    url = stack.enter_context(TritonServer(models=list(models))).url
                clients.append(stack.enter_context(TritonClient(url, timeout=300.0, batch_size=32)))
            return clients[0].infer(model.name, model.input_name, model.output_name, x)

        yield embed
