"""Overload is the prober's problem, never the target's (issue 14).

The classification (a timeout against the loop's stalls during the step), the loop lag
sampler on a really blocked loop, a real round whose answer sat in its socket while the loop
was held, a real silent endpoint on an idle prober (still `conn_timeout`), and shedding in
the scheduler. The whole process at twice its rate: tests/test_overload_process.py.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from egresswatch.controller.detection.hysteresis import Detector
from egresswatch.evidence import NotRun
from egresswatch.looplag import MAX_STALLS, TASK_NAME, LoopLag, period_for
from egresswatch.model import Endpoint, Reason, RoundResult, Status, Step, StepResult, StepState
from egresswatch.probes.checklist import ChecklistPlan, TraceMode, run_checklist
from egresswatch.probes.overload import judge_timeout
from egresswatch.schedule import RoundJob, RoundScheduler
from egresswatch.settings import DetectionSettings
from tests.support.https import HOST, unanswered_port
from tests.support.rounds import round_
from tests.support.service import wait_for
from tests.test_schedule import keys_due_apart


def _step(status: Status, reason: Reason | None) -> StepResult:
    return StepResult(Step.TCP_CONNECT, status, reason, 1.0, "no answer", NotRun())


@pytest.mark.parametrize(
    ("status", "reason", "budget", "stalled", "expected"),
    [
        # A timeout that lost half its budget or more to our own stalls: the prober's problem.
        (Status.FAIL, Reason.CONN_TIMEOUT, 1.0, 0.5, Reason.PROBER_OVERLOADED),
        (Status.FAIL, Reason.DNS_TIMEOUT, 1.0, 0.9, Reason.PROBER_OVERLOADED),
        (Status.FAIL, Reason.TIMEOUT, 0.2, 0.3, Reason.PROBER_OVERLOADED),
        # Stalls too short to explain the timeout: the target stays judged.
        (Status.FAIL, Reason.CONN_TIMEOUT, 1.0, 0.49, Reason.CONN_TIMEOUT),
        (Status.FAIL, Reason.CONN_TIMEOUT, 1.0, 0.0, Reason.CONN_TIMEOUT),
        # Not a timeout: a refusal or a reset is an answer, however late we read it.
        (Status.FAIL, Reason.CONN_REFUSED, 1.0, 1.0, Reason.CONN_REFUSED),
        (Status.FAIL, Reason.HTTP_STATUS, 1.0, 1.0, Reason.HTTP_STATUS),
        # Not a failure.
        (Status.OK, None, 1.0, 1.0, None),
        (Status.SKIPPED, Reason.TIMEOUT, 1.0, 1.0, Reason.TIMEOUT),
    ],
)
def test_a_timeout_is_the_provers_when_the_loop_was_stalled_for_half_its_budget(
    status: Status, reason: Reason | None, budget: float, stalled: float, expected: Reason | None
) -> None:
    judged = judge_timeout(_step(status, reason), budget_s=budget, stalled_s=stalled)
    assert judged.reason is expected
    if expected is Reason.PROBER_OVERLOADED:
        assert judged.status is Status.ERROR
        assert f"stalled {stalled:.3f} s" in judged.detail and reason is not None
        assert reason.value in judged.detail and "no answer" in judged.detail
        assert judged.evidence == NotRun()  # the step's own evidence is kept
    else:
        assert judged.status is status


async def test_loop_lag_sees_a_blocked_loop_and_nothing_on_an_idle_one() -> None:
    lag = LoopLag(period_s=0.01)
    assert lag.stalled(0.0, 1e9) == 0.0 and lag.recent_max() == 0.0  # not started
    lag.start()
    try:
        assert any(t.get_name() == TASK_NAME for t in asyncio.all_tasks())
        loop = asyncio.get_running_loop()
        idle_from = loop.time()
        await asyncio.sleep(0.2)
        idle = lag.stalled(idle_from, loop.time())
        blocked_from = loop.time()
        time.sleep(0.3)  # noqa: ASYNC251 -- the overload under test: the loop is held
        # Not yet sampled: the stall in progress is counted.
        assert lag.stalled(blocked_from, loop.time()) >= 0.25
        await asyncio.sleep(0.05)
        assert lag.stalled(blocked_from, loop.time()) >= 0.25
        assert lag.recent_max() >= 0.25
        assert idle < 0.1, idle  # an idle loop loses next to nothing (wide margin for CI)
        assert lag.stalled(idle_from, blocked_from) < 0.1  # the window before the block
    finally:
        await lag.stop()
    assert not any(t.get_name() == TASK_NAME for t in asyncio.all_tasks())


async def test_with_an_idle_period_the_sampler_wakes_fast_only_while_watched() -> None:
    """The agent's sampler: every period_s while a round runs (a stall then is still seen),
    every idle_period_s otherwise: an idle agent's wake-ups are most of its CPU."""
    lag = LoopLag(period_s=0.01, idle_period_s=30.0)
    lag.start()
    try:
        await asyncio.sleep(0.2)  # twenty periods, nothing watched
        assert lag.wakeups == 0
        loop = asyncio.get_running_loop()
        with lag.watching():
            await asyncio.sleep(0.1)
            assert lag.wakeups >= 1
            blocked_from = loop.time()
            time.sleep(0.3)  # noqa: ASYNC251 -- the overload under test: the loop is held
            assert lag.stalled(blocked_from, loop.time()) >= 0.25
            with lag.watching():  # nested: two rounds at once
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)
            assert lag.stalled(blocked_from, loop.time()) >= 0.25
            assert lag.recent_max() >= 0.25
        await asyncio.sleep(0.05)  # a wake-up already due when the last round ended
        woke = lag.wakeups
        await asyncio.sleep(0.2)  # then back to the idle period
        assert lag.wakeups == woke
    finally:
        await lag.stop()


async def test_a_round_shorter_than_the_period_costs_the_sampler_no_wakeup() -> None:
    lag = LoopLag(period_s=0.5, idle_period_s=30.0)
    lag.start()
    try:
        for _ in range(3):
            with lag.watching():
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.6)  # past the period the rounds' watch would have woken at
        assert lag.wakeups == 0
    finally:
        await lag.stop()


async def test_without_an_idle_period_the_sampler_wakes_every_period() -> None:
    """The default (`egresswatch run`): every period, watched or not."""
    lag = LoopLag(period_s=0.01)
    lag.start()
    try:
        await wait_for(lambda: lag.wakeups >= 3)
        with lag.watching():  # a no-op
            await wait_for(lambda: lag.wakeups >= 6)
    finally:
        await lag.stop()


def test_an_idle_period_that_is_not_positive_is_refused() -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="idle_period_s must be positive"):
            LoopLag(idle_period_s=bad)


@pytest.mark.parametrize(
    ("shortest_budget_s", "period_s"),
    [(0.01, 0.05), (1.0, 0.05), (2.0, 0.1), (4.0, 0.2), (5.0, 0.25), (3600.0, 0.25)],
)
def test_the_sampler_period_is_a_twentieth_of_the_shortest_step_budget_within_bounds(
    shortest_budget_s: float, period_s: float
) -> None:
    assert period_for(shortest_budget_s) == pytest.approx(period_s)


def test_a_period_that_is_not_positive_is_refused() -> None:
    lag = LoopLag()
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="period_s must be positive"):
            lag.set_period(bad)
    lag.set_period(0.25)
    assert lag.period_s == 0.25


def test_loop_lag_keeps_a_bounded_number_of_stalls() -> None:
    lag = LoopLag(keep_s=1e9)
    for i in range(MAX_STALLS + 100):
        lag._record(float(i), i + 0.5)  # a stall of 0.5 s every second
    assert lag.stalled(0.0, 1e9) == pytest.approx(MAX_STALLS * 0.5)


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """Answers 200 in 50 ms, but first makes the prober's event loop block for `hold_s`:
    the answer arrives while the prober is stalled, as under overload."""

    loop: asyncio.AbstractEventLoop
    hold_s: float

    def do_GET(self) -> None:
        self.loop.call_soon_threadsafe(time.sleep, self.hold_s)
        time.sleep(0.05)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def stalling_server() -> Iterator[tuple[int, type[_SlowHandler]]]:
    handler = type("Handler", (_SlowHandler,), {})
    server = http.server.ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _plan(url: str, tmp_path: Path) -> ChecklistPlan:
    return ChecklistPlan(
        target="shop",
        endpoint=Endpoint.parse(url),
        resolv_conf=tmp_path / "unused",
        step_timeout_s=0.3,
        trace=TraceMode.ON_FAILURE,
        trace_max_hops=2,
        trace_hop_timeout_s=0.2,
    )


async def test_a_healthy_endpoint_answering_while_the_prober_stalls_is_not_failed(
    stalling_server: tuple[int, type[_SlowHandler]], tmp_path: Path
) -> None:
    port, handler = stalling_server
    handler.loop, handler.hold_s = asyncio.get_running_loop(), 0.6
    plan = _plan(f"http://{HOST}:{port}/", tmp_path)
    # Without the loop's stalls (as before): the target is blamed for our lateness.
    before = await run_checklist(plan, source="n")
    http = before.step(Step.HTTP_RESPONSE)
    assert http is not None and (http.status, http.reason) == (Status.FAIL, Reason.TIMEOUT)
    lag = LoopLag(period_s=0.01)
    lag.start()
    try:
        result = await run_checklist(plan, source="n", stalls=lag.stalled)
    finally:
        await lag.stop()
    http = result.step(Step.HTTP_RESPONSE)
    assert http is not None
    assert (http.status, http.reason) == (Status.ERROR, Reason.PROBER_OVERLOADED), http
    assert "event loop was stalled" in http.detail and "timeout" in http.detail
    assert not any(s.status is Status.FAIL for s in result.steps)
    trace = result.step(Step.PATH_TRACE)  # overload is no reason to trace
    assert trace is not None and trace.reason is Reason.NOT_DUE


async def test_a_silent_endpoint_on_an_idle_prober_is_still_a_conn_timeout(
    tmp_path: Path,
) -> None:
    lag = LoopLag(period_s=0.01)
    lag.start()
    try:
        with unanswered_port() as port:
            plan = _plan(f"{HOST}:{port}", tmp_path)
            result = await run_checklist(plan, source="n", stalls=lag.stalled)
    finally:
        await lag.stop()
    tcp = result.step(Step.TCP_CONNECT)
    assert tcp is not None and (tcp.status, tcp.reason) == (Status.FAIL, Reason.CONN_TIMEOUT)


async def _shed_run(shed_after_s: float | None) -> tuple[list[str], list[float], int]:
    """One slot, a 0.35 s round every 0.5 s, and a second job due 20-60 ms after it: the
    second waits ~0.3 s for the slot. What was shed, the lateness seen, the rounds run."""
    interval = 0.5
    first, second = keys_due_apart(interval)
    ran: list[str] = []

    def job(key: str, duration: float, shed: float | None) -> RoundJob:
        async def run() -> None:
            ran.append(key)
            await asyncio.sleep(duration)

        return RoundJob(key, interval, 2.0, run, shed_after_s=shed)

    shed: list[str] = []
    lateness: list[float] = []
    scheduler = RoundScheduler(max_concurrent=1, on_shed=shed.append, on_lateness=lateness.append)
    scheduler.set_jobs([job(first, 0.35, None), job(second, 0.0, shed_after_s)])
    scheduler.start()
    try:
        await asyncio.sleep(1.6)
    finally:
        await scheduler.shutdown()
    assert scheduler.stats.shed == len(shed)
    return shed, lateness, ran.count(second)


async def test_a_round_that_cannot_start_in_time_is_shed_and_counted() -> None:
    shed, lateness, second_ran = await _shed_run(0.1)
    assert len(shed) >= 2 and second_ran == 0, (shed, lateness)
    # Without a shed bound (retention, the controller tick), the same wait runs late.
    shed, lateness, second_ran = await _shed_run(None)
    assert shed == [] and second_ran >= 2 and max(lateness) > 0.1


def test_shed_after_must_not_be_negative() -> None:
    async def run() -> None:
        return None

    with pytest.raises(ValueError, match="shed_after_s"):
        RoundJob("pod/a", 1.0, 1.0, run, shed_after_s=-1.0)


def _overloaded_round(i: int) -> RoundResult:
    """Round i whose tcp_connect timed out while the prober stalled (as judge_timeout says)."""
    timed_out = StepResult(Step.TCP_CONNECT, Status.FAIL, Reason.CONN_TIMEOUT, 1.0, "no answer")
    judged = judge_timeout(timed_out, budget_s=1.0, stalled_s=0.8)
    base = round_(i)
    return RoundResult(
        base.target,
        base.source,
        base.started_at,
        tuple(judged if s.step is Step.TCP_CONNECT else s for s in base.steps),
    )


def test_detection_neither_fails_nor_recovers_a_step_on_overloaded_rounds() -> None:
    settings = DetectionSettings.model_validate({"fail_after": 3, "recover_after": 2})
    detector = Detector(lambda _: settings)
    seen = []
    for i in range(10):  # a saturated prober: no change, the step is never failing
        seen += detector.observe(_overloaded_round(i), now=round_(i).started_at)
    assert seen == []
    # A real outage during the overload is still found: overloaded rounds break no run.
    rounds = [round_(10, tcp_connect="conn_timeout"), _overloaded_round(11)]
    rounds += [round_(12, tcp_connect="conn_timeout"), round_(13, tcp_connect="conn_timeout")]
    for r in rounds:
        seen += detector.observe(r, now=r.started_at)
    assert [(c.step, c.current) for c in seen] == [(Step.TCP_CONNECT, StepState.FAILING)]
