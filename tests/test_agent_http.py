"""The agent's HTTP without aiohttp: its client to the controller (agent/http_client.py) and its
health routes on its own listener (agent/health.py, agent/listener.py), against real loopback
servers. The listener's limits are tests/test_http_limits.py's, run against both listeners."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from egresswatch.agent.health import health_handler
from egresswatch.agent.http_client import ControllerClient, HttpError, verified_context
from egresswatch.agent.listener import listen
from tests.support.https import HOST, LocalServer, Pki, pki

__all__ = ["pki"]  # a fixture

TIMEOUT_S = 5.0  # far past anything a loopback exchange takes
Serve = Callable[[LocalServer, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def kept(body: bytes = b'{"ok": true}', status: int = 200, phrase: str = "OK") -> bytes:
    """An answer that keeps the connection open."""
    head = f"HTTP/1.1 {status} {phrase}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


@asynccontextmanager
async def server(serve: Serve, context: ssl.SSLContext | None = None) -> AsyncIterator[LocalServer]:
    local = LocalServer()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve(local, reader, writer)

    await local.start(handler, context)
    try:
        yield local
    finally:
        await local.close()


@asynccontextmanager
async def client_of(
    local: LocalServer, scheme: str = "http", **kwargs: object
) -> AsyncIterator[ControllerClient]:
    client = ControllerClient(f"{scheme}://{HOST}:{local.port}", user_agent="ua/1", **kwargs)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        await client.close()


async def get(client: ControllerClient, max_body: int = 1024) -> tuple[int, bytes, bool]:
    answer = await client.request("GET", "/x", timeout_s=TIMEOUT_S, max_body=max_body)
    return answer.status, answer.body, answer.truncated


async def answer_every_request(
    local: LocalServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while True:
        head = await local.read_request(reader)
        if b"content-length: 4\r\n" in head.lower():
            await reader.readexactly(4)
        writer.write(kept())
        await writer.drain()


# -- the client ---------------------------------------------------------------------------------


async def test_requests_go_on_one_keep_alive_connection_with_their_fields() -> None:
    async with server(answer_every_request) as local, client_of(local) as client:
        assert await get(client) == (200, b'{"ok": true}', False)
        answer = await client.request(
            "POST",
            "/api/v1/results",
            query={"source": "node a"},
            headers={"Authorization": "Bearer t0ken"},
            body=b"body",
            timeout_s=TIMEOUT_S,
            max_body=1024,
        )
        assert answer.status == 200
        assert await get(client) == (200, b'{"ok": true}', False)
    assert local.connections == 1 and len(local.requests) == 3
    post = local.requests[1].decode()
    assert post.startswith("POST /api/v1/results?source=node+a HTTP/1.1\r\n")
    for field in (f"host: {HOST}:{local.port}", "user-agent: ua/1", "authorization: bearer t0ken"):
        assert field in post.lower()


@pytest.mark.parametrize("when", ["after_its_answer", "at_the_next_request"])
async def test_a_connection_the_controller_closed_is_replaced(when: str) -> None:
    """Closed while idle (the controller's idle timeout), or just as the next request went out
    (nothing of an answer came back): the request goes again on a new connection, once."""

    async def close_after_one(
        local: LocalServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await local.read_request(reader)
        writer.write(kept())
        await writer.drain()
        if when == "at_the_next_request":
            await local.read_request(reader)
        writer.close()

    async with server(close_after_one) as local, client_of(local) as client:
        assert (await get(client))[0] == 200
        await asyncio.sleep(0.05)  # the close arrives
        assert (await get(client))[0] == 200
    assert local.connections == 2
    assert len(local.requests) == (3 if when == "at_the_next_request" else 2)


async def test_a_new_connection_closed_before_an_answer_is_an_error_not_a_retry() -> None:
    async def close_at_once(
        local: LocalServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await local.read_request(reader)
        writer.close()

    async with server(close_at_once) as local, client_of(local) as client:
        with pytest.raises(HttpError, match="closed before the answer's end"):
            await get(client)
    assert local.connections == 1


async def test_a_body_is_read_whole_across_chunks_and_bounded() -> None:
    pieces = [b"a" * 3000, b"b" * 3000, b"c" * 3000]

    async def chunked(
        local: LocalServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            await local.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in pieces:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")

    async with server(chunked) as local, client_of(local) as client:
        assert await get(client, max_body=10_000) == (200, b"".join(pieces), False)
        assert await get(client, max_body=4000) == (200, b"a" * 3000 + b"b" * 1000, True)
        # The rest of a cut answer was not read: that connection is not used again.
        assert (await get(client, max_body=10_000))[2] is False
    assert local.connections == 2


@pytest.mark.parametrize("stall", ["before_the_head", "in_the_body"])
async def test_an_answer_that_stalls_times_out_and_the_next_request_starts_afresh(
    stall: str,
) -> None:
    async def stalling(
        local: LocalServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await local.read_request(reader)
        if local.connections == 1:  # the first connection stalls, the next ones answer
            if stall == "in_the_body":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
            await asyncio.sleep(TIMEOUT_S * 2)
        writer.write(kept())
        await writer.drain()

    async with server(stalling) as local, client_of(local) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.request("GET", "/x", timeout_s=0.2, max_body=1024)
        assert time.monotonic() - started < TIMEOUT_S
        assert (await get(client))[0] == 200
    assert local.connections == 2


async def test_https_is_verified_with_the_agents_ca_file(pki: Pki) -> None:
    async with server(answer_every_request, pki.contexts["trusted"]) as local:
        async with client_of(local, "https", tls=verified_context(pki.ca_file)) as client:
            assert (await get(client))[0] == 200
            assert (await get(client))[0] == 200
        assert local.connections == 1
        async with client_of(local, "https") as client:  # the system's trust store alone
            with pytest.raises(ssl.SSLCertVerificationError):
                await get(client)


def test_a_controller_url_that_is_not_http_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^controller URL: expected http"):
        ControllerClient("ftp://controller", user_agent="ua/1")


# -- the health routes --------------------------------------------------------------------------


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        raw = await asyncio.wait_for(reader.read(), TIMEOUT_S)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields, body


async def test_the_agents_health_routes() -> None:
    registry = CollectorRegistry()
    Gauge("egresswatch_test_one", "one", registry=registry).set(1)
    Gauge("egresswatch_test_two", "two", registry=registry).set(2)
    ready = {"plan": False}
    served = await listen(health_handler(registry, lambda: ready), f"{HOST}:0", registry=registry)
    port = served.address[1]

    async def ask(method: str, target: str) -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        return await exchange(port, head.encode())

    try:
        assert (await ask("GET", "/healthz"))[::2] == (200, b'{"status": "ok"}')
        status, _, body = await ask("GET", "/readyz")
        assert status == 503 and json.loads(body)["checks"] == {"plan": False}
        ready["plan"] = True
        assert (await ask("GET", "/readyz"))[0] == 200
        status, fields, body = await ask("HEAD", "/healthz")
        assert (status, fields["content-length"], body) == (200, "16", b"")

        status, fields, body = await ask("GET", "/metrics?name[]=egresswatch_test_two")
        assert status == 200 and fields["content-type"] == CONTENT_TYPE_LATEST
        assert b"egresswatch_test_two 2.0" in body and b"egresswatch_test_one" not in body

        for method, target, want, says in [
            ("GET", "/metrics?name[]=1bad", 400, "name[]: '1bad' is not a metric name"),
            ("GET", "/elsewhere", 404, "the agent serves /healthz, /readyz and /metrics"),
            ("POST", "/healthz", 405, "/healthz answers GET and HEAD only"),
        ]:
            status, fields, body = await ask(method, target)
            assert fields["content-type"] == "application/problem+json"
            assert (status, json.loads(body)["status"]) == (want, want)
            assert json.loads(body)["detail"].startswith(says)
    finally:
        await served.close()
