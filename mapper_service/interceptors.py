"""Cross-cutting concerns of every MapperService RPC, in one place: the admin check, the
exception -> status mapping and the request metrics, for unary and streaming methods."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from mapper.errors import Cancelled, InvalidInput, LimitExceeded, NotFound, TritonModelError, Unavailable
from mapper.serving.admission import Admission

from . import metrics, wire
from .gen import mapper_pb2 as pb
from .servicer import CLIENT, StreamIdle

log = logging.getLogger("mapper.service")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MapperService"].full_name
ADMIN_METHODS = frozenset({"PutMapping", "DeleteMapping", "RollbackMapping"})


#: The longest error message a client gets: messages may quote request fields.
MAX_DETAILS = 512


class Unauthenticated(Exception):
    """A call without the credential it needs (UNAUTHENTICATED)."""


class AdminDisabled(Exception):
    """A call its credential does not allow, or an admin call to a server with no admin
    credentials configured (PERMISSION_DENIED)."""


def _bearer(context: grpc.ServicerContext) -> str:
    return dict(context.invocation_metadata()).get("authorization", "")


def _matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@dataclass(frozen=True)
class AdminPolicy:
    """Who may call what.

    Admin calls (PutMapping, DeleteMapping, RollbackMapping) and map-file downloads
    (GetMapping with ``include_file``): ``token``: callers send ``authorization: Bearer
    <token>``; ``mtls``: every caller already showed a client certificate the server
    verified; ``open``: anyone (an explicit choice, for a loopback-only test server). With
    none of them they are refused.

    ``clients``: {token: (client name, role)} from ``--client-tokens-file``. When given,
    every MapperService call needs a client token or the admin token (UNAUTHENTICATED
    otherwise), so that only known clients translate or compare; role ``reader`` may also
    download map files. Health and reflection stay open (load balancers probe them).
    """

    token: str | None = None
    mtls: bool = False
    open: bool = False
    clients: dict[str, tuple[str, str]] | None = None

    def _admin(self, given: str) -> bool:
        return bool(self.token) and _matches(given, self.token)  # type: ignore[arg-type]

    def _client(self, given: str) -> tuple[str, str] | None:
        return next((who for t, who in (self.clients or {}).items() if _matches(given, t)), None)

    def check(self, context: grpc.ServicerContext) -> None:
        """For admin calls."""
        if self.token:
            if not self._admin(_bearer(context)):
                raise Unauthenticated("admin call needs metadata 'authorization: Bearer <admin token>'")
        elif not (self.mtls or self.open):
            raise AdminDisabled(
                "admin calls are disabled on this server: start it with an admin token "
                "(--admin-token-file or MAPPER_ADMIN_TOKEN) or mutual TLS (--tls-client-ca)"
            )

    def check_client(self, context: grpc.ServicerContext) -> str | None:
        """For every MapperService call, when client tokens are configured: the caller's
        name (``"admin"`` for the admin token), for per-client rate limits."""
        if self.clients is None:  # reading the metadata cost 7 us of every 1-row call
            return None
        return self.client_of(_bearer(context))

    def client_of(self, given: str) -> str | None:
        """:meth:`check_client` of the ``authorization`` metadata's value ``given``."""
        if self.clients is None:
            return None
        if self._admin(given):
            return "admin"
        who = self._client(given)
        if who is None:
            raise Unauthenticated(
                "this server serves known clients only: send metadata 'authorization: Bearer <client token>'"
            )
        return who[0]

    def check_reader(self, context: grpc.ServicerContext) -> None:
        """For downloading a map file: the admin credential, or a client token of role reader."""
        given = _bearer(context)
        who = self._client(given)
        if who is not None and who[1] == "reader":
            return
        if self._admin(given) or (not self.token and (self.mtls or self.open)):
            return
        raise AdminDisabled(
            "a map file turns one model's templates into another's: downloading it (include_file) "
            "needs the admin token or a client token of role 'reader'"
        )


def read_client_tokens(path: str) -> dict[str, tuple[str, str]]:
    """{token: (name, role)} from a file of lines ``name token [client|reader]`` (``#``
    comments and blank lines skipped); ValueError naming the line if one is malformed."""
    clients: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(open(path, encoding="utf-8").read().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        role = fields[2] if len(fields) == 3 else "client"
        if len(fields) not in (2, 3) or role not in ("client", "reader") or len(fields[1]) < 16:
            raise ValueError(
                f"{path}:{number}: expected 'name token [client|reader]' with a token of 16+ characters"
            )
        clients[fields[1]] = (fields[0], role)
    if not clients:
        raise ValueError(f"{path}: no client tokens: every call would be refused")
    return clients


#: Only the library's own error types (and the service's) have a status; anything else is
#: a bug: INTERNAL, logged with its traceback, and the client learns nothing of it.
STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (AdminDisabled, grpc.StatusCode.PERMISSION_DENIED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (Cancelled, grpc.StatusCode.DEADLINE_EXCEEDED),
    (TritonModelError, grpc.StatusCode.FAILED_PRECONDITION),
    (StreamIdle, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    return next((code for cls, code in STATUS_OF if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each MapperService handler once (cached by method): client and admin checks,
    error -> status, request count and latency. Health and reflection pass through.

    With client tokens, a call from an unknown caller or from a client over its byte rate
    (``admission``) is refused before its request is read: a flood of large requests then
    costs the server their headers, not their bytes."""

    def __init__(self, admin: AdminPolicy | None = None, admission: Admission | None = None) -> None:
        self.admin = admin or AdminPolicy()
        self.admission = admission or Admission()
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(details)
            service, _, name = method.lstrip("/").rpartition("/")
            if handler is None or service != SERVICE_NAME:
                return handler
            # Requests arrive as bytes and are parsed here, so a malformed message is the
            # client's error (INVALID_ARGUMENT, counted) rather than grpc's INTERNAL and traceback.
            parse = _parser(name, handler.request_deserializer)
            if handler.unary_unary is not None:
                wrapped = grpc.unary_unary_rpc_method_handler(
                    self._unary(name, handler.unary_unary, parse),
                    response_serializer=handler.response_serializer,
                )
            elif handler.stream_stream is not None:
                wrapped = grpc.stream_stream_rpc_method_handler(
                    self._stream(name, handler.stream_stream, parse),
                    response_serializer=handler.response_serializer,
                )
            else:
                return handler
            self._wrapped[method] = wrapped
        return self._refused_unread(details) or wrapped

    def _refused_unread(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """With client tokens: a handler that refuses the call without reading its request,
        if the caller is unknown or over its byte rate; else None."""
        if self.admin.clients is None:
            return None
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        try:
            self.admission.check_rate(self.admin.client_of(given))
            return None
        except (Unauthenticated, LimitExceeded) as exc:
            refusal = exc
        name = details.method.rpartition("/")[2]

        async def refuse(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            await self._fail(name, refusal, context)

        # Request-streaming, so that grpc hands over the call before reading a message.
        return grpc.stream_unary_rpc_method_handler(refuse)

    async def _fail(
        self, name: str, exc: Exception, context: grpc.aio.ServicerContext, prefix: str = ""
    ) -> None:
        code = status_for(exc)
        metrics.REQUESTS.labels(name, code.name).inc()
        if code is grpc.StatusCode.INTERNAL:
            log.error("internal error in %s", name, exc_info=exc)
        # The abort's exception chains to this one, and its traceback's frames hold the
        # request (up to --max-message-mb, several copies): cut it here so the request is
        # freed now, not whenever the garbage collector next runs.
        exc.__traceback__ = None
        if code is grpc.StatusCode.INTERNAL:
            await context.abort(code, "internal error")
        details = f"{prefix}{exc}"
        if len(details) > MAX_DETAILS:
            details = f"{details[: MAX_DETAILS - 40]}... ({len(details)} characters)"
        await context.abort(code, details)

    def _unary(
        self, name: str, behaviour: Callable[..., Awaitable[Any]], parse: Callable[[bytes], Any]
    ) -> Callable[..., Awaitable[Any]]:
        admin = name in ADMIN_METHODS
        download = name == "GetMapping"
        # Children bound once: a labels() lookup per call costs more than the count itself.
        ok, latency = metrics.REQUESTS.labels(name, "OK"), metrics.LATENCY.labels(name)

        async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.perf_counter()
            request = None
            try:
                client = self.admin.check_client(context)
                CLIENT.set(client)
                self.admission.charge_bytes(client, len(raw))
                request = parse(raw)
                if admin:
                    self.admin.check(context)
                elif download and request.include_file:
                    self.admin.check_reader(context)
                reply = await behaviour(request, context)
                ok.inc()
                return reply
            except Exception as exc:
                raw = request = None
                await self._fail(name, exc, context)
            finally:
                latency.observe(time.perf_counter() - t0)

        return call

    def _stream(
        self, name: str, behaviour: Callable[..., AsyncIterator[Any]], parse: Callable[[bytes], Any]
    ) -> Callable[..., AsyncIterator[Any]]:
        ok, latency = metrics.REQUESTS.labels(name, "OK"), metrics.LATENCY.labels(name)

        async def call(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            t0 = time.perf_counter()
            count = 0
            try:
                client = self.admin.check_client(context)
                CLIENT.set(client)

                async def parsed() -> AsyncIterator[Any]:
                    async for raw in requests:
                        self.admission.charge_bytes(client, len(raw))
                        yield parse(raw)
                        # A client over its byte rate: its next message is read once the debt
                        # is paid (HTTP/2 flow control holds the client meanwhile).
                        if wait := self.admission.byte_debt_seconds(client):
                            await asyncio.sleep(wait)

                async for reply in behaviour(parsed(), context):
                    count += 1
                    yield reply
                ok.inc()
            except Exception as exc:
                await self._fail(name, exc, context, prefix=f"stream message {count + 1}: ")
            finally:
                latency.observe(time.perf_counter() - t0)

        return call


def _parser(name: str, deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    cls = getattr(pb, pb.DESCRIPTOR.services_by_name["MapperService"].methods_by_name[name].input_type.name)
    fields = wire.embedding_fields(cls)
    if fields:  # embeddings stay views of the request's bytes (wire.py)
        deserialize = partial(wire.parse, cls=cls, fields=fields)

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw) if deserialize else raw
        except DecodeError as e:
            raise InvalidInput(f"{name}: the request is not a valid protobuf message ({e})") from e

    return parse
