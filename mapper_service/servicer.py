"""MapperService over gRPC (asyncio): protos in, :class:`mapper.serving.translator.Translator`
calls, protos out. Admin checks, errors and metrics are the interceptor's (``interceptors.py``).

The event loop only parses, admits and replies. A call's work is admitted by its cost before
it starts (``mapper.serving.admission``); cheap work runs inline, the rest on the compute
threads in row blocks, and stops within one block of the client cancelling or its deadline
passing; Translate calls of one block on one map that wait for a thread together share a
product (``compute.Coalescer``). Store reads and Triton calls run on the loop's default
threads. So health checks and small calls are answered whatever the large ones, or idle
streams, are doing.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc
import numpy as np

from mapper.errors import InvalidInput, LimitExceeded, TritonUnavailableError
from mapper.faces.embed import FaceEmbedder
from mapper.serving.admission import Admission, Ticket
from mapper.serving.catalog import check_name
from mapper.serving.translator import BLOCK_MACS, Comparison, Cost, Job, T, Translator

from . import convert, metrics
from .compute import Coalescer, ComputeThreads
from .gen import mapper_pb2 as pb
from .gen import mapper_pb2_grpc as pb_grpc

#: Work up to this many multiply-adds (a 512 x 512 map on 16 rows) is done on the event
#: loop: a thread hand-off would cost more than the work.
INLINE_MACS = 2**22
#: The client a call came from (its token's name), set by the interceptor for rate limits.
CLIENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("client", default=None)
B = TypeVar("B")


class MapperServicer(pb_grpc.MapperServiceServicer):
    """Adapts each RPC to the translator (and, for Embed, a face embedder).

    ``compute`` runs admitted work that is too large to run inline; ``max_reply_bytes`` is
    the transport's message limit, checked before the work; ``stream_idle`` seconds without
    a message end a TranslateStream (DEADLINE_EXCEEDED), so idle streams do not pile up.
    """

    def __init__(
        self,
        translator: Translator,
        *,
        compute: ComputeThreads,
        embedder: FaceEmbedder | None = None,
        admission: Admission | None = None,
        max_reply_bytes: int = 64 << 20,
        stream_idle: float = 60.0,
    ) -> None:
        self.translator = translator
        self.compute = compute
        self.embedder = embedder
        self.admission = admission or Admission()
        self.max_reply_bytes = max_reply_bytes
        self.stream_idle = stream_idle
        # Translate calls of one block each, on one map, waiting for a thread together.
        self.batches: Coalescer[tuple[np.ndarray, int], np.ndarray] = Coalescer(
            compute,
            lambda route, items: translator.translate_many([x for x, _ in items], route),
            size=lambda item: item[1],
            limit=BLOCK_MACS,
        )

    @staticmethod
    def _kind(value: int) -> str:
        kind = convert.KIND_NAMES.get(value)
        if kind is None:
            raise InvalidInput(f"unknown map kind {value}; known: {sorted(convert.KIND_NAMES)}")
        return kind

    def _check_reply(self, cost: Cost) -> None:
        if cost.reply_bytes > self.max_reply_bytes:
            raise LimitExceeded(
                f"the reply would be {cost.reply_bytes / 2**20:.1f} MiB, over the message limit of "
                f"{self.max_reply_bytes / 2**20:.0f} MiB: send fewer rows per request"
            )

    def _admit(self, cost: Cost, request_bytes: int, what: str, build: Callable[[], B]) -> tuple[Ticket, B]:
        """Admit a call by its cost, from the request's shape alone (a refused call never has
        its embeddings' bytes read: for a 64 MiB request that is most of its cost), then
        ``build`` its work; the ticket is returned unless building fails."""
        self._check_reply(cost)
        nbytes = request_bytes + cost.reply_bytes
        ticket = self.admission.admit(cost.macs, nbytes, client=CLIENT.get(), what=what)
        try:
            return ticket, build()
        except BaseException:
            ticket.release()
            raise

    async def _run(
        self,
        cost: Cost,
        request_bytes: int,
        what: str,
        build: Callable[[], Job[T]],
        context: grpc.aio.ServicerContext,
    ) -> T:
        """Admit a call by its cost (:meth:`_admit`), then ``build`` its job and run it,
        inline when small, and stop it if the call ends first."""
        ticket, job = self._admit(cost, request_bytes, what, build)
        if cost.macs <= INLINE_MACS:
            with ticket:
                return job.run()
        cancelled = threading.Event()
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining

        def stop() -> bool:
            return cancelled.is_set() or (deadline is not None and time.monotonic() > deadline)

        future = self.compute.submit(lambda: job.run(stop), done=ticket.release)
        try:
            return await future
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            cancelled.set()
            raise

    async def _translate(
        self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext
    ) -> pb.TranslateResponse:
        source = check_name(request.source_model, "source_model")
        target = check_name(request.target_model, "target_model")
        msg = request.embeddings
        route = self.translator.route(source, target, self._kind(request.kind))
        cost = self.translator.translate_cost(route, msg.rows)
        what = f"translating {msg.rows} rows from {source} to {target}"
        nbytes = 4 * msg.rows * msg.dim
        if cost.macs <= INLINE_MACS:  # done before the loop moves on: nothing held, no job
            self._check_reply(cost)
            self.admission.check(cost.macs, nbytes + cost.reply_bytes, client=CLIENT.get(), what=what)
            x = self.translator.translate_input(convert.to_array(msg, "embeddings"), route)
            y, ref = self.translator.translate_now(x, route), route.ref
        elif cost.macs <= BLOCK_MACS:  # one block: it may share a product
            ticket, x = self._admit(
                cost,
                nbytes,
                what,
                lambda: self.translator.translate_input(convert.to_array(msg, "embeddings"), route),
            )
            y, ref = await self.batches.submit(route, (x, cost.macs), done=ticket.release), route.ref
        else:
            y, ref = await self._run(
                cost,
                nbytes,
                what,
                lambda: self.translator.translate_job(convert.to_array(msg, "embeddings"), route),
                context,
            )
        metrics.translated(source, target).inc(msg.rows)
        return pb.TranslateResponse(
            embeddings=convert.from_array(y),
            map=convert.ref_to_pb(ref),
            request_id=request.request_id,
        )

    async def Translate(
        self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext
    ) -> pb.TranslateResponse:
        return await self._translate(request, context)

    async def TranslateStream(
        self, requests: AsyncIterator[pb.TranslateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranslateResponse]:
        # HTTP/2 flow control bounds what is in flight: the next request is read only after
        # the previous reply was handed to the transport. Each message is admitted alone.
        while True:
            try:
                request = await asyncio.wait_for(anext(requests), self.stream_idle)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise StreamIdle(
                    f"no message for {self.stream_idle:.0f} s: idle streams are closed; open a new one"
                ) from None
            yield await self._translate(request, context)

    async def Compare(
        self, request: pb.CompareRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompareResponse:
        model_a = check_name(request.model_a, "model_a")
        model_b = check_name(request.model_b, "model_b")
        kind = self._kind(request.kind)
        if not 0 <= request.far < 1:  # also false for NaN
            raise InvalidInput(f"far must be in [0, 1) (0: scores only), got {request.far}")
        if request.a.rows != request.b.rows:
            raise InvalidInput(
                f"a and b must hold the same number of rows: {request.a.rows} != {request.b.rows}"
            )
        rows = request.a.rows

        def build() -> Job[Comparison]:
            a, b = convert.to_array(request.a, "a"), convert.to_array(request.b, "b")
            return self.translator.compare_job(a, b, model_a, model_b, kind=kind, far=request.far)

        result = await self._run(
            self.translator.compare_cost(model_a, model_b, kind, rows),
            8 * rows * request.a.dim,
            f"comparing {rows} rows of {model_a} with {model_b}",
            build,
            context,
        )
        reply = pb.CompareResponse(space=result.space, scores=result.scores.tolist(), scoring=result.scoring)
        if result.map is not None:
            reply.map.CopyFrom(convert.ref_to_pb(result.map))
        if result.reverse_map is not None:
            reply.reverse_map.CopyFrom(convert.ref_to_pb(result.reverse_map))
            metrics.translated(model_a, model_b).inc(len(result.scores))
        if result.same is not None:
            reply.threshold = result.threshold
            reply.same.extend(result.same.tolist())
        return reply

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        if self.embedder is None:
            raise TritonUnavailableError("Embed needs a Triton server: start mapper-serve with --triton-url")
        if not request.images:
            raise InvalidInput("no images given")
        if len(request.images) > self.translator.max_batch:
            raise LimitExceeded(f"{len(request.images)} images; the limit is {self.translator.max_batch}")
        result = await asyncio.to_thread(self.embedder.embed, list(request.images), request.model)
        return pb.EmbedResponse(embeddings=convert.from_array(result.embeddings), failed=result.failed)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        dims = self.translator.models()
        return pb.ListModelsResponse(models=[pb.ModelInfo(name=n, dim=d) for n, d in sorted(dims.items())])

    async def ListMappings(
        self, request: pb.ListMappingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMappingsResponse:
        maps = await asyncio.to_thread(
            self.translator.list,
            all_versions=request.all_versions,
            source=request.source_model,
            target=request.target_model,
        )
        return pb.ListMappingsResponse(maps=[convert.info_to_pb(m) for m in maps])

    async def GetMapping(
        self, request: pb.GetMappingRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMappingResponse:
        map_id = check_name(request.map_id, "map_id")
        m = await asyncio.to_thread(
            self.translator.get, map_id, request.version or None, with_data=request.include_file
        )  # without include_file the map's bytes are not even read
        return pb.GetMappingResponse(info=convert.info_to_pb(m), map_file=m.data or b"")

    async def PutMapping(
        self, request: pb.PutMappingRequest, context: grpc.aio.ServicerContext
    ) -> pb.PutMappingResponse:
        stored = await asyncio.to_thread(self.translator.publish, request.map_file)
        return pb.PutMappingResponse(info=convert.info_to_pb(stored))

    async def DeleteMapping(
        self, request: pb.DeleteMappingRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteMappingResponse:
        n = await asyncio.to_thread(self.translator.delete, check_name(request.map_id, "map_id"))
        return pb.DeleteMappingResponse(versions_deleted=n)

    async def RollbackMapping(
        self, request: pb.RollbackMappingRequest, context: grpc.aio.ServicerContext
    ) -> pb.RollbackMappingResponse:
        map_id = check_name(request.map_id, "map_id")
        stored = await asyncio.to_thread(self.translator.rollback, map_id, request.version)
        return pb.RollbackMappingResponse(info=convert.info_to_pb(stored))


class StreamIdle(Exception):
    """A stream that sent nothing for too long (DEADLINE_EXCEEDED)."""
