"""The agent's HTTP/1.1 listener: asyncio streams and h11, held to the controller's rules.

An agent serves three routes to the kubelet and Prometheus (agent/health.py); aiohttp, for
this and agent/http_client.py, cost its process 10 MiB of RSS (docs/performance.md, "An
agent's footprint"). h11 parses and frames
HTTP; this module moves the bytes and keeps every limit the controller's listener has
(http_server.py): `ListenerLimits` deadlines per phase (a head from the connection's first
byte, a body from its head, an idle keep-alive connection closed quietly), `ConnectionGuard`'s
caps in total and per peer IP (the oldest connection waiting for a head evicted for a new one),
problem documents for heads it refuses (counted, never a traceback), a handler's bug answered
500 with its traceback logged, and refusals counted and logged at a bounded rate (http_guard.py).

A handler takes a :class:`Request` (its body read in full, at most `max_body` bytes: past that
413) and returns an :class:`Answer`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

import h11
from prometheus_client import CollectorRegistry

from egresswatch.addresses import parse_listen
from egresswatch.http_guard import ConnectionGuard, Guarding, ListenError, Refusal, guarding
from egresswatch.http_limits import AGENT_LIMITS, ListenerLimits
from egresswatch.problem_body import PROBLEM, problem_document

__all__ = ["Answer", "Handler", "Listener", "Request", "listen", "problem_answer"]

log = logging.getLogger(__name__)

READ_SIZE = 16 * 1024
LINE_MAX = 8190  # bytes of the request line or of one header field (aiohttp's, the controller's)
FIELDS_MAX = 100  # header fields in one request
HEAD_MAX = 64 * 1024  # bytes of a head h11 buffers while it is incomplete
BODY_MAX = 64 * 1024  # bytes of a request body: the agent's routes take none


@dataclass(frozen=True)
class Request:
    """A request as a handler sees it: `path` without the query, `query` its decoded pairs in
    order (blank values kept), header names in lower case."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def params(self, name: str) -> list[str]:
        """Every value of the query parameter `name`, in order."""
        return [value for key, value in self.query if key == name]


@dataclass(frozen=True)
class Answer:
    """An answer; `length` is the Content-Length when it is not the body's (HEAD)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    length: int | None = None


Handler = Callable[[Request], Awaitable[Answer]]


class _Refused(Exception):
    """A request that is answered with a problem document and the connection closed."""

    def __init__(self, status: int, detail: str, reason: Refusal | None = "bad_request") -> None:
        super().__init__(detail)
        self.status, self.detail, self.reason = status, detail, reason


class _Cut(Exception):
    """The connection is closed unanswered; `reason` is counted unless None."""

    def __init__(self, reason: Refusal | None) -> None:
        super().__init__(reason)
        self.reason = reason


class _Held:
    """One connection as the guard holds it (http_guard.Held)."""

    def __init__(self, writer: asyncio.StreamWriter, guard: ConnectionGuard) -> None:
        self.writer = writer
        self._guard = guard
        self.was_cut = False

    def cut(self, reason: Refusal | None) -> None:
        if self.was_cut:
            return
        self.was_cut = True
        if reason is not None:
            self._guard.count(reason)
        self.writer.transport.abort()


class Listener:
    """A bound listener; `address` is where (the kernel's port when 0 was asked).
    :meth:`close` stops accepting, closes every connection and stops the guard's timers."""

    def __init__(self, handler: Handler, guarded: Guarding, limits: ListenerLimits) -> None:
        self._handler = handler
        self._guard = guarded.guard
        self._limits = limits
        self._refusals = guarded.refusals
        self._accept_errors = guarded.accept_errors
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = ("", 0)

    async def bind(self, host: str, port: int) -> None:
        """Start accepting on (host, port); OSError when it cannot be bound."""
        server = await asyncio.start_server(
            self._accept, host, port, limit=READ_SIZE, reuse_address=True
        )
        self._server = server
        bound = server.sockets[0].getsockname() if server.sockets else (host, port)
        self.address = (str(bound[0]), int(bound[1]))

    async def close(self) -> None:
        """Idempotent."""
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._accept_errors.uninstall()
        self._refusals.close()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A new connection, admitted or refused at once, inside the protocol's
        connection_made (a plain function: asyncio calls it there, before any byte is read, so
        a refused connection is closed with nothing unread, not reset)."""
        held = _Held(writer, self._guard)
        peer = writer.get_extra_info("peername")
        if self._guard.admit(held, str(peer[0]) if peer else "") is not None:
            writer.transport.abort()  # refused (counted by the guard): nothing to send
            return
        task = asyncio.get_running_loop().create_task(
            self._connection(held, reader), name="egresswatch-http-connection"
        )
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _connection(self, held: _Held, reader: asyncio.StreamReader) -> None:
        """One admitted connection, to its close; never raises (its task is the listener's)."""
        try:
            await _Exchanges(held, reader, self._guard, self._limits, self._handler).run()
        except _Cut as cut:
            held.cut(cut.reason)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        except asyncio.CancelledError:
            pass  # the listener is closing: the connection goes below
        finally:
            self._guard.release(held)
            if not held.was_cut:
                held.writer.close()


class _Exchanges:
    """The requests of one connection, one after the other, each within its phases' limits."""

    def __init__(
        self,
        held: _Held,
        reader: asyncio.StreamReader,
        guard: ConnectionGuard,
        limits: ListenerLimits,
        handler: Handler,
    ) -> None:
        self._held, self._reader, self._guard = held, reader, guard
        self._limits, self._handler = limits, handler
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_MAX)

    async def run(self) -> None:
        first = True
        while True:
            self._guard.waiting(self._held)
            if not first and not await self._next_request_began():
                return  # idle past its time, or closed by the client: quietly
            first = False
            try:
                request = await self._request()
            except _Refused as refused:
                await self._refuse(refused)
                return
            answer = await self._handle(request)
            if request.method == "HEAD":  # the same head, no body (h11 frames it so)
                answer = Answer(answer.status, b"", answer.content_type, len(answer.body))
            await self._answer(answer)
            if self._http.our_state is not h11.DONE or self._http.their_state is not h11.DONE:
                return  # `Connection: close` from either side
            self._http.start_next_cycle()

    async def _next_request_began(self) -> bool:
        """Wait (idle_timeout_s at most) for a first byte of a next request; False: close."""
        try:
            async with asyncio.timeout(self._limits.idle_timeout_s):
                while not self._http.trailing_data[0]:  # bytes h11 holds, not yet parsed
                    if not await self._receive():
                        return False
        except TimeoutError:
            return False
        return True

    async def _request(self) -> Request:
        """The next request's head (head_timeout_s) and body (body_timeout_s from its head)."""
        try:
            async with asyncio.timeout(self._limits.head_timeout_s):
                head = await self._head()
        except TimeoutError:
            raise _Cut("head_timeout") from None
        self._guard.busy(self._held)
        try:
            async with asyncio.timeout(self._limits.body_timeout_s):
                body = await self._body()
        except TimeoutError:
            raise _Cut("body_timeout") from None
        return _request(head, body)

    async def _head(self) -> h11.Request:
        while True:
            event = self._next()
            if isinstance(event, h11.Request):
                _check_head(event)
                return event
            if event is not h11.NEED_DATA:  # the client closed between requests
                raise _Cut(None)
            if not await self._receive():
                raise _Cut(None)

    async def _body(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            event = self._next()
            if isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > BODY_MAX:
                    raise _Refused(413, f"the request body is longer than {BODY_MAX} bytes", None)
                chunks.append(bytes(event.data))
            elif not await self._receive():
                raise _Cut(None)  # the client gave up mid-body

    def _next(self) -> object:
        try:
            return self._http.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise _Refused(400, f"the request head is longer than {HEAD_MAX} bytes") from None
            raise _Refused(400, "malformed request") from None

    async def _receive(self) -> bool:
        """Read what has come into h11; False when the client closed its side."""
        data = await self._reader.read(READ_SIZE)
        self._http.receive_data(data)
        return bool(data)

    # -- answers -----------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Answer:
        try:
            return await self._handler(request)
        except Exception:
            log.exception("Error handling request")
            return problem_answer(
                500, "the server failed to answer this request; its log has the cause"
            )

    async def _refuse(self, refused: _Refused) -> None:
        if refused.reason is not None:
            self._guard.count(refused.reason)
        if self._http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._answer(problem_answer(refused.status, refused.detail), close=True)

    async def _answer(self, answer: Answer, *, close: bool = False) -> None:
        length = len(answer.body) if answer.length is None else answer.length
        fields = [("Content-Type", answer.content_type), ("Content-Length", str(length))]
        if close:
            fields.append(("Connection", "close"))
        http = self._http
        head = h11.Response(
            status_code=answer.status, headers=fields, reason=HTTPStatus(answer.status).phrase
        )
        data = http.send(head)
        data += http.send(h11.Data(data=answer.body)) if answer.body else b""
        data += http.send(h11.EndOfMessage())
        self._guard.waiting(self._held)  # reading the answer counts as idle: idle_timeout_s
        writer = self._held.writer
        writer.write(data)
        async with asyncio.timeout(self._limits.idle_timeout_s):
            await writer.drain()


def _request(head: h11.Request, body: bytes) -> Request:
    target = urlsplit(head.target.decode("latin-1"))
    return Request(
        method=head.method.decode("ascii"),
        path=target.path,
        query=tuple(parse_qsl(target.query, keep_blank_values=True)),
        headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
        body=body,
    )


def _check_head(head: h11.Request) -> None:
    """The limits aiohttp holds the controller's heads to: a line's length, a field count."""
    if len(head.target) > LINE_MAX or any(len(k) + len(v) > LINE_MAX for k, v in head.headers):
        raise _Refused(400, f"the request line or a header field is longer than {LINE_MAX} bytes")
    if len(head.headers) > FIELDS_MAX:
        raise _Refused(400, f"more than {FIELDS_MAX} header fields")


def problem_answer(status: int, detail: str) -> Answer:
    """A problem document (problems.py) of `status`, titled with its HTTP phrase."""
    return Answer(status, problem_document(status, HTTPStatus(status).phrase, detail), PROBLEM)


async def listen(
    handler: Handler,
    address: str,
    *,
    limits: ListenerLimits = AGENT_LIMITS,
    registry: CollectorRegistry | None = None,
) -> Listener:
    """Bind `address` (`HOST:PORT`, ValueError if malformed) and serve `handler` there.

    `limits` and `registry` as http_server.serve's: refusals are counted on `registry` as
    `egresswatch_http_connections_refused_total{reason}`. A bind that fails leaves nothing open
    and raises ListenError naming the address. The caller stops it with `await close()`.
    """
    host, port = parse_listen(address)
    guarded = guarding(address, limits, registry)
    listener = Listener(handler, guarded, limits)
    try:
        await listener.bind(host, port)
    except OSError as exc:
        guarded.refusals.close()
        raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    guarded.accept_errors.install()
    return listener
