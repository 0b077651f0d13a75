"""The agent's HTTP/1.1 client to its controller: asyncio streams and h11, no aiohttp.

An agent talks to one controller, one request at a time per user (the plan follower, the
result sink), so it needs one keep-alive connection, not a client library's pools, cookies
and redirects; aiohttp, for this and agent/listener.py, cost the agent's process 10 MiB of
RSS (docs/performance.md, "An agent's footprint"). h11 does the HTTP (framing, chunked
bodies, keep-alive rules); this module moves the bytes.

Contract of :class:`ControllerClient`:

- :meth:`ControllerClient.request` sends one request and returns the whole answer, read to
  its end (never one read()), at most `max_body` bytes of it kept (`Answer.truncated` says
  the rest was left, and the connection is then closed rather than drained).
- All of it (connect, TLS handshake, sending, the head, the body) must be done within
  `timeout_s`, else TimeoutError; a connection left mid-exchange is closed.
- One keep-alive connection is reused while both sides keep it; a reused connection that the
  controller had closed meanwhile (no byte of an answer came back) is replaced by a new one
  and the request sent again, once: the requests the agent makes are safe to repeat (a GET
  of the plan; a batch whose id the controller stores once).
- Failures are `HttpError` (the connection, or an answer that is not HTTP), TimeoutError or
  OSError; the caller turns them into its own words.
- `https://` controllers are verified with `tls`, a context from :func:`verified_context`
  (the system's trust store, plus a CA file when given: a controller behind a cluster's own
  CA); build it once per process and pass it to each client (a context with the system's
  trust store costs 2 MiB and 20 ms). Without one a client builds its own, at its first
  request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import h11

__all__ = ["Answer", "ControllerClient", "Headers", "HttpError", "verified_context"]

READ_SIZE = 64 * 1024
_ANSWER_EVENTS = (h11.InformationalResponse, h11.Response, h11.Data, h11.EndOfMessage)


class HttpError(Exception):
    """The exchange failed: the connection broke, or the answer was not HTTP/1.1."""


class Headers(Mapping[str, str]):
    """An answer's header fields, read by name in any case (`Retry-After`, `retry-after`);
    a repeated field reads as its first value."""

    def __init__(self, fields: Sequence[tuple[bytes, bytes]]) -> None:
        self._fields: dict[str, str] = {}
        for name, value in fields:
            self._fields.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


@dataclass(frozen=True)
class Answer:
    """An answer: its status, header fields and body (at most the request's `max_body`
    bytes; `truncated` when there was more)."""

    status: int
    headers: Headers
    body: bytes
    truncated: bool = False


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    used: bool = False  # an exchange was done on it: the other side may have closed it since
    received: int = 0  # bytes of the current exchange's answer read so far

    def idle(self) -> bool:
        """Between exchanges and, as far as this side knows, still open."""
        return (
            self.http.our_state is h11.IDLE
            and self.http.their_state is h11.IDLE
            and not self.writer.is_closing()
            and not self.reader.at_eof()
        )

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A reused connection was closed by the other side before any byte of an answer."""


class ControllerClient:
    """Requests to one controller (`base_url`: `http(s)://host[:port][/prefix]`) on one
    keep-alive connection; see the module docstring. Not for concurrent requests: each user
    holds its own client. :meth:`close` closes the connection; the client stays usable."""

    def __init__(
        self,
        base_url: str,
        *,
        user_agent: str,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"controller URL: expected http(s)://host[:port], got {base_url!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        # The Host field: the URL's own spelling of host and port (brackets of IPv6 kept).
        self._authority = parts.netloc.rpartition("@")[2]
        self._user_agent = user_agent
        self._context = tls
        self._connection: _Connection | None = None

    def url(self, path: str) -> str:
        """The full URL of `path` (for messages)."""
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self._authority}{self._prefix}{path}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeout_s: float,
        max_body: int,
    ) -> Answer:
        """One exchange; see the module docstring for its limits and errors."""
        target = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        head = self._head(target, headers or {}, body, method)
        async with asyncio.timeout(timeout_s):
            try:
                return await self._exchange(head, body, max_body)
            except _Stale:
                return await self._exchange(head, body, max_body)

    async def close(self) -> None:
        """Close the keep-alive connection, if one is open. Idempotent."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
            # Closing a connection that broke: nothing to do about it.
            with contextlib.suppress(OSError, ssl.SSLError):
                await connection.writer.wait_closed()

    # -- the exchange -----------------------------------------------------------------------

    def _head(
        self, target: str, headers: Mapping[str, str], body: bytes, method: str
    ) -> h11.Request:
        fields = [("Host", self._authority), ("User-Agent", self._user_agent)]
        fields += list(headers.items())
        if body or method in ("POST", "PUT"):
            fields.append(("Content-Length", str(len(body))))
        return h11.Request(method=method, target=target, headers=fields)

    async def _exchange(self, head: h11.Request, body: bytes, max_body: int) -> Answer:
        connection = await self._connect()
        try:
            answer = await self._send_and_read(connection, head, body, max_body)
        except BaseException:
            # Mid-exchange (an error, the deadline, a cancellation): the connection's state is
            # unknown, so it is never reused.
            self._drop(connection)
            raise
        http = connection.http
        if answer.truncated or not (http.our_state is http.their_state is h11.DONE):
            self._drop(connection)  # the controller said close, or the rest was not read
        else:
            http.start_next_cycle()
        return answer

    async def _send_and_read(
        self, connection: _Connection, head: h11.Request, body: bytes, max_body: int
    ) -> Answer:
        http, stale = connection.http, connection.used
        connection.used, connection.received = True, 0
        data = http.send(head) + (http.send(h11.Data(data=body)) if body else b"")
        connection.writer.write(data + http.send(h11.EndOfMessage()))
        try:
            await connection.writer.drain()
            response = await self._response(connection)
        except (ConnectionError, HttpError) as exc:
            if stale and not connection.received:
                raise _Stale() from exc
            raise
        return await self._body(connection, response, max_body)

    async def _response(self, connection: _Connection) -> h11.Response:
        while True:
            event = await self._next_event(connection)
            if isinstance(event, h11.Response):
                return event
            # InformationalResponse (100 Continue and the like): the real answer follows.

    async def _body(self, connection: _Connection, response: h11.Response, limit: int) -> Answer:
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event(connection)
            if isinstance(event, h11.EndOfMessage):
                break
            if isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
                size += len(event.data)
                if size > limit:  # the rest is not read: the connection goes instead
                    body = b"".join(chunks)[:limit]
                    return Answer(response.status_code, Headers(response.headers), body, True)
        return Answer(response.status_code, Headers(response.headers), b"".join(chunks))

    async def _next_event(
        self, connection: _Connection
    ) -> h11.InformationalResponse | h11.Response | h11.Data | h11.EndOfMessage:
        http = connection.http
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                if connection.reader.at_eof():
                    raise HttpError("the connection was closed before the answer's end") from None
                raise HttpError(f"the answer is not HTTP/1.1: {exc}") from None
            if event is h11.NEED_DATA:
                if connection.reader.at_eof():  # h11 wants more, and there is no more
                    raise HttpError("the connection was closed before the answer's end")
                data = await connection.reader.read(READ_SIZE)
                connection.received += len(data)
                # b"" tells h11 the stream ended: the end of a body read until close, else
                # an error (RemoteProtocolError, ConnectionClosed).
                http.receive_data(data)
                continue
            if not isinstance(event, _ANSWER_EVENTS):  # ConnectionClosed, PAUSED
                raise HttpError("the connection was closed before the answer's end")
            return event

    # -- the connection ---------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        connection = self._connection
        if connection is not None and connection.idle():
            return connection
        if connection is not None:
            self._drop(connection)
        context = self._ssl_context() if self._tls else None
        reader, writer = await asyncio.open_connection(
            self._host,
            self._port,
            ssl=context,
            server_hostname=self._host if context is not None else None,
            limit=READ_SIZE,
        )
        self._connection = _Connection(reader, writer)
        return self._connection

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        if self._connection is connection:
            self._connection = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = verified_context(None)
        return self._context


def verified_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context that verifies the controller: the system's trust store, plus `ca_file`
    when given."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context
