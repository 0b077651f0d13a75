"""One backoff with jitter (egresswatch/backoff.py): bounds, Retry-After, and two agents that
lost the controller together do not return together."""

from __future__ import annotations

import logging
import random

import pytest
from aiohttp import web

from egresswatch.agent.http_client import ControllerClient
from egresswatch.agent.plan import PlanFollower
from egresswatch.backoff import Backoff
from tests.support.agent_http import controller_client
from tests.support.service import free_port, wait_for


@pytest.mark.parametrize("value", [0.0, 0.5, 0.999999])
def test_the_wait_doubles_within_equal_jitter_bounds_and_stops_at_the_cap(value: float) -> None:
    backoff = Backoff(0.5, 30.0, rand=lambda: value)
    for attempt in range(12):
        base = min(30.0, 0.5 * 2**attempt)
        wait = backoff.delay_s(attempt)
        assert base / 2 <= wait <= base
        assert wait == pytest.approx(base / 2 + value * base / 2)
    assert backoff.delay_s(10_000) <= 30.0  # no overflow, far past the cap


def test_retry_after_is_honoured_within_the_cap() -> None:
    backoff = Backoff(0.5, 30.0, rand=lambda: 0.0)
    assert backoff.delay_s(0, retry_after_s=7.0) == 7.0
    assert backoff.delay_s(0, retry_after_s=120.0) == 30.0
    assert backoff.delay_s(5, retry_after_s=1.0) == 8.0  # our own wait is longer: it wins
    assert backoff.delay_s(0, retry_after_s=0.0) == 0.25


def test_bad_bounds_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="initial_s=0"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="max_s=1"):
        Backoff(2.0, 1.0)


def test_two_agents_do_not_retry_in_lockstep() -> None:
    """Two agents lose the controller at the same moment and retry 8 times: the moments they
    come back at spread apart (each Backoff has its own random source by default)."""
    first, second = Backoff(0.5, 30.0), Backoff(0.5, 30.0)

    def moments(backoff: Backoff) -> list[float]:
        at, found = 0.0, []
        for attempt in range(8):
            at += backoff.delay_s(attempt)
            found.append(at)
        return found

    apart = [abs(a - b) for a, b in zip(moments(first), moments(second), strict=True)]
    # Equal jitter on the doubling base: the later retries are seconds apart, not together
    # (the chance of two independent draws within 10 ms at each of 8 attempts is nil).
    assert sum(gap > 0.01 for gap in apart) >= 7, apart


def test_a_thousand_agents_spread_over_the_jitter_window() -> None:
    seeds = random.Random(7)
    waits = [
        Backoff(0.5, 30.0, rand=random.Random(seeds.random()).random).delay_s(5)
        for _ in range(1000)
    ]
    assert min(waits) >= 8.0 and max(waits) < 16.0
    # Ten 0.8 s slots of [8, 16): every one gets its share, none gets them all.
    slots = [0] * 10
    for wait in waits:
        slots[int((wait - 8.0) / 0.8)] += 1
    assert min(slots) > 50 and max(slots) < 150, slots


async def test_two_plan_followers_retry_a_missing_controller_at_different_moments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The agent's plan fetcher waits with the jittered backoff: two agents whose controller
    is away do not come back in lockstep (before, both waited 0.5, 1, 2 ... s exactly)."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    caplog.set_level(logging.WARNING, logger="egresswatch.agent.plan")
    waits = []
    async with controller_client(url) as client:
        for name in ("node-a", "node-b"):
            caplog.clear()
            await retries(client, name, Backoff(0.02, 0.08), caplog, 3)
            assert {r.getMessage() for r in caplog.records} == {"no plan yet: retrying"}
            waits.append([r.__dict__["in_s"] for r in caplog.records][:3])
    assert waits[0] != waits[1], waits


async def test_the_plan_follower_honours_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    """A controller whose database is away answers 503 with Retry-After: the plan fetcher
    waits at least that long (within its cap), not its own shorter wait."""

    async def busy(request: web.Request) -> web.Response:
        return web.json_response(
            {"detail": "database away"}, status=503, headers={"Retry-After": "0.3"}
        )

    app = web.Application()
    app.router.add_get("/api/v1/plan", busy)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    caplog.set_level(logging.WARNING, logger="egresswatch.agent.plan")
    try:
        async with controller_client(f"http://127.0.0.1:{port}") as client:
            await retries(client, "node-a", Backoff(0.01, 1.0), caplog, 1)
    finally:
        await runner.cleanup()
    assert caplog.records[0].__dict__["in_s"] == 0.3
    assert "answered 503: database away" in caplog.records[0].__dict__["problem"]


async def retries(
    client: ControllerClient,
    source: str,
    backoff: Backoff,
    caplog: pytest.LogCaptureFixture,
    count: int,
) -> None:
    """Follow the plan at `url` until `count` retries were logged, then stop."""
    follower = PlanFollower(
        client,
        source=source,
        token=lambda: None,
        on_plan=lambda plan: None,
        backoff=backoff,
    )
    follower.start()
    try:
        await wait_for(lambda: len(caplog.records) >= count, 10)
    finally:
        await follower.stop()
