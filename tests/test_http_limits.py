"""The listener's limits (http_limits, http_guard, http_protocol) against real loopback sockets.

Each test runs against both listeners: the controller's (aiohttp, http_server.serve) and an
agent's (h11, agent/listener.listen), which must hold connections to the same rules.
These also pin the aiohttp internals the controller's listener leans on (a RequestHandler
subclass, its handle_error, Server.request_handler, BaseSite._server): an aiohttp upgrade that
changes them fails here. Deadlines are a fraction of a second; assertions on time are loose
bounds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from egresswatch.agent import listener as agent_listener
from egresswatch.http_guard import (
    ACCEPT_OUT_OF_RESOURCES,
    REFUSALS,
    AcceptErrors,
    ConnectionGuard,
    ListenerMetrics,
    RefusalLog,
)
from egresswatch.http_limits import (
    AGENT_LIMITS,
    CONTROLLER_LIMITS,
    FD_RESERVE,
    ListenerLimits,
    nofile_soft,
)
from egresswatch.http_server import serve

HOST = "127.0.0.1"
FAST = ListenerLimits(
    head_timeout_s=0.3, idle_timeout_s=0.3, body_timeout_s=0.3, max_connections=8, max_per_peer=4
)
READ_S = 5.0  # the longest any read here waits: far past every deadline above


@dataclass
class Listener:
    port: int
    registry: CollectorRegistry
    release: asyncio.Event  # /wait answers once set

    def refused(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "egresswatch_http_connections_refused_total", {"reason": reason}
        )
        assert value is not None
        return value

    def held(self) -> float:
        value = self.registry.get_sample_value("egresswatch_http_connections_open")
        assert value is not None
        return value

    async def connect(
        self, source: str = HOST
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(HOST, self.port, local_addr=(source, 0))

    async def exchange(self, data: bytes, source: str = HOST) -> tuple[float, bytes]:
        """Send `data`, read until the server closes; (seconds until closed, what came)."""
        reader, writer = await self.connect(source)
        try:
            started = time.monotonic()
            writer.write(data)
            answer = await asyncio.wait_for(reader.read(), READ_S)
            return time.monotonic() - started, answer
        finally:
            writer.close()


def _app(release: asyncio.Event) -> web.Application:
    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"hello": True})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"size": len(await request.read())})

    async def wait(_: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"waited": True})

    async def broken(_: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/wait", wait)
    app.router.add_get("/broken", broken)
    return app


def _agent_handler(release: asyncio.Event) -> agent_listener.Handler:
    """The routes of `_app`, for an agent's listener."""

    def answer(body: object) -> agent_listener.Answer:
        return agent_listener.Answer(200, json.dumps(body).encode())

    async def handle(request: agent_listener.Request) -> agent_listener.Answer:
        if request.path == "/echo":
            return answer({"size": len(request.body)})
        if request.path == "/wait":
            await release.wait()
            return answer({"waited": True})
        if request.path == "/broken":
            raise RuntimeError("a bug")
        return answer({"hello": True})

    return handle


@asynccontextmanager
async def _controller(limits: ListenerLimits) -> AsyncIterator[Listener]:
    registry, release = CollectorRegistry(), asyncio.Event()
    runner, (_, port) = await serve(_app(release), f"{HOST}:0", limits=limits, registry=registry)
    try:
        yield Listener(port, registry, release)
    finally:
        release.set()
        await runner.cleanup()


@asynccontextmanager
async def _agent(limits: ListenerLimits) -> AsyncIterator[Listener]:
    registry, release = CollectorRegistry(), asyncio.Event()
    served = await agent_listener.listen(
        _agent_handler(release), f"{HOST}:0", limits=limits, registry=registry
    )
    try:
        yield Listener(served.address[1], registry, release)
    finally:
        release.set()
        await served.close()


Listening = Callable[..., AbstractAsyncContextManager[Listener]]


@pytest.fixture(params=["controller", "agent"])
def listening(request: pytest.FixtureRequest) -> Listening:
    """`listening(limits=FAST)`: a listener of the kind the test is run for."""
    kind = _controller if request.param == "controller" else _agent

    def start(limits: ListenerLimits = FAST) -> AbstractAsyncContextManager[Listener]:
        return kind(limits)

    return start


def _problem(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower(), head
    return int(head.split()[1]), json.loads(body)


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- deadlines ------------------------------------------------------------------------------------


async def test_half_a_head_is_cut_at_the_head_deadline_and_counted(
    caplog: pytest.LogCaptureFixture,
    listening: Listening,
) -> None:
    async with listening() as server:
        took, answer = await server.exchange(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert answer == b""  # cut, not answered
        assert FAST.head_timeout_s * 0.8 <= took < READ_S
        assert server.refused("head_timeout") == 1
        assert server.held() == 0
    assert not _errors(caplog)


async def test_a_head_sent_in_time_is_answered_then_the_idle_connection_closes_quietly(
    listening: Listening,
) -> None:
    async with listening() as server:
        took, answer = await server.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK") and b'{"hello": true}' in answer
        assert FAST.idle_timeout_s * 0.8 <= took < READ_S  # kept alive, then closed
        assert [server.refused(reason) for reason in REFUSALS] == [0] * len(REFUSALS)


async def test_a_keep_alive_connection_serves_a_second_request(listening: Listening) -> None:
    async with listening() as server, aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.get(f"http://{HOST}:{server.port}/") as response:
                assert response.status == 200
        assert server.held() == 1  # one connection, both requests


async def test_a_slow_body_is_cut_at_the_body_deadline_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
    listening: Listening,
) -> None:
    async with listening() as server:
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        took, answer = await server.exchange(head + b"only some")
        assert answer == b""
        assert FAST.body_timeout_s * 0.8 <= took < READ_S
        assert server.refused("body_timeout") == 1
        # A whole body is read and answered.
        _, answer = await server.exchange(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
        )
        assert b'{"size": 3}' in answer
    assert not _errors(caplog)


# -- caps -----------------------------------------------------------------------------------------


async def test_over_the_per_peer_cap_a_connection_is_closed_at_once_others_are_served(
    listening: Listening,
) -> None:
    async with listening() as server:
        held = [await server.connect("127.0.0.2") for _ in range(FAST.max_per_peer)]
        took, answer = await server.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.2")
        assert answer == b"" and took < FAST.head_timeout_s  # closed at once, not cut later
        assert server.refused("peer_limit") == 1
        _, answer = await server.exchange(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "127.0.0.3"
        )
        assert answer.startswith(b"HTTP/1.1 200 OK")
        for _, writer in held:
            writer.close()


async def test_at_the_total_cap_the_oldest_waiting_connection_makes_room(
    listening: Listening,
) -> None:
    limits = ListenerLimits(head_timeout_s=30, max_connections=4, max_per_peer=100)
    async with listening(limits) as server:
        silent = [await server.connect("127.0.0.2") for _ in range(4)]
        await asyncio.sleep(0.1)  # all four held, waiting for a head
        _, answer = await server.exchange(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert server.refused("evicted") == 1
        # The oldest went: it reads the end of its stream, well before its head deadline.
        assert await asyncio.wait_for(silent[0][0].read(), READ_S) == b""
        assert server.held() == 3
        for _, writer in silent:
            writer.close()


async def test_at_the_total_cap_with_every_connection_busy_a_new_one_is_refused(
    listening: Listening,
) -> None:
    limits = ListenerLimits(max_connections=2, max_per_peer=100)
    async with listening(limits) as server:
        busy = [await server.connect() for _ in range(2)]
        for _, writer in busy:
            writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(READ_S):
            while server.held() < 2:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # both heads read: the handlers wait
        _, answer = await server.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer == b""
        assert server.refused("total_limit") == 1
        server.release.set()
        for reader, writer in busy:
            assert (await asyncio.wait_for(reader.readline(), READ_S)).startswith(b"HTTP/1.1 200")
            writer.close()


def test_the_cap_stays_under_the_descriptor_limit() -> None:
    assert CONTROLLER_LIMITS.connection_cap(None) == CONTROLLER_LIMITS.max_connections
    assert CONTROLLER_LIMITS.connection_cap(4096) == (4096 - FD_RESERVE) // 2
    assert CONTROLLER_LIMITS.connection_cap(1_048_576) == CONTROLLER_LIMITS.max_connections
    assert CONTROLLER_LIMITS.connection_cap(100) == 1  # never 0: the listener still answers
    assert AGENT_LIMITS.connection_cap(1024) == AGENT_LIMITS.max_connections
    limit = nofile_soft()
    assert limit is None or CONTROLLER_LIMITS.connection_cap(limit) < limit


@pytest.mark.parametrize(
    "field, value",
    [("head_timeout_s", 0), ("body_timeout_s", -1.0), ("max_per_peer", float("nan"))],
)
def test_limits_name_the_bad_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"^listener limit {field}: must be above 0"):
        ListenerLimits(**{field: value})  # type: ignore[arg-type]


# -- refused heads ------------------------------------------------------------------------------

BAD_HEADS = {
    "long URL": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "long header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
    "many headers": b"GET / HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
    + b"\r\n",
    "TLS": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    "no colon": b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_HEADS))
async def test_a_head_the_parser_refuses_gets_a_problem_document_and_no_traceback(
    name: str, caplog: pytest.LogCaptureFixture, listening: Listening
) -> None:
    async with listening() as server:
        took, answer = await server.exchange(BAD_HEADS[name])
        status, document = _problem(answer)
        assert status == document["status"] == 400
        assert document["title"] == "Bad Request"
        assert document["detail"]
        assert b"aaaaaaaa" not in answer  # what the client sent is not echoed
        assert took < FAST.head_timeout_s  # answered, not left to time out
        assert server.refused("bad_request") == 1
    assert not _errors(caplog)


async def test_a_handler_bug_is_a_problem_document_and_its_traceback_is_logged(
    caplog: pytest.LogCaptureFixture,
    listening: Listening,
) -> None:
    async with listening() as server:
        _, answer = await server.exchange(b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")
        status, document = _problem(answer)
        assert status == document["status"] == 500
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)


# -- the log --------------------------------------------------------------------------------------


async def test_refusals_log_a_line_when_they_start_counts_then_a_line_when_they_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="egresswatch.http_guard")
    refusals = RefusalLog("127.0.0.1:1", asyncio.get_running_loop(), every_s=0.1)
    guard = ConnectionGuard(1, 1, ListenerMetrics(CollectorRegistry()), refusals)
    try:
        for _ in range(1000):
            guard.count("peer_limit")
        guard.count("head_timeout")
        await asyncio.sleep(0.15)  # one report: the counts
        await asyncio.sleep(0.1)  # a quiet period: stopped
        events = [(r.getMessage(), getattr(r, "refused", None)) for r in caplog.records]
    finally:
        refusals.close()
    assert events == [
        ("http listener refusing connections", None),
        ("http listener still refusing connections", {"peer_limit": 1000, "head_timeout": 1}),
        ("http listener no longer refusing connections", {"peer_limit": 1000, "head_timeout": 1}),
    ]


async def test_accept_out_of_descriptors_is_counted_not_logged_with_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: seen.append(context))
    registry = CollectorRegistry()
    refusals = RefusalLog("127.0.0.1:1", loop)
    accept_errors = AcceptErrors(loop, ConnectionGuard(1, 1, ListenerMetrics(registry), refusals))
    accept_errors.install()
    try:
        error = OSError(24, "Too many open files")
        for _ in range(100):  # what asyncio calls, once a second per listening socket
            loop.call_exception_handler({"message": ACCEPT_OUT_OF_RESOURCES, "exception": error})
        loop.call_exception_handler({"message": "something else"})
    finally:
        accept_errors.uninstall()
        refusals.close()
    count = registry.get_sample_value(
        "egresswatch_http_connections_refused_total", {"reason": "accept_failed"}
    )
    assert count == 100
    assert seen == [{"message": "something else"}]  # the rest still reach the old handler
    assert not _errors(caplog)
    assert len(caplog.records) == 1  # "refusing connections", once
    assert loop.get_exception_handler() is not None  # the old one is back
    loop.set_exception_handler(None)
