"""`egresswatch agent` and `egresswatch controller`: rounds run by an agent, pushed over HTTP.

Real servers on loopback: the controller is the real Service in controller mode (in process, or
the CLI in a subprocess), the agent runs against a DNS server and an HTTPS endpoint with a test
CA. What is checked is what the design promises: the agent learns its targets from the plan,
the controller stores every round the agent ran exactly once under the agent's name and kind,
through a controller that is away, and an answer that is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from egresswatch.agent.buffer import Round, round_cost
from egresswatch.agent.service import (
    Agent,
    AgentOptions,
    SourceIdentity,
    UsageError,
    resolve_identity,
)
from egresswatch.agent.sink import HttpSink, SinkTuning, encode_round
from egresswatch.agent.sink_types import MIN_BUFFER_BYTES
from egresswatch.backoff import Backoff
from egresswatch.cli import main
from egresswatch.evidence import DnsEvidence
from egresswatch.looplag import IDLE_PERIOD_S, period_for
from egresswatch.model import Reason, RoundResult, SourceKind, Status, Step, StepResult
from egresswatch.settings import load_settings
from egresswatch.wiring import Service
from tests.support.agent_http import controller_client
from tests.support.dnsserver import TestDNSServer, dns_server
from tests.support.https import HOST, NAME, LocalServers, Pki, Reply, local_servers, pki
from tests.support.relay import TcpRelay
from tests.support.service import free_port, wait_for

__all__ = ["dns_server", "local_servers", "pki"]  # fixtures, imported explicitly

TOKEN_ENV = "EGRESSWATCH_TEST_AGENT_TOKEN"
TOKEN = "agent-token-for-tests"
RUN_TOKEN_ENV = "EGRESSWATCH_TEST_RUN_TOKEN"
RUN_TOKEN = "run-token-for-tests"
# Fast, for tests: batches every second, retries within a fraction of a second, plans
# refreshed every second.
FAST_SINK = SinkTuning(
    batch_interval_s=1.0, backoff_initial_s=0.1, backoff_max_s=0.3, auth_retry_s=0.2
)


class World:
    """A controller config, a token file and an agent's local files, for this test's servers."""

    def __init__(self, tmp_path: Path, dns: TestDNSServer, pki: Pki) -> None:
        self.dir = tmp_path
        self.resolv = tmp_path / "resolv.conf"
        self.resolv.write_text(f"nameserver {dns.host}#{dns.port}\noptions timeout:1 attempts:1\n")
        dns.answer(NAME, a=[HOST])
        self.pki = pki
        self.config = tmp_path / "controller.yaml"
        self.db = f"sqlite+aiosqlite:///{tmp_path / 'controller.db'}"
        self.token_file = tmp_path / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def write(self, targets: list[dict[str, Any]]) -> Path:
        config = {
            # Not used by a controller: there is no local source.
            "source": {"name": "controller-host", "kind": "node"},
            "listen": f"{HOST}:{self.port}",
            "database": self.db,
            "agent_token_env": TOKEN_ENV,
            "run_token_env": RUN_TOKEN_ENV,
            "proxy_from_environment": False,
            "probes": {
                "interval": "1s",
                "timeout": "900ms",
                "step_timeout": "400ms",
                "trace_every": "1h",
                "trace_hop_timeout": "100ms",
                "trace_max_hops": 2,
            },
            "targets": targets,
        }
        self.config.write_text(yaml.safe_dump(config))
        return self.config

    def agent_args(self, listen: str) -> list[str]:
        """`egresswatch agent` with this world's controller, token and local files."""
        return [
            "agent",
            "--controller",
            self.url,
            "--token-file",
            str(self.token_file),
            "--listen",
            listen,
            "--resolv-conf",
            str(self.resolv),
            "--ca-file",
            str(self.pki.ca_file),
            "--batch-interval",  # as FAST_SINK: the tests wait for their rounds' batches
            "1",
        ]

    def options(self, identity: SourceIdentity, **changes: Any) -> AgentOptions:
        fields: dict[str, Any] = {
            "controller": self.url,
            "token_file": self.token_file,
            "identity": identity,
            "listen": f"{HOST}:0",
            "resolv_conf": self.resolv,
            "ca_file": self.pki.ca_file,
            "sink": FAST_SINK,
            "plan_refresh_s": 1.0,
            "plan_backoff": Backoff(0.1, 0.3),
            "flush_timeout_s": 5.0,
            **changes,
        }
        return AgentOptions(**fields)


@pytest.fixture
def world(
    tmp_path: Path, dns_server: TestDNSServer, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> World:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(RUN_TOKEN_ENV, RUN_TOKEN)
    return World(tmp_path, dns_server, pki)


@pytest.fixture
async def controllers(world: World) -> AsyncIterator[Callable[[], Awaitable[Service]]]:
    """Start the controller (controller mode, in process) on the world's port; stopped after."""
    running: list[Service] = []

    async def start() -> Service:
        service = Service(
            load_settings(world.config),
            config_path=world.config,
            migrate=True,
            watch_config=False,  # reloads by hand, when the test says so
            local_agent=False,
        )
        running.append(service)
        await service.start()
        return service

    yield start
    for service in running:
        await service.stop()


class Ran:
    """Every round an agent ran, as the agent handed it to its sink."""

    def __init__(self) -> None:
        self.rounds: list[RoundResult] = []

    def __call__(self, result: RoundResult) -> None:
        self.rounds.append(result)


@pytest.fixture
async def agents() -> AsyncIterator[Callable[..., Awaitable[Agent]]]:
    started: list[Agent] = []

    async def start(options: AgentOptions, **kwargs: Any) -> Agent:
        agent = Agent(options, **kwargs)
        started.append(agent)
        await agent.start()
        return agent

    yield start
    for agent in started:
        await agent.stop()


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json(content_type=None)


async def stored_rounds(service: Service, target: str, source: str) -> list[RoundResult]:
    now = datetime.now(UTC)
    return await service.store.rounds_between(
        target, now - timedelta(hours=1), now + timedelta(hours=1), source=source
    )


def keys(rounds: list[RoundResult]) -> list[tuple[str, datetime]]:
    return sorted((r.target, r.started_at) for r in rounds)


# -- an agent and its controller ---------------------------------------------------------------


async def test_the_agent_runs_the_plan_and_the_controller_stores_its_rounds(
    world: World,
    local_servers: LocalServers,
    controllers: Callable[[], Awaitable[Service]],
    agents: Callable[..., Awaitable[Agent]],
) -> None:
    endpoint = await local_servers.https(Reply(200))
    world.write([{"name": "shop", "url": f"https://{NAME}:{endpoint.port}/"}])
    controller = await controllers()
    # Who the agent is comes from the Downward API's variables, as in a pod.
    environ = {"POD_NAME": "probe-7d9f", "POD_NAMESPACE": "payments"}
    identity = resolve_identity(source=None, kind=None, environ=environ)
    assert identity == SourceIdentity("payments/probe-7d9f", SourceKind.POD)
    ran = Ran()
    agent = await agents(world.options(identity), environ=environ, on_round=ran)

    await wait_for(lambda: len(ran.rounds) >= 3)
    assert agent.listening is not None
    agent_url = f"http://{agent.listening[0]}:{agent.listening[1]}"
    status, ready = await get_json(f"{agent_url}/readyz")
    assert status == 200 and ready["checks"] == {"plan": True, "scheduler": True}
    assert await agent.sink.drained(5.0)
    async with aiohttp.ClientSession() as session, session.get(f"{agent_url}/metrics") as r:
        metrics = await r.text()
    assert 'egresswatch_ingest_batches_total{outcome="ok"}' in metrics
    assert 'egresswatch_agent_rounds_dropped_total{why="buffer_full"} 0.0' in metrics
    await agent.stop()  # flushes: every round it ran is at the controller now

    stored = await stored_rounds(controller, "shop", "payments/probe-7d9f")
    assert keys(stored) == keys(ran.rounds)
    for result in stored:
        assert result.first_failing_step is None
        assert [s.step for s in result.steps][:5] == list(Step)[:5]
    sources = {s.name: s.kind for s in await controller.store.sources()}
    # The agent's source with its kind, and no local source on the controller.
    assert sources == {"payments/probe-7d9f": SourceKind.POD}

    status, document = await get_json(f"{world.url}/api/v1/status")
    assert status == 200
    [target] = document["targets"]
    assert [s["source"] for s in target["sources"]] == ["payments/probe-7d9f"]
    # A controller runs no rounds of its own: a configured target is a conflict, an unknown
    # one is not found.
    run = {"Authorization": f"Bearer {RUN_TOKEN}"}
    async with aiohttp.ClientSession(headers=run) as session:
        async with session.post(f"{world.url}/api/v1/targets/shop/run") as response:
            assert response.status == 409
            assert "runs no rounds itself" in (await response.json(content_type=None))["detail"]
        async with session.post(f"{world.url}/api/v1/targets/nowhere/run") as response:
            assert response.status == 404
    assert controller.scheduler.job_keys() == {"retention", "controller"}


async def test_a_new_plan_is_followed(
    world: World,
    local_servers: LocalServers,
    controllers: Callable[[], Awaitable[Service]],
    agents: Callable[..., Awaitable[Agent]],
) -> None:
    one = await local_servers.https(Reply(200))
    two = await local_servers.https(Reply(200))
    world.write([{"name": "one", "url": f"https://{NAME}:{one.port}/"}])
    controller = await controllers()
    identity = SourceIdentity("node-a", SourceKind.NODE)
    agent = await agents(world.options(identity))
    await wait_for(lambda: agent.scheduler.job_keys() == {"node-a/one"})
    world.write(
        [
            {"name": "two", "url": f"https://{NAME}:{two.port}/"},
            {"name": "one", "url": f"https://{NAME}:{one.port}/", "interval": "2s"},
        ]
    )
    assert await controller.reload()
    await wait_for(lambda: agent.scheduler.job_keys() == {"node-a/one", "node-a/two"}, 5.0)
    assert agent.plan.current is not None
    planned = agent.plan.current.targets[1]
    assert (planned.interval_s, planned.timeout_s, planned.step_timeout_s) == (2.0, 0.9, 0.4)


async def test_an_https_controller_is_verified_with_the_agents_ca_file(
    world: World,
    local_servers: LocalServers,
    controllers: Callable[[], Awaitable[Service]],
    agents: Callable[..., Awaitable[Agent]],
) -> None:
    """The controller behind TLS with a certificate of the test's CA (a cluster's own CA):
    the agent trusts it through --ca-file, for its plan and its batches alike."""
    endpoint = await local_servers.https(Reply(200))
    world.write([{"name": "shop", "url": f"https://{NAME}:{endpoint.port}/"}])
    controller = await controllers()
    front = TcpRelay(HOST, world.port, tls=world.pki.contexts["trusted"])
    await front.start()
    try:
        identity = SourceIdentity("node-tls", SourceKind.NODE)
        ran = Ran()
        options = world.options(identity, controller=f"https://{HOST}:{front.port}")
        agent = await agents(options, on_round=ran)
        await wait_for(lambda: len(ran.rounds) >= 2)
        assert await agent.sink.drained(5.0)
        await agent.stop()
        assert len(await stored_rounds(controller, "shop", "node-tls")) == len(ran.rounds)
    finally:
        await front.close()


async def test_the_loop_lag_sampler_follows_the_shortest_step_budget_of_the_plan(
    world: World,
    local_servers: LocalServers,
    controllers: Callable[[], Awaitable[Service]],
    agents: Callable[..., Awaitable[Agent]],
) -> None:
    """Its wake-ups are most of an idle agent's CPU: as rare as the step budgets allow
    (looplag.period_for), not the 50 ms a 1 s step needs."""
    endpoint = await local_servers.https(Reply(200))
    url = f"https://{NAME}:{endpoint.port}/"
    slow = {"interval": "30s", "timeout": "10s", "step_timeout": "4s"}
    world.write([{"name": "one", "url": url, **slow}, {"name": "two", "url": url + "2", **slow}])
    await controllers()
    agent = await agents(world.options(SourceIdentity("node-a", SourceKind.NODE)))
    await wait_for(lambda: agent.plan.current is not None)
    assert agent.loop_lag.period_s == period_for(4.0) == 0.2
    # ... and only while a round runs: between rounds, every second.
    assert agent.loop_lag.idle_period_s == IDLE_PERIOD_S == 1.0


async def test_nothing_lost_nothing_twice_while_the_controller_comes_and_goes(
    world: World,
    local_servers: LocalServers,
    controllers: Callable[[], Awaitable[Service]],
    agents: Callable[..., Awaitable[Agent]],
) -> None:
    endpoint = await local_servers.https(Reply(200))
    world.write(
        [
            {"name": "one", "url": f"https://{NAME}:{endpoint.port}/"},
            {"name": "two", "url": f"https://{NAME}:{endpoint.port}/"},
        ]
    )
    ran = Ran()
    # The agent starts first: no controller yet, so no plan and no rounds, only retries.
    agent = await agents(world.options(SourceIdentity("node-b", SourceKind.NODE)), on_round=ran)
    await asyncio.sleep(0.8)
    assert agent.readiness()["plan"] is False and not ran.rounds
    controller = await controllers()
    await wait_for(lambda: len(ran.rounds) >= 2)

    # The controller goes away: rounds go on and are buffered.
    await controller.stop()
    before = len(ran.rounds)
    await wait_for(lambda: len(ran.rounds) >= before + 4)
    assert agent.sink.depth > 0
    assert agent.sink.stats.failed_attempts > 0

    # It comes back (same database): the backlog arrives, each round once.
    controller = await controllers()
    await wait_for(lambda: agent.sink.depth == 0 and agent.sink.stats.failed_attempts > 0)
    await agent.stop()
    stats = agent.sink.stats
    assert stats.dropped == {}
    assert stats.stored == stats.submitted == len(ran.rounds)
    stored = [
        *await stored_rounds(controller, "one", "node-b"),
        *await stored_rounds(controller, "two", "node-b"),
    ]
    assert keys(stored) == keys(ran.rounds)


async def test_a_batch_whose_answer_was_lost_is_stored_once(
    world: World,
    local_servers: LocalServers,
    controllers: Callable[[], Awaitable[Service]],
    agents: Callable[..., Awaitable[Agent]],
) -> None:
    endpoint = await local_servers.https(Reply(200))
    world.write([{"name": "shop", "url": f"https://{NAME}:{endpoint.port}/"}])
    controller = await controllers()
    proxy = LosingProxy(world.url)
    proxy_url = await proxy.start()
    try:
        ran = Ran()
        options = world.options(SourceIdentity("node-c", SourceKind.NODE), controller=proxy_url)
        agent = await agents(options, on_round=ran)
        await wait_for(lambda: proxy.lost == 1 and agent.sink.stats.batches_ok >= 2)
        await agent.stop()
    finally:
        await proxy.stop()
    stats = agent.sink.stats
    # The first batch reached the controller and was stored; its answer did not reach the
    # agent, which sent the same batch again: the controller said "stored before".
    assert stats.duplicates == 1
    assert stats.failed_attempts >= 1
    assert proxy.stored_then_lost > 0
    assert stats.dropped == {}
    stored = await stored_rounds(controller, "shop", "node-c")
    assert keys(stored) == keys(ran.rounds)


class LosingProxy:
    """A reverse proxy in front of the controller that forwards the first result batch, lets the
    controller store it, and then cuts the connection instead of passing the answer on."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.lost = 0
        self.stored_then_lost = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://{HOST}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body or None,
            headers=headers,
        ) as answer:
            content = await answer.read()
            status, kind = answer.status, answer.content_type
        if request.path == "/api/v1/results" and status == 200 and self.lost == 0:
            self.lost += 1
            self.stored_then_lost = json.loads(content)["stored"]
            assert request.transport is not None
            request.transport.close()  # the answer is lost on the way back
            raise asyncio.CancelledError
        return web.Response(status=status, body=content, content_type=kind)


# -- the sink against the controller's refusals ------------------------------------------------


def a_round(target: str, source: str, started_at: datetime) -> RoundResult:
    return RoundResult(
        target=target,
        source=source,
        started_at=started_at,
        steps=(
            StepResult(
                Step.DNS_CLUSTER,
                Status.OK,
                None,
                0.001,
                "answered",
                DnsEvidence(resolver="127.0.0.1", addresses=("1.2.3.4",)),
            ),
            StepResult(Step.TCP_CONNECT, Status.OK, None, 0.002, "nul \0 in detail"),
        ),
    )


async def test_refused_rounds_are_dropped_alone_and_a_bad_token_loses_nothing(
    world: World, controllers: Callable[[], Awaitable[Service]]
) -> None:
    world.write([{"name": "shop", "url": f"https://{NAME}:1/"}])
    controller = await controllers()
    token = {"value": "wrong"}
    now = datetime.now(UTC).replace(microsecond=0)
    async with controller_client(world.url) as client:
        sink = HttpSink(
            client,
            source="node-d",
            source_kind=SourceKind.NODE,
            token=lambda: token["value"],
            tuning=SinkTuning(
                batch_interval_s=0.1, auth_retry_s=0.1, backoff_initial_s=0.1, backoff_max_s=0.3
            ),
        )
        sink.start()
        try:
            # A wrong token: refused (403) and retried, nothing dropped.
            sink.submit(a_round("shop", "node-d", now))
            await wait_for(lambda: sink.stats.failed_attempts >= 2)
            assert sink.depth == 1 and sink.stats.dropped == {}
            token["value"] = TOKEN
            assert await sink.drained(5.0)

            # 422: only the round of the target the controller does not know is dropped.
            for i, target in enumerate(("shop", "ghost", "shop")):
                sink.submit(a_round(target, "node-d", now + timedelta(seconds=1 + i)))
            assert await sink.drained(5.0)
            assert sink.stats.dropped == {"unknown_target": 1}

            # 400 for one round (started a day ahead: the agent's clock is wrong): the batch is
            # halved down to that round, which alone is dropped.
            for i in range(4):
                started = now + timedelta(days=1 if i == 2 else 0, seconds=10 + i)
                sink.submit(a_round("shop", "node-d", started))
            assert await sink.drained(5.0)
            assert sink.stats.dropped == {"unknown_target": 1, "refused": 1}
        finally:
            await sink.close(2.0)
    stored = await stored_rounds(controller, "shop", "node-d")
    assert len(stored) == 1 + 2 + 3
    assert sink.stats.stored == 6
    tcp = stored[0].step(Step.TCP_CONNECT)
    assert tcp is not None and tcp.detail == "nul \ufffd in detail"


def a_failing_round(target: str, source: str, started_at: datetime) -> RoundResult:
    healthy = a_round(target, source, started_at)
    refused = StepResult(Step.TCP_CONNECT, Status.FAIL, Reason.CONN_REFUSED, 0.002, "refused")
    return replace(healthy, steps=(healthy.steps[0], refused))


async def test_a_target_that_failed_lately_has_its_rounds_sent_at_once_the_others_wait(
    world: World, controllers: Callable[[], Awaitable[Service]]
) -> None:
    """agent/linger.py: healthy rounds wait for their batch (here 60 s); a failing round, and
    its target's rounds after it (the recovery the controller confirms over several rounds),
    go within urgent_interval_s, taking the waiting ones along. When the urgent window ends:
    tests/test_linger.py, on its own clock."""
    world.write([{"name": "shop", "url": f"https://{NAME}:1/"}])
    await controllers()
    now = datetime.now(UTC).replace(microsecond=0)
    tuning = SinkTuning(batch_interval_s=60.0, urgent_interval_s=0.1)
    async with controller_client(world.url) as client:
        sink = HttpSink(
            client, source="node-f", source_kind=SourceKind.NODE, token=lambda: TOKEN, tuning=tuning
        )
        sink.start()
        try:
            sink.submit(a_round("shop", "node-f", now))
            await asyncio.sleep(0.5)
            assert (sink.stats.stored, sink.depth) == (0, 1)  # waits for its batch

            sink.submit(a_failing_round("shop", "node-f", now + timedelta(seconds=1)))
            await wait_for(lambda: sink.stats.stored == 2)  # both, long before 60 s
            for n in (2, 3):  # recovering: each round goes at once
                sink.submit(a_round("shop", "node-f", now + timedelta(seconds=n)))
                await wait_for(lambda n=n: sink.stats.stored == n + 1)  # type: ignore[misc]
        finally:
            await sink.close(2.0)
    assert sink.stats.stored == 4


async def test_the_buffer_is_bounded_and_close_gives_up_in_time(world: World) -> None:
    now = datetime.now(UTC)
    cost = round_cost(Round("shop", encode_round(a_round("shop", "node-e", now))))
    async with controller_client(world.url) as client:  # nothing listens there
        sink = HttpSink(
            client,
            source="node-e",
            source_kind=None,
            token=lambda: TOKEN,
            tuning=SinkTuning(
                batch_max_rounds=2,
                buffer_max_bytes=MIN_BUFFER_BYTES,
                backoff_initial_s=0.1,
                backoff_max_s=0.2,
            ),
        )
        sink.start()
        fit = MIN_BUFFER_BYTES // cost
        for i in range(fit + 9):
            sink.submit(a_round("shop", "node-e", now + timedelta(seconds=i)))
        await asyncio.sleep(0.2)
        # In flight (a batch of 2, taken before the rest arrived) plus what fits in the bound.
        assert sink.depth <= fit + 2
        before = sink.stats.dropped.get("buffer_full", 0)
        assert before >= 7
        loop = asyncio.get_running_loop()
        started = loop.time()
        await sink.close(0.5)
        assert loop.time() - started < 2.0
    stats = sink.stats
    assert stats.dropped["shutdown"] + before == fit + 9
    assert sink.depth == 0


# -- identity and flags ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind", "environ", "expected"),
    [
        (None, None, {"POD_NAME": "p", "POD_NAMESPACE": "ns"}, ("ns/p", "pod")),
        (None, None, {"NODE_NAME": "aks-nodepool1-0"}, ("aks-nodepool1-0", "node")),
        (
            None,
            None,
            {
                "POD_NAME": "p",
                "POD_NAMESPACE": "ns",
                "NODE_NAME": "n",
                "EGRESSWATCH_SOURCE_KIND": "node",
            },
            ("n", "node"),
        ),
        (None, "pod", {"POD_NAME": "p", "POD_NAMESPACE": "ns", "NODE_NAME": "n"}, ("ns/p", "pod")),
        # A designated pod source: its workload and node, not its pod name (issue 9).
        (
            None,
            "pod",
            {
                "POD_NAME": "w-7d9f-x",
                "POD_NAMESPACE": "ns",
                "NODE_NAME": "n",
                "EGRESSWATCH_WORKLOAD": "w",
            },
            ("ns/w@n", "pod"),
        ),
        # Flags win over the environment.
        ("mine", "node", {"POD_NAME": "p", "POD_NAMESPACE": "ns"}, ("mine", "node")),
        ("mine", None, {"EGRESSWATCH_SOURCE_KIND": "pod"}, ("mine", "pod")),
    ],
)
def test_identity(
    source: str | None, kind: str | None, environ: dict[str, str], expected: tuple[str, str]
) -> None:
    identity = resolve_identity(source=source, kind=kind, environ=environ)
    assert (identity.name, identity.kind.value) == expected


@pytest.mark.parametrize(
    ("source", "kind", "environ", "named"),
    [
        (None, None, {}, "POD_NAME"),
        (None, None, {"POD_NAME": "p"}, "POD_NAMESPACE"),
        (None, None, {"POD_NAME": "p", "NODE_NAME": "n"}, "EGRESSWATCH_SOURCE_KIND"),
        (
            None,
            None,
            {"EGRESSWATCH_SOURCE_KIND": "vm", "NODE_NAME": "n"},
            "EGRESSWATCH_SOURCE_KIND",
        ),
        (None, "node", {"POD_NAME": "p", "POD_NAMESPACE": "ns"}, "NODE_NAME"),
        (
            None,
            None,
            {"POD_NAME": "p", "POD_NAMESPACE": "ns", "EGRESSWATCH_WORKLOAD": "w"},
            "EGRESSWATCH_WORKLOAD.*NODE_NAME",
        ),
        ("mine", None, {}, "--source-kind"),
        ("bad\nname", "node", {}, "--source"),
    ],
)
def test_identity_problems_name_the_flag_or_variable(
    source: str | None, kind: str | None, environ: dict[str, str], named: str
) -> None:
    with pytest.raises(UsageError, match=named):
        resolve_identity(source=source, kind=kind, environ=environ)


@pytest.mark.parametrize(
    ("args", "environ", "named"),
    [
        ([], {}, "POD_NAME"),
        (["--source", "x"], {}, "--source-kind"),
        (["--source", "x", "--source-kind", "node", "--listen", "nowhere"], {}, "--listen"),
        (
            ["--source", "x", "--source-kind", "node", "--resolv-conf", "/nonexistent"],
            {},
            "--resolv-conf",
        ),
        ([], {"EGRESSWATCH_SOURCE_KIND": "vm"}, "EGRESSWATCH_SOURCE_KIND"),
    ],
)
def test_bad_agent_flags_exit_2_naming_them(
    args: list[str],
    environ: dict[str, str],
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("POD_NAME", "POD_NAMESPACE", "NODE_NAME", "EGRESSWATCH_SOURCE_KIND"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    token = tmp_path / "token"
    token.write_text("t")
    code = main(["agent", "--controller", "http://127.0.0.1:9", "--token-file", str(token), *args])
    assert code == 2
    assert named in capsys.readouterr().err


def test_bad_controller_url_and_token_file_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    identity = ["--source", "x", "--source-kind", "node"]
    assert main(["agent", "--controller", "ftp://c", "--token-file", str(token), *identity]) == 2
    assert "--controller" in capsys.readouterr().err
    missing = str(tmp_path / "missing")
    assert main(["agent", "--controller", "http://c", "--token-file", missing, *identity]) == 2
    assert "--token-file" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    empty = str(tmp_path / "empty")
    assert main(["agent", "--controller", "http://c", "--token-file", empty, *identity]) == 2
    assert "--token-file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(
            ["agent", "--controller", "http://c", "--token-file", str(token), "--source-kind", "vm"]
        )
    assert exited.value.code == 2
    assert "--source-kind" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["controller"])
    assert exited.value.code == 2
    assert "--config" in capsys.readouterr().err


def test_the_agent_imports_neither_storage_nor_the_controller() -> None:
    """DESIGN.md §5: an agent speaks HTTP to the controller and holds no database code."""
    code = (
        "import sys, egresswatch.agent.service\n"
        "print(sorted(m for m in sys.modules if m.startswith(("
        "'egresswatch.storage', 'egresswatch.controller', 'egresswatch.wiring', 'sqlalchemy'))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert found.stdout.strip() == "[]"


# -- both commands, as processes ------------------------------------------------------------------


async def test_agent_and_controller_commands_work_together_and_stop_cleanly(
    world: World, local_servers: LocalServers
) -> None:
    endpoint = await local_servers.https(Reply(200))
    world.write([{"name": "shop", "url": f"https://{NAME}:{endpoint.port}/"}])
    environ = {**os.environ, "PYTHONUNBUFFERED": "1"}
    controller = await spawn(
        ["controller", "--config", str(world.config), "--migrate", "--log-level", "info"],
        environ,
    )
    agent_port = free_port()
    agent = await spawn(
        world.agent_args(f"{HOST}:{agent_port}"),
        {**environ, "NODE_NAME": "aks-node-7", "EGRESSWATCH_SOURCE_KIND": "node"},
    )
    try:
        timeline = f"{world.url}/api/v1/targets/shop/timeline?source=aks-node-7&step=http_response"

        async def points() -> list[Any]:
            try:
                status, document = await get_json(timeline)
            except aiohttp.ClientError:
                return []
            return list(document["points"]) if status == 200 else []

        async with asyncio.timeout(20):
            while len(await points()) < 2:
                await asyncio.sleep(0.2)
        assert all(p["status"] == "ok" for p in await points())
        status, ready = await get_json(f"http://{HOST}:{agent_port}/readyz")
        assert status == 200, ready
    finally:
        results = [await finish(process) for process in (agent, controller)]
    for code, err in results:
        assert code == 0, err
        assert "Traceback" not in err
    assert '"event": "egresswatch agent stopped"' in results[0][1]
    assert '"event": "egresswatch stopped"' in results[1][1]


async def spawn(args: list[str], environ: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "egresswatch.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )


async def finish(process: asyncio.subprocess.Process) -> tuple[int, str]:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(20):
            _, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, err.decode()
