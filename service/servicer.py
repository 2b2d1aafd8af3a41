"""MapperService over gRPC: protos in, :class:`mapper.serving.translator.Translator` calls,
protos out. Admin checks, errors and metrics are the interceptor's (``interceptors.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np

from mapper.errors import InvalidInput, LimitExceeded, TritonUnavailableError
from mapper.faces.embed import FaceEmbedder
from mapper.serving.translator import Translator

from . import convert, metrics
from .gen import mapper_pb2 as pb
from .gen import mapper_pb2_grpc as pb_grpc

#: The longest model name or map id a request may carry.
MAX_NAME = 256


class MapperServicer(pb_grpc.MapperServiceServicer):
    """Adapts each RPC to the translator (and, for Embed, a face embedder)."""

    def __init__(self, translator: Translator, *, embedder: FaceEmbedder | None = None) -> None:
        self.translator = translator
        self.embedder = embedder

    def _array(self, msg: pb.Embeddings, name: str) -> np.ndarray:
        self.translator.check_rows(msg.rows, name)  # before the bytes are looked at
        return convert.to_array(msg, name)

    @staticmethod
    def _name(value: str, field: str) -> str:
        if len(value) > MAX_NAME:
            raise InvalidInput(f"{field} is {len(value)} characters long; names have at most {MAX_NAME}")
        return value

    def _kind(self, value: int) -> str:
        kind = convert.KIND_NAMES.get(value)
        if kind is None:
            raise InvalidInput(f"unknown map kind {value}; known: {sorted(convert.KIND_NAMES)}")
        return kind

    def _translate(self, request: pb.TranslateRequest) -> pb.TranslateResponse:
        source = self._name(request.source_model, "source_model")
        target = self._name(request.target_model, "target_model")
        kind = self._kind(request.kind)
        x = self._array(request.embeddings, "embeddings")
        y, ref = self.translator.translate(x, source, target, kind)
        metrics.translated(request.source_model, request.target_model).inc(x.shape[0])
        return pb.TranslateResponse(
            embeddings=convert.from_array(y), map=convert.ref_to_pb(ref), request_id=request.request_id
        )

    def Translate(self, request: pb.TranslateRequest, context: grpc.ServicerContext) -> pb.TranslateResponse:
        return self._translate(request)

    def TranslateStream(
        self, requests: Iterator[pb.TranslateRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.TranslateResponse]:
        # gRPC's HTTP/2 flow control bounds what is in flight: the next request is read only
        # after the previous reply was handed to the transport.
        for request in requests:
            yield self._translate(request)

    def Compare(self, request: pb.CompareRequest, context: grpc.ServicerContext) -> pb.CompareResponse:
        model_a, model_b = self._name(request.model_a, "model_a"), self._name(request.model_b, "model_b")
        kind = self._kind(request.kind)
        if not 0 <= request.far < 1:  # also false for NaN
            raise InvalidInput(f"far must be in [0, 1) (0: scores only), got {request.far}")
        result = self.translator.compare(
            self._array(request.a, "a"),
            self._array(request.b, "b"),
            model_a,
            model_b,
            kind=kind,
            far=request.far,
        )
        reply = pb.CompareResponse(space=result.space, scores=result.scores.tolist(), scoring=result.scoring)
        if result.map is not None:
            reply.map.CopyFrom(convert.ref_to_pb(result.map))
            metrics.translated(request.model_a, request.model_b).inc(len(result.scores))
        if result.same is not None:
            reply.threshold = result.threshold
            reply.same.extend(result.same.tolist())
        return reply

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        if self.embedder is None:
            raise TritonUnavailableError("Embed needs a Triton server: start mapper-serve with --triton-url")
        if not request.images:
            raise InvalidInput("no images given")
        if len(request.images) > self.translator.max_batch:
            raise LimitExceeded(f"{len(request.images)} images; the limit is {self.translator.max_batch}")
        result = self.embedder.embed(list(request.images), request.model)
        return pb.EmbedResponse(embeddings=convert.from_array(result.embeddings), failed=result.failed)

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        dims = self.translator.models()
        return pb.ListModelsResponse(models=[pb.ModelInfo(name=n, dim=d) for n, d in sorted(dims.items())])

    def ListMappings(
        self, request: pb.ListMappingsRequest, context: grpc.ServicerContext
    ) -> pb.ListMappingsResponse:
        maps = self.translator.list(
            all_versions=request.all_versions, source=request.source_model, target=request.target_model
        )
        return pb.ListMappingsResponse(maps=[convert.info_to_pb(m) for m in maps])

    def GetMapping(
        self, request: pb.GetMappingRequest, context: grpc.ServicerContext
    ) -> pb.GetMappingResponse:
        m = self.translator.get(self._name(request.map_id, "map_id"), request.version or None)
        return pb.GetMappingResponse(
            info=convert.info_to_pb(m), map_file=(m.data or b"") if request.include_file else b""
        )

    def PutMapping(
        self, request: pb.PutMappingRequest, context: grpc.ServicerContext
    ) -> pb.PutMappingResponse:
        return pb.PutMappingResponse(info=convert.info_to_pb(self.translator.publish(request.map_file)))

    def DeleteMapping(
        self, request: pb.DeleteMappingRequest, context: grpc.ServicerContext
    ) -> pb.DeleteMappingResponse:
        return pb.DeleteMappingResponse(
            versions_deleted=self.translator.delete(self._name(request.map_id, "map_id"))
        )

    def RollbackMapping(
        self, request: pb.RollbackMappingRequest, context: grpc.ServicerContext
    ) -> pb.RollbackMappingResponse:
        stored = self.translator.rollback(self._name(request.map_id, "map_id"), request.version)
        return pb.RollbackMappingResponse(info=convert.info_to_pb(stored))
