"""Face CNNs on a real Triton server: equal to in-process, accurate on LFW, and failing
clearly when Triton is down or weights are bad."""

from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mapper.datasets.face_zoo import identity_of
from mapper.eval.protocols import read_lfw_pairs, view2_accuracy
from mapper.faces import registry
from mapper.faces.embed import FaceEmbedder, LocalBackend
from mapper.faces.preprocess import WeightsError
from mapper.faces.runtimes import load
from mapper.triton.client import TritonClient, TritonUnavailableError
from mapper.triton.embedding import TritonBackend
from mapper.triton.server import TritonServer, TritonStartError, free_port

EMBEDDERS = [m.name for m in registry.BUILTIN]


@pytest.fixture(scope="module")
def lfw_images(face_zoo):
    pairs = read_lfw_pairs(face_zoo / "lfw" / "pairs.csv")
    # 60 same + 60 different pairs of fold 0, and every image they name.
    pick = np.r_[0:60, 300:360]
    names = sorted(set(pairs.left[pick]) | set(pairs.right[pick]))
    data = {n: (face_zoo / "lfw" / "images" / n).read_bytes() for n in names}
    return pairs, pick, names, data


def embed_through_triton(triton, images: list[bytes]) -> dict:
    with TritonClient(triton.url) as client:
        remote = FaceEmbedder(TritonBackend(client))
        return {m: remote.embed(images, m) for m in EMBEDDERS}


#: Photos both paths embed for the equality test: enough to cover several faces, poses and
#: crops per model, few enough that ten models cost about 10 s (dlib takes 0.1 s a photo).
EQUALITY_PHOTOS = 16


@pytest.fixture(scope="module")
def both_paths(triton, face_zoo, lfw_images):
    """{model: (through Triton, in-process)} embeddings of the first EQUALITY_PHOTOS photos."""
    _, _, names, data = lfw_images
    images = [data[n] for n in names[:EQUALITY_PHOTOS]]
    local = FaceEmbedder(LocalBackend(face_zoo / "models"))
    remote = embed_through_triton(triton, images)
    return {m: (remote[m], local.embed(images, m)) for m in EMBEDDERS}


@pytest.mark.parametrize("model", EMBEDDERS)
def test_triton_equals_in_process(both_paths, model):
    remote, local = both_paths[model]
    assert remote.failed == local.failed == []
    assert len(local.embeddings) == EQUALITY_PHOTOS
    # One OpenCV YuNet in two processes (thread counts differ): pixels within 1e-3.
    np.testing.assert_allclose(remote.detections, local.detections, rtol=0, atol=1e-3)
    scale = np.abs(local.embeddings).max()
    assert np.abs(remote.embeddings - local.embeddings).max() <= 1e-5 * scale


@pytest.fixture(scope="module")
def embedded(triton, lfw_images):
    """{model: Triton's embeddings of every photo of the 120 pairs} (about 60 s for ten models)."""
    _, _, names, data = lfw_images
    return embed_through_triton(triton, [data[n] for n in names])


@pytest.mark.slow
@pytest.mark.parametrize("model", EMBEDDERS)
def test_lfw_accuracy_through_triton(embedded, lfw_images, lfw_embeddings, model):
    """On 120 View-2 pairs: far above chance and as good as the face zoo's in-process vectors."""
    pairs, pick, names, _ = lfw_images
    index = {n: i for i, n in enumerate(names)}
    emb = embedded[model].embeddings
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    li, ri = [index[n] for n in pairs.left[pick]], [index[n] for n in pairs.right[pick]]
    scores = np.einsum("ij,ij->i", emb[li], emb[ri])
    same = pairs.same[pick]
    auc = roc_auc_score(same, scores)
    if model not in lfw_embeddings:  # the six added models: the face zoo ships no vectors
        # Fold-0 AUCs in-process (docs/guides/triton.md): mobileface 0.93, hse-deep 0.97, the others 0.99+.
        assert auc > {"becauseofai-mobileface": 0.88, "hse-faceres-deep": 0.93}.get(model, 0.97), auc
        return
    zoo_index = {n: i for i, n in enumerate(lfw_embeddings["names"])}
    ref = lfw_embeddings[model]
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    ref_scores = np.einsum(
        "ij,ij->i",
        ref[[zoo_index[n] for n in pairs.left[pick]]],
        ref[[zoo_index[n] for n in pairs.right[pick]]],
    )
    ref_auc = roc_auc_score(same, ref_scores)
    assert auc > 0.97
    assert abs(auc - ref_auc) < 0.02, (auc, ref_auc)


@pytest.mark.parametrize(
    "model", [m.name for m in registry.BUILTIN if m.fixed_batch and m.runtime == "onnxruntime"]
)
def test_a_batch_of_1_model_answers_a_batch_of_5(triton, model):
    """Graphs with their batch fixed at 1 (FaceNet 20180408, faceplugin): Triton's dynamic
    batcher still hands the backend several images; each row is its own image's embedding."""
    m = registry.get(model)
    x = np.stack([np.random.default_rng(i).uniform(-1, 1, m.input_shape) for i in range(5)])
    with TritonClient(triton.url, batch_size=5) as client:
        together = client.infer(m.name, m.input_name, m.output_name, x.astype(np.float32))
        alone = np.concatenate(
            [
                client.infer(m.name, m.input_name, m.output_name, x[i : i + 1].astype(np.float32))
                for i in range(5)
            ]
        )
    assert together.shape == (5, m.dim)
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5 * np.abs(alone).max())
    assert not np.allclose(together[0], together[1])


def test_view2_accuracy_protocol_on_precomputed_embeddings(face_zoo, lfw_embeddings):
    pairs = read_lfw_pairs(face_zoo / "lfw" / "pairs.csv")
    assert len(pairs.same) == 6000 and pairs.same.sum() == 3000 and len(np.unique(pairs.fold)) == 10
    assert all(
        identity_of(a) == identity_of(b)
        for a, b, s in zip(pairs.left, pairs.right, pairs.same, strict=True)
        if s
    )
    index = {n: i for i, n in enumerate(lfw_embeddings["names"])}
    emb = lfw_embeddings["mobilefacenet-arcface"]
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    scores = np.einsum("ij,ij->i", emb[[index[n] for n in pairs.left]], emb[[index[n] for n in pairs.right]])
    mean, std = view2_accuracy(scores, pairs)
    assert 0.97 < mean <= 1.0 and std < 0.03
    shuffled = view2_accuracy(np.random.default_rng(0).permutation(scores), pairs)[0]
    assert shuffled < 0.56  # chance


def test_images_without_a_face_are_reported(triton):
    import cv2

    blank = cv2.imencode(".png", np.full((120, 120, 3), 127, np.uint8))[1].tobytes()
    with TritonClient(triton.url) as client:
        result = FaceEmbedder(TritonBackend(client)).embed([blank, b"not an image"], "mobilefacenet-arcface")
    assert result.failed == [0, 1]
    assert not result.embeddings.any()


def test_model_errors_are_in_the_error_family(triton):
    """Embed's callers get a status, not INTERNAL: a model Triton does not serve is
    FAILED_PRECONDITION, a tensor of the wrong shape is the caller's INVALID_ARGUMENT."""
    import grpc

    from mapper.errors import EmbeddingError, TritonModelError
    from mapper_service.interceptors import status_for

    with TritonClient(triton.url, retries=0) as client:
        with pytest.raises(TritonModelError, match="no-such-model") as missing:
            client.infer("no-such-model", "faces", "embeddings", np.zeros((1, 3, 112, 112), np.float32))
        with pytest.raises(EmbeddingError, match="refused the input") as shape:
            client.infer("mobilefacenet-arcface", "faces", "embeddings", np.zeros((1, 3, 7, 7), np.float32))
    assert status_for(missing.value) is grpc.StatusCode.FAILED_PRECONDITION
    assert status_for(shape.value) is grpc.StatusCode.INVALID_ARGUMENT


def test_unreachable_triton_is_a_clear_error_within_the_deadline():
    with TritonClient(f"127.0.0.1:{free_port()}", timeout=3, retries=1) as client:
        t0 = time.monotonic()
        with pytest.raises(TritonUnavailableError, match="unavailable"):
            client.infer(
                "mobilefacenet-arcface", "faces", "embeddings", np.zeros((1, 3, 112, 112), np.float32)
            )
        assert time.monotonic() - t0 < 5


def test_triton_killed_mid_call(face_zoo, tmp_path):
    server = TritonServer(
        "model_repository", models=["dlib-resnet-v1"], weights_dir=face_zoo / "models"
    ).start()
    chips = np.zeros((64, 150, 150, 3), np.uint8)
    with TritonClient(server.url, timeout=20, retries=1, batch_size=64) as client:
        import threading

        threading.Timer(1.0, lambda: os.killpg(server.proc.pid, signal.SIGKILL)).start()
        t0 = time.monotonic()
        with pytest.raises(TritonUnavailableError):
            for _ in range(20):
                client.infer("dlib-resnet-v1", "chips", "embeddings", chips)
        assert time.monotonic() - t0 < 25
    server.stop()


def _copy_weights(face_zoo, tmp_path, model):
    for src in model.weight_paths(face_zoo / "models"):
        dst = tmp_path / "models" / model.name / src.relative_to(face_zoo / "models" / model.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return tmp_path / "models"


def test_corrupt_or_missing_weights_are_refused_with_their_path(face_zoo, tmp_path):
    model = registry.get("mobilefacenet-arcface")
    weights = _copy_weights(face_zoo, tmp_path, model)
    path = model.weight_paths(weights)[0]
    with open(path, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\0\0\0\0")
    with pytest.raises(WeightsError, match=f"{path}.*sha256 mismatch"):
        load(model, weights)
    with pytest.raises(TritonStartError, match="sha256 mismatch"):
        TritonServer("model_repository", models=[model.name], weights_dir=weights, startup_timeout=60).start()
    path.unlink()
    with pytest.raises(WeightsError, match=f"{path}: missing"):
        load(model, weights)


def test_service_embed_rpc_through_triton(triton, face_zoo, lfw_images, both_paths, tmp_path):
    import grpc

    from mapper_service.gen import mapper_pb2 as pb
    from tests.servers import start_server

    _, _, names, data = lfw_images
    images = [data[n] for n in names[:12]]
    srv = start_server(tmp_path, tmp_path / "maps.sqlite", "--triton-url", triton.url)
    down = start_server(
        tmp_path,
        tmp_path / "maps2.sqlite",
        "--triton-url",
        f"127.0.0.1:{free_port()}",
        "--triton-timeout",
        "3",
    )
    try:
        with srv.client() as c:
            reply = c.stub.Embed(pb.EmbedRequest(model="sface-2021dec-int8bq", images=[*images, b"junk"]))
            emb = np.frombuffer(reply.embeddings.data, "<f4").reshape(
                reply.embeddings.rows, reply.embeddings.dim
            )
            np.testing.assert_allclose(
                emb[:12], both_paths["sface-2021dec-int8bq"][1].embeddings[:12], rtol=0, atol=1e-5
            )
            assert list(reply.failed) == [12] and not emb[12].any()
            with pytest.raises(grpc.RpcError) as info:
                c.stub.Embed(pb.EmbedRequest(model="no-such-cnn", images=images[:1]))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with down.client() as c:
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                c.stub.Embed(pb.EmbedRequest(model="sface-2021dec-int8bq", images=images[:1]))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() - t0 < 15
    finally:
        srv.stop()
        down.stop()


def test_view2_cross_model_protocol(face_zoo, lfw_embeddings):
    from mapper.cli.verify_lfw import cross_model_view2

    pairs = read_lfw_pairs(face_zoo / "lfw" / "pairs.csv")
    names = [str(n) for n in lfw_embeddings["names"]]
    models = {m: lfw_embeddings[m] for m in ("face-reid-retail-0095", "mobilefacenet-arcface")}
    out = cross_model_view2(models, names, pairs, kinds=("linear",))
    acc = out["accuracy"]["linear"]
    index = {n: i for i, n in enumerate(names)}
    e = models["mobilefacenet-arcface"] / np.linalg.norm(
        models["mobilefacenet-arcface"], axis=1, keepdims=True
    )
    native = np.einsum("ij,ij->i", e[[index[n] for n in pairs.left]], e[[index[n] for n in pairs.right]])
    assert acc[1, 1] == view2_accuracy(native, pairs)[0]
    assert acc[0, 1] > 0.95 and acc[1, 0] > 0.95  # fitted per fold on other folds' people
