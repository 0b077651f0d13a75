"""aiohttp's connection protocol with time limits, caps and problem documents for bad heads.

aiohttp has no deadline for a request's head or body: a client that sends half a head holds
its connection (aiohttp's keep-alive timer, 3630 s by default, is the only bound). This module
is the seam, kept small because part of it leans on aiohttp internals (pinned by
tests/test_http_limits.py, so an aiohttp upgrade that changes them fails CI):

- `GuardedHandler` subclasses `aiohttp.web_protocol.RequestHandler` (the per-connection
  protocol). It overrides the asyncio protocol methods (public) to admit the connection and
  run one timer per phase, and `handle_error` (aiohttp calls it for a head its parser refuses,
  and for a handler's unhandled exception) to answer with a problem document.
- `guard_requests` wraps `Server.request_handler` (a public attribute, read by each
  RequestHandler when made) to learn when a head has arrived and when its answer is done.
- `GuardedSite` is a `web.BaseSite` that makes GuardedHandlers instead of the runner's own
  protocols; it sets `BaseSite._server`, as aiohttp's TCPSite does, so `stop()` closes it.
- `GuardedRunner` is an AppRunner whose `cleanup()` also stops the guard's timers.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from egresswatch.http_guard import AcceptErrors, ConnectionGuard, Refusal, RefusalLog
from egresswatch.http_limits import ListenerLimits
from egresswatch.problems import problem

__all__ = ["GuardedHandler", "GuardedRunner", "GuardedSite", "guard_requests"]

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Phase(enum.Enum):
    HEAD = "head"  # waiting for a request head, bytes of it may have come
    IDLE = "idle"  # answered, waiting for a next request on a keep-alive connection
    BODY = "body"  # the head came, its body has not all come
    BUSY = "busy"  # the request is being handled


class GuardedHandler(RequestHandler):
    """One connection: admitted by the guard or closed at once, cut when a phase's time runs
    out (HEAD, BODY: counted; IDLE: quietly), bad heads answered with a problem document."""

    def __init__(
        self,
        manager: web.Server,
        *,
        guard: ConnectionGuard,
        limits: ListenerLimits,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._event_loop = loop
        self._guard = guard
        self._limits = limits
        self._admitted = False
        self._phase = Phase.HEAD
        self._timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None
        self.was_cut = False  # the listener closed it (a deadline, an eviction)

    # -- the asyncio protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if self._guard.admit(self, str(peer[0]) if peer else "") is not None:
            # Refused (counted by the guard) and never shown to aiohttp; abort: nothing to send.
            cast(asyncio.Transport, transport).abort()
            return
        self._admitted = True
        super().connection_made(transport)
        self._enter(Phase.HEAD, self._limits.head_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._phase is Phase.IDLE and data:
            # The next request began: its head has head_timeout_s from its first byte.
            self._enter(Phase.HEAD, self._limits.head_timeout_s)
        super().data_received(data)
        if self._phase is Phase.BODY and self._body is not None and self._body.is_eof():
            self._enter(Phase.BUSY, None)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._stop_timer()
        self._guard.release(self)
        super().connection_lost(exc)

    # -- what guard_requests and the guard call ---------------------------------------------

    def head_arrived(self, body: StreamReader) -> None:
        """A request head is complete; its body (if any) must follow within body_timeout_s."""
        if body.is_eof():
            self._enter(Phase.BUSY, None)
        else:
            self._body = body
            self._enter(Phase.BODY, self._limits.body_timeout_s)

    def answered(self) -> None:
        """The handler returned: from now the connection idles until a next request."""
        self._body = None
        if not self.was_cut:
            self._enter(Phase.IDLE, self._limits.idle_timeout_s)

    def cut(self, reason: Refusal | None) -> None:
        """Close the connection now; `reason` is counted by the guard unless None (an idle
        keep-alive connection closed is no refusal)."""
        if self.was_cut:
            return
        self.was_cut = True
        self._stop_timer()
        if reason is not None:
            self._guard.count(reason)
        self.force_close()

    # -- aiohttp's error answer -------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A problem document instead of aiohttp's text/plain. A head the parser refused is the
        client's fault: counted (`bad_request`), not logged. A 5xx is ours: its traceback is
        logged, as aiohttp does."""
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
        else:
            self._stop_timer()
            self._guard.count("bad_request")
        if request.writer.output_size > 0:  # some of an answer went out: nothing more can
            raise ConnectionError("an answer was partly sent; no error answer can follow")
        answer = problem(status, _phrase(status), _detail(status, exc, self.max_line_size))
        answer.force_close()
        return answer

    # -- the timer ----------------------------------------------------------------------------

    def _enter(self, phase: Phase, limit_s: float | None) -> None:
        self._stop_timer()
        self._phase = phase
        if phase in (Phase.HEAD, Phase.IDLE):
            self._guard.waiting(self)
        else:
            self._guard.busy(self)
        if limit_s is not None:
            self._timer = self._event_loop.call_later(limit_s, self._expired)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        reasons: dict[Phase, Refusal | None] = {
            Phase.HEAD: "head_timeout",
            Phase.BODY: "body_timeout",
            Phase.IDLE: None,
        }
        self.cut(reasons.get(self._phase))


def guard_requests(handler: Handler) -> Handler:
    """`handler` (the server's), telling each GuardedHandler when its head arrived and when
    its handler returned. A handler that fails because its connection was cut (a body's
    deadline) leaves as 408, which aiohttp neither logs nor can send: nothing is logged."""

    async def guarded(request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if not isinstance(protocol, GuardedHandler):
            return await handler(request)
        protocol.head_arrived(request.content)
        try:
            return await handler(request)
        except Exception:
            if protocol.was_cut:
                raise web.HTTPRequestTimeout() from None
            raise
        finally:
            protocol.answered()

    return guarded


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _detail(status: int, exc: BaseException | None, line_max: int) -> str:
    """What was wrong, in words, without echoing what the client sent."""
    if isinstance(exc, LineTooLong):
        return f"the request line or a header field is longer than {line_max} bytes"
    if isinstance(exc, BadHttpMethod):
        return "not an HTTP request (TLS or another protocol sent to this HTTP port?)"
    if isinstance(exc, HttpProcessingError):
        first = exc.message.strip().splitlines()[0] if exc.message.strip() else ""
        return f"malformed request head: {first[:120]}" if first else "malformed request head"
    if status >= 500:
        return "the server failed to answer this request; its log has the cause"
    return _phrase(status)


class GuardedSite(web.BaseSite):
    """A TCP site on (host, port) whose connections are GuardedHandlers of `guard`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard,
        limits: ListenerLimits,
        handler_args: dict[str, Any],
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._guard = guard
        self._limits = limits
        self._handler_args = handler_args

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def sockets(self) -> tuple[Any, ...]:
        server = cast(asyncio.Server | None, self._server)
        return tuple(server.sockets) if server is not None else ()

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None  # setup() made it

        def connection() -> GuardedHandler:
            return GuardedHandler(
                server, guard=self._guard, limits=self._limits, loop=loop, **self._handler_args
            )

        self._server = await loop.create_server(
            connection, self._host, self._port, reuse_address=True
        )


class GuardedRunner(web.AppRunner):
    """An AppRunner that also owns the guard's log timer and the loop's accept-error handler:
    `cleanup()` stops both."""

    def __init__(
        self, app: web.Application, *, refusals: RefusalLog, accept_errors: AcceptErrors
    ) -> None:
        super().__init__(app, access_log=None)
        self._refusals = refusals
        self._accept_errors = accept_errors

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            self._accept_errors.uninstall()
            self._refusals.close()
