"""A small typed client for the translation service (also used by mapper-train to publish)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import numpy as np

from mapper.core import mapfile
from mapper.serving.catalog import MapRef
from mapper.serving.translator import Comparison

from . import convert
from .gen import mapper_pb2 as pb
from .gen import mapper_pb2_grpc as pb_grpc


class MapperClient:
    """``MapperClient("127.0.0.1:50051")``; TLS with ``root_cert`` (and a client pair for mTLS).

    Every call takes ``timeout`` seconds (default 30) and raises ``grpc.RpcError`` with the
    server's status code and message on failure.
    """

    def __init__(
        self,
        target: str,
        *,
        root_cert: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        admin_token: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        max_message_mb: int = 256,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_mb * 2**20),
            ("grpc.max_send_message_length", max_message_mb * 2**20),
        ]
        if root_cert is not None:
            creds = grpc.ssl_channel_credentials(root_cert, client_key, client_cert)
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.MapperServiceStub(self.channel)
        self.timeout = timeout
        self._admin = [("authorization", f"Bearer {admin_token}")] if admin_token else []
        # A client token (--client-tokens-file on the server) goes with every call; admin
        # calls and map-file downloads send the admin token when there is one.
        self._auth = [("authorization", f"Bearer {token}")] if token else self._admin

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> MapperClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def translate(
        self, embeddings: np.ndarray, source: str, target: str, kind: str = "any"
    ) -> tuple[np.ndarray, MapRef]:
        """(n, d_source) -> ((n, d_target) float32, the map used)."""
        reply = self.stub.Translate(
            pb.TranslateRequest(
                source_model=source,
                target_model=target,
                kind=convert.KIND_VALUES[kind],
                embeddings=convert.from_array(embeddings),
            ),
            timeout=self.timeout,
            metadata=self._auth,
        )
        return convert.to_array(reply.embeddings), convert.ref_from_pb(reply.map)

    def translate_stream(
        self, batches: Iterable[np.ndarray], source: str, target: str, kind: str = "any"
    ) -> Iterator[tuple[np.ndarray, MapRef]]:
        """Translate many batches over one stream (a whole gallery), in order."""
        requests = (
            pb.TranslateRequest(
                source_model=source,
                target_model=target,
                kind=convert.KIND_VALUES[kind],
                embeddings=convert.from_array(b),
                request_id=str(i),
            )
            for i, b in enumerate(batches)
        )
        for reply in self.stub.TranslateStream(requests, metadata=self._auth):
            yield convert.to_array(reply.embeddings), convert.ref_from_pb(reply.map)

    def compare(
        self, a: np.ndarray, model_a: str, b: np.ndarray, model_b: str, kind: str = "any", far: float = 0.0
    ) -> Comparison:
        reply = self.stub.Compare(
            pb.CompareRequest(
                model_a=model_a,
                a=convert.from_array(a),
                model_b=model_b,
                b=convert.from_array(b),
                kind=convert.KIND_VALUES[kind],
                far=far,
            ),
            timeout=self.timeout,
            metadata=self._auth,
        )
        return Comparison(
            scores=np.asarray(reply.scores, np.float32),
            space=reply.space,
            map=convert.ref_from_pb(reply.map) if reply.map.map_id else None,
            same=np.asarray(reply.same, bool) if far > 0 else None,
            threshold=reply.threshold if far > 0 else None,
            scoring=reply.scoring or "cosine",
            reverse_map=convert.ref_from_pb(reply.reverse_map) if reply.reverse_map.map_id else None,
        )

    def list_models(self) -> dict[str, int]:
        reply = self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self._auth)
        return {m.name: m.dim for m in reply.models}

    def list_mappings(
        self, source: str = "", target: str = "", all_versions: bool = False
    ) -> list[pb.MapInfo]:
        req = pb.ListMappingsRequest(source_model=source, target_model=target, all_versions=all_versions)
        return list(self.stub.ListMappings(req, timeout=self.timeout, metadata=self._auth).maps)

    def get_mapping(self, map_id: str, version: int = 0) -> tuple[pb.MapInfo, mapfile.MapObject]:
        """The stored map file, verified and loaded, with its info."""
        reply = self.stub.GetMapping(
            pb.GetMappingRequest(map_id=map_id, version=version, include_file=True),
            timeout=self.timeout,
            metadata=self._admin or self._auth,
        )
        return reply.info, mapfile.loads(reply.map_file, f"{map_id} v{reply.info.ref.version}")

    def put_mapping(
        self, obj: mapfile.MapObject | bytes | str | os.PathLike[str], **provenance: object
    ) -> pb.MapInfo:
        """Publish a map or hub (object, map-file bytes or path) as the next active version."""
        if isinstance(obj, bytes):
            data = obj
        elif isinstance(obj, str | os.PathLike):
            data = Path(obj).read_bytes()
        else:
            data = mapfile.dumps(obj, json.loads(json.dumps(provenance)) if provenance else None)
        reply = self.stub.PutMapping(
            pb.PutMappingRequest(map_file=data), timeout=self.timeout, metadata=self._admin or self._auth
        )
        return reply.info

    def delete_mapping(self, map_id: str) -> int:
        reply = self.stub.DeleteMapping(
            pb.DeleteMappingRequest(map_id=map_id), timeout=self.timeout, metadata=self._admin or self._auth
        )
        return reply.versions_deleted

    def rollback_mapping(self, map_id: str, version: int) -> pb.MapInfo:
        reply = self.stub.RollbackMapping(
            pb.RollbackMappingRequest(map_id=map_id, version=version),
            timeout=self.timeout,
            metadata=self._admin or self._auth,
        )
        return reply.info
