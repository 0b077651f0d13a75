"""On-demand rounds: a token with the right, a rate limit per target, a round slot like any
round, and one round in flight per target (a request joins the round already running).

The rate limiter and the scheduler's `run_now` alone, then `egresswatch run` as a whole: a
real service on loopback hammered with 2,000 concurrent run requests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from egresswatch.controller.api.ratelimit import RateLimiter, retry_after
from egresswatch.metrics import LATENESS_BUCKETS
from egresswatch.model import RoundResult
from egresswatch.schedule import RoundJob, RoundScheduler
from egresswatch.wiring import Service
from tests.support.dnsserver import dns_server
from tests.support.https import pki
from tests.support.service import HOST, free_port, wait_for
from tests.test_service import Lab, lab, running

__all__ = ["dns_server", "lab", "pki", "running"]  # fixtures, imported explicitly

RUN_TOKEN_ENV = "EGRESSWATCH_TEST_RUN_TOKEN"
RUN_TOKEN = "run-token-for-the-limits-test"
CALLS = 2000
OTHERS = 20  # targets on 1 s timers beside the hammered one: the scheduler's lateness
PEERS = 10  # loopback addresses the callers come from (200 connections each)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_gives_its_burst_then_one_per_period() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=3, every_s=10.0, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [None, None, None]
    wait = limiter.take("a")
    assert wait == pytest.approx(10.0)
    assert limiter.take("b") is None  # per key
    clock.now += 4.0
    assert limiter.take("a") == pytest.approx(6.0)  # refused: nothing taken
    clock.now += 6.0
    assert limiter.take("a") is None
    assert limiter.take("a") == pytest.approx(10.0)
    clock.now += 1000.0  # the bucket holds no more than its burst
    assert [limiter.take("a") is None for _ in range(4)] == [True, True, True, False]
    assert [retry_after(w) for w in (0.01, 1.0, 1.2, 9.99)] == ["1", "1", "2", "10"]
    with pytest.raises(ValueError):
        RateLimiter(burst=0, every_s=1.0)


async def test_run_now_joins_the_round_in_flight_and_takes_a_slot() -> None:
    gate = asyncio.Event()
    started: list[str] = []
    lateness: list[float] = []
    scheduler = RoundScheduler(max_concurrent=1, on_lateness=lateness.append)

    def job(key: str) -> RoundJob:
        async def run() -> str:
            started.append(key)
            await gate.wait()
            return f"result of {key}"

        return RoundJob(key, 3600.0, 30.0, run)

    scheduler.set_jobs([job("pod/a"), job("pod/b")])
    scheduler.start()
    try:
        first = scheduler.run_now("pod/a")
        second = scheduler.run_now("pod/a")
        assert first is not None and second is first  # joined, not a second round
        other = scheduler.run_now("pod/b")
        assert other is not None and other is not first
        await wait_for(lambda: started == ["pod/a"])
        await asyncio.sleep(0.05)
        assert started == ["pod/a"]  # pod/b waits for the one slot
        assert scheduler.run_now("pod/unknown") is None
        gate.set()
        assert await asyncio.wait_for(asyncio.shield(first), 5) == "result of pod/a"
        assert await asyncio.wait_for(asyncio.shield(other), 5) == "result of pod/b"
        assert started == ["pod/a", "pod/b"]
        assert lateness == []  # on-demand rounds were never due
        third = scheduler.run_now("pod/a")
        assert third is not None and third is not first  # the last one ended: a new round
        assert await asyncio.wait_for(asyncio.shield(third), 5) == "result of pod/a"
    finally:
        await scheduler.shutdown()
    assert scheduler.run_now("pod/a") is None  # not running any more


class SlowEndpoint:
    """An HTTP endpoint on loopback that answers after `delay_s` and counts the requests it
    holds at once: two rounds of its target in flight would show as two. (Connections that
    send no request, tcp_connect's, are not counted: their end is seen late.)"""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.open = 0
        self.most_open = 0
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._answer, HOST, 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            writer.close()  # a probe that only connects (tcp_connect) sends nothing
            return
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await asyncio.sleep(self.delay_s)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except OSError:
            pass
        finally:
            self.open -= 1
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def lateness_p99(service: Service) -> float:
    """The upper bound of the bucket holding the 99th percentile of the scheduler's lateness."""
    name = "egresswatch_scheduler_lateness_seconds_bucket"
    total = service.registry.get_sample_value(name, {"le": "+Inf"}) or 0.0
    for bound in LATENESS_BUCKETS:
        below = service.registry.get_sample_value(name, {"le": str(float(bound))}) or 0.0
        if total and below >= 0.99 * total:
            return bound
    return float("inf")


async def post_all(
    url: str, headers: dict[str, str], count: int
) -> tuple[collections.Counter[int], list[float], list[dict[str, Any]]]:
    """`count` concurrent POSTs: the statuses, each answer's time, the 429 problem documents.

    The callers come from PEERS loopback addresses (127.0.0.2, ...), as many clients would:
    the listener holds at most `max_per_peer` connections from one address."""
    statuses: collections.Counter[int] = collections.Counter()
    times: list[float] = []
    limited: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=60)
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(
                        limit=count // PEERS + 1, local_addr=(f"127.0.0.{2 + i}", 0)
                    ),
                    timeout=timeout,
                )
            )
            for i in range(PEERS)
        ]

        async def one(session: aiohttp.ClientSession) -> None:
            began = time.monotonic()
            async with session.post(url, headers=headers) as response:
                body = await response.read()
                statuses[response.status] += 1
                times.append(time.monotonic() - began)
                if response.status == 429 and len(limited) < 5:
                    assert response.headers["Retry-After"].isdigit()
                    assert response.content_type == "application/problem+json"
                    limited.append(json.loads(body))

        await asyncio.gather(*(one(sessions[i % PEERS]) for i in range(count)))
    return statuses, times, limited


async def test_two_thousand_run_calls_start_one_round_at_a_time(
    lab: Lab,
    running: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(RUN_TOKEN_ENV, RUN_TOKEN)
    endpoint = SlowEndpoint(delay_s=0.3)
    port = await endpoint.start()
    closed = free_port()
    targets = [{"name": "busy", "url": f"http://{HOST}:{port}/", "interval": "1h"}]
    targets += [
        {"name": f"other-{i}", "address": f"{HOST}:{closed}", "interval": "1s"}
        for i in range(OTHERS)
    ]
    path = lab.write(
        targets,
        run_token_env=RUN_TOKEN_ENV,
        run_limit={"burst": 3, "every": "1h"},
        max_concurrent_rounds=8,
    )
    busy: list[RoundResult] = []
    service: Service = await running(
        path,
        migrate=True,
        on_round=lambda r: busy.append(r) if r.target == "busy" else None,
    )
    try:
        assert service.listening is not None
        url = "http://{}:{}/api/v1/targets/busy/run".format(*service.listening)
        # A bad or absent token never starts a round.
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer wrong"}, 403),
            ({"Authorization": f"Bearer {RUN_TOKEN}x"}, 403),
        ):
            refused, _, _ = await post_all(url, headers, 100)
            assert refused == {status: 100}
        await asyncio.sleep(1.5)  # the busy endpoint's round would have started by now
        assert (busy, endpoint.connections) == ([], 0)

        began = time.monotonic()
        # The callers on an event loop of their own (a thread): the service's loop does its
        # own work only, as it would with the callers elsewhere.
        statuses, times, limited = await asyncio.to_thread(
            asyncio.run, post_all(url, {"Authorization": f"Bearer {RUN_TOKEN}"}, CALLS)
        )
        took = time.monotonic() - began
        await wait_for(lambda: endpoint.open == 0)
        await wait_for(lambda: len(busy) >= 1, timeout_s=5)  # judged once stored
        await asyncio.sleep(0.2)  # (a second round, were there one, would show by now)
        times.sort()
        print(
            f"\n{CALLS} concurrent run calls in {took:.2f}s: {dict(statuses)}; answer time "
            f"p50 {times[len(times) // 2] * 1000:.0f} ms, "
            f"p99 {times[int(len(times) * 0.99)] * 1000:.0f} ms; "
            f"rounds of the target {len(busy)}, its endpoint's most open connections "
            f"{endpoint.most_open}; scheduler lateness p99 <= {lateness_p99(service)} s"
        )
        assert set(statuses) <= {200, 429}
        assert 1 <= statuses[200] <= 3  # the burst; concurrent ones share a round
        assert statuses[429] >= CALLS - 3
        assert "rate-limited" in limited[0]["detail"]
        assert 1 <= len(busy) <= statuses[200]
        # Never two rounds of the target at once. (Not == 1: on a loaded machine the one
        # round's HTTP step may time out before its request head is in; CI saw that.)
        assert endpoint.most_open <= 1
        assert lateness_p99(service) <= 2.5  # the issue measured 2.5-5 s before
    finally:
        await endpoint.close()


async def test_a_run_joins_the_scheduled_round_in_flight(
    lab: Lab,
    running: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(RUN_TOKEN_ENV, RUN_TOKEN)
    endpoint = SlowEndpoint(delay_s=1.0)
    port = await endpoint.start()
    target = {"name": "busy", "url": f"http://{HOST}:{port}/", "interval": "3s"}
    target |= {"timeout": "2500ms", "step_timeout": "2s"}
    path = lab.write([target], run_token_env=RUN_TOKEN_ENV)
    busy: list[RoundResult] = []
    service: Service = await running(path, migrate=True, on_round=busy.append)
    try:
        assert service.listening is not None
        url = "http://{}:{}/api/v1/targets/busy/run".format(*service.listening)
        await wait_for(lambda: endpoint.open == 1, timeout_s=10)  # a scheduled round waits
        rounds_before = len(busy)
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {RUN_TOKEN}"}
            async with session.post(url, headers=headers) as response:
                assert response.status == 200, await response.text()
                document = await response.json()
        assert endpoint.most_open == 1  # no second round of the target
        # The scheduled round, answered to the caller (judged once stored, a moment later).
        await wait_for(lambda: len(busy) > rounds_before, timeout_s=5)
        assert len(busy) == rounds_before + 1
        started = datetime.fromisoformat(document["started_at"].replace("Z", "+00:00"))
        assert started == busy[-1].started_at
    finally:
        await endpoint.close()
