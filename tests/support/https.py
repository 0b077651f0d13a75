"""Real HTTP(S) servers on 127.0.0.1 for tests, with certificates from CAs made in the test.

    pki.ca_file                       # the test CA's PEM, for TlsOptions(ca_file=...)
    server = await local_servers.https(Reply(503))            # trusted cert, answers 503
    server = await local_servers.https(cert="expired")        # or "wrong_name", "foreign"
    server = await local_servers.http(Reply(470, body=b"Action: Deny"))
    server = await local_servers.reset_after_hello()          # RST after the first read
    server = await local_servers.close_after_hello()          # FIN after the first read
    server = await local_servers.reset_unprompted()           # RST soon after the accept
    server = await local_servers.close_unprompted()           # FIN soon after the accept
    server = await local_servers.silent()                     # accepts, never answers
    server = await local_servers.raw(b"SSH-2.0-OpenSSH_9.6\\r\\n")  # not HTTP
    server.port, server.requests                              # requests: raw heads received
    closed_port()                                             # nothing listens there
    with unanswered_port() as port: ...                       # connecting times out

Every certificate names `endpoint.test` (never resolved: only used as SNI and Host) and
127.0.0.1, except the wrong-name one (`other.test`). The foreign one is issued by an unknown
CA named like a TLS-inspecting firewall, as in the interception case. Servers run in the
test's event loop and are closed, with their connections, at teardown. Import the fixtures
`pki` and `local_servers` explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

NAME = "endpoint.test"
HOST = "127.0.0.1"
CA_ORG = "egresswatch test CA"
FOREIGN_ORG = "Corp TLS Inspection"
_HEAD_LIMIT = 64 * 1024
_READ_S = 5.0  # a client that sends nothing is dropped after this
_CLOSE_WAIT_S = 1.0
_FILL_ATTEMPTS = 16
# How long an unprompted server waits before cutting: after the client's connect completes
# (the server runs in the client's event loop), well within the probe's 150 ms grace read.
_UNPROMPTED_S = 0.01


@dataclass(frozen=True)
class Pki:
    """The test CA (trusted through `ca_file`) and server contexts for each certificate."""

    ca_file: Path
    contexts: dict[str, ssl.SSLContext]  # trusted, expired, wrong_name, foreign


def make_pki(directory: Path) -> Pki:
    """Issue the certificates and write the trusted CA's PEM into `directory`."""
    ca = trustme.CA(organization_name=CA_ORG)
    foreign_ca = trustme.CA(organization_name=FOREIGN_ORG)
    now = datetime.now(UTC)
    leaves = {
        "trusted": ca.issue_cert(NAME, HOST, common_name=NAME),
        "expired": ca.issue_cert(
            NAME,
            HOST,
            common_name=NAME,
            not_before=now - timedelta(days=60),
            not_after=now - timedelta(days=2),
        ),
        "wrong_name": ca.issue_cert("other.test", common_name="other.test"),
        "foreign": foreign_ca.issue_cert(NAME, HOST, common_name=NAME),
    }
    contexts = {}
    for name, leaf in leaves.items():
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(context)
        contexts[name] = context
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(ca_file, contexts)


@dataclass(frozen=True)
class Reply:
    """What a server answers to any request."""

    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    phrase: str | None = None  # default: the standard phrase, or Azure Firewall's for 470

    def encode(self) -> bytes:
        phrase = self.phrase or _phrase(self.status)
        lines = [f"HTTP/1.1 {self.status} {phrase}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines += [f"Content-Length: {len(self.body)}", "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def _phrase(status: int) -> str:
    if status == 470:
        return "status code 470"  # what Azure Firewall sends
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago): connecting is refused."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port where connecting times out (as behind a silent drop), without root.

    The listener never accepts and its accept queue is filled, so the kernel drops further
    SYNs. Bounded: at most _FILL_ATTEMPTS connections are made to fill it.
    """
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind((HOST, 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(_FILL_ATTEMPTS):
            client = stack.enter_context(socket.socket())
            client.settimeout(0.2)
            try:
                client.connect((HOST, port))
            except TimeoutError:
                yield port
                return
        pytest.skip("could not fill a listen queue on loopback to make connects time out")


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class LocalServer:
    """One listening server on 127.0.0.1; `requests` holds the request heads it received,
    `connections` counts the connections it served (for TLS: those whose handshake worked)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, handler: Handler, context: ssl.SSLContext | None) -> LocalServer:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.connections += 1
            self._writers.add(writer)
            self._tasks.add(task)
            try:
                await handler(reader, writer)
            except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError):
                pass  # the client under test may well break the connection: that is the point
            except asyncio.CancelledError:
                # Python 3.11's start_server logs a cancelled handler as an error; the
                # handler's owner (close) is the one cancelling, so end quietly.
                pass
            finally:
                self._writers.discard(writer)
                writer.transport.abort()

        self._server = await asyncio.start_server(tracked, HOST, 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        async with asyncio.timeout(_READ_S):
            head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _HEAD_LIMIT:
            raise OSError("request head too long")
        self.requests.append(head)
        return head

    async def close(self) -> None:
        """Stop listening, cut every connection, and wait (bounded) for the handlers to end."""
        for writer in list(self._writers):
            writer.transport.abort()
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=_CLOSE_WAIT_S)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=_CLOSE_WAIT_S)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _reset_on_close(writer: asyncio.StreamWriter) -> None:
    """SO_LINGER with a zero timeout: the handler's close (the transport's abort) sends RST."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class LocalServers:
    """A factory of servers, all closed at teardown."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self._servers: list[LocalServer] = []

    async def _start(self, handler: Handler, context: ssl.SSLContext | None) -> LocalServer:
        server = LocalServer()
        self._servers.append(server)
        return await server.start(handler, context)

    async def https(self, reply: Reply | None = None, *, cert: str = "trusted") -> LocalServer:
        return await self._replying(reply or Reply(), self.pki.contexts[cert])

    async def http(self, reply: Reply | None = None) -> LocalServer:
        return await self._replying(reply or Reply(), None)

    async def _replying(self, reply: Reply, context: ssl.SSLContext | None) -> LocalServer:
        server = LocalServer()

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(reply.encode())
            await writer.drain()
            writer.close()

        self._servers.append(server)
        return await server.start(answer, context)

    async def reset_after_hello(self) -> LocalServer:
        """Reads the first bytes (the ClientHello), then resets: how firewalls refuse TLS."""

        async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(4096)
            _reset_on_close(writer)

        return await self._start(reset, None)

    async def reset_unprompted(self) -> LocalServer:
        """Accepts, then resets without reading a byte, whatever the client sends: a load
        balancer with no healthy backend."""

        async def reset(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(_UNPROMPTED_S)
            _reset_on_close(writer)

        return await self._start(reset, None)

    async def close_unprompted(self) -> LocalServer:
        """Accepts, then closes cleanly (FIN) without reading a byte, whatever is sent."""

        async def close(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(_UNPROMPTED_S)
            writer.close()
            await writer.wait_closed()

        return await self._start(close, None)

    async def close_after_hello(self) -> LocalServer:
        """Reads the first bytes, then closes cleanly (FIN) without answering."""

        async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(4096)
            writer.close()
            await writer.wait_closed()

        return await self._start(close, None)

    async def silent(self) -> LocalServer:
        """Accepts and reads, never answers (a drop after the handshake)."""

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async with asyncio.timeout(_READ_S):
                while await reader.read(4096):
                    pass

        return await self._start(hold, None)

    async def raw(self, data: bytes, *, tls: bool = False) -> LocalServer:
        """Answers anything with `data` (e.g. an SSH banner), then closes."""

        async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(4096)
            writer.write(data)
            await writer.drain()
            writer.close()

        return await self._start(send, self.pki.contexts["trusted"] if tls else None)

    async def close(self) -> None:
        for server in self._servers:
            await server.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def local_servers(pki: Pki) -> AsyncIterator[LocalServers]:
    servers = LocalServers(pki)
    try:
        yield servers
    finally:
        await servers.close()
