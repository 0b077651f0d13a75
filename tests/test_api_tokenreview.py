"""Agent identity without a shared secret: a projected service-account token, checked by a
TokenReview against the fake API server, is good for its own source only.

The real app (routes, auth, ingest over a real Store) with the real `kubernetes.aio` client
and the real Discovery watching the fake API server (tests/support/kubeapi.py). The fake
issues tokens bound to the fixtures' agent pods (tests/support/kube_tokens.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.controller.api.agent_identity import AgentIdentities
from egresswatch.controller.designated import Designated
from egresswatch.kube.discovery import Discovery, start_discovery
from egresswatch.kube.identity import ReviewedToken, ReviewUnavailable, reviewed
from egresswatch.kube.sources import ExpectedSource
from egresswatch.kube.tokenreview import review_token
from egresswatch.model import SourceKind
from egresswatch.settings import ConfigError, KubernetesSettings, settings_from_dict
from tests.support.apiserver import TOKEN, ApiWorld, build_world, sqlite_only
from tests.support.databases import migrated_engine_fixture  # noqa: F401
from tests.support.kube_tokens import TokenReviews
from tests.support.kubeapi import FakeKubeApi, load_fixtures, start_kube_api
from tests.support.service import poll
from tests.test_api import batch_of, round_of
from tests.test_api_auth import refused as problem

NODE = "aks-nodepool1-12345678-vmss00000{}".format
POD0 = "egresswatch-probe-7d9f8b6c5d-bx9wq"  # payments' agent pod on node 0
MINE = f"payments/egresswatch-probe@{NODE(0)}"
THEIRS = f"payments/egresswatch-probe@{NODE(1)}"
NODE_AGENTS = "egresswatch/egresswatch-agent"  # the DaemonSet's service account (fixtures)

Client = TestClient[web.Request, web.Application]


@dataclass
class Setup:
    client: Client
    world: ApiWorld
    tokens: TokenReviews
    agents: AgentIdentities
    stop_api_server: Callable[[], Awaitable[None]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def setup(migrated_engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[Setup]:
    fake = FakeKubeApi(load_fixtures(), bookmark_every_s=0.2)
    runner, running = await start_kube_api(fake, tmp_path)
    settings = KubernetesSettings(
        enabled=True,
        kubeconfig=running.kubeconfig,
        node_selector="kubernetes.azure.com/agentpool=nodepool1",
        pod_namespaces=["payments"],
        node_agent_service_account=NODE_AGENTS,
    )
    discovery: Discovery = await start_discovery(settings, clock=lambda: datetime.now(UTC))

    async def synced() -> bool:
        return discovery.synced

    async def stop_api_server() -> None:
        fake.drop_watches()
        await runner.cleanup()

    try:
        await poll(synced, 10)
        designated = Designated(
            synced=lambda: discovery.synced,
            expected=discovery.expected,
            retired=discovery.retired,
        )
        agents = AgentIdentities(
            lambda token: review_token(discovery.api, token, timeout_s=2.0),
            designated,
            node_agent_service_account=NODE_AGENTS,
        )
        world = await build_world(migrated_engine, agents=agents)
        async with TestClient(TestServer(world.app, host="127.0.0.1")) as client:
            yield Setup(client, world, fake.token_reviews, agents, stop_api_server)
    finally:
        await discovery.stop()
        fake.drop_watches()
        await runner.cleanup()


async def post_batch(setup: Setup, token: str, source: str, batch_id: str) -> Any:
    body = batch_of(round_of(source=source), source=source, batch_id=batch_id)
    return await setup.client.post("/api/v1/results", json=body, headers=bearer(token))


@sqlite_only
async def test_an_unknown_token_is_refused_after_a_review(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    other_audience = setup.tokens.issue("payments", "egresswatch-agent", pod=POD0, audience="vault")
    for token in ("not-a-token-anyone-issued", other_audience):
        refused = await problem(await post_batch(setup, token, MINE, "b-1"), 403)
        assert "API server" in refused["detail"]
        plan = await setup.client.get(f"/api/v1/plan?source={MINE}", headers=bearer(token))
        await problem(plan, 403)
        assert token not in caplog.text
    assert setup.tokens.reviews == 2  # one review per token: the plan used the cached one
    assert setup.world.ingested == []


@sqlite_only
async def test_a_pod_agents_token_is_good_for_its_own_source_only(setup: Setup) -> None:
    token = setup.tokens.issue("payments", "egresswatch-agent", pod=POD0, node=NODE(0))
    accepted = await post_batch(setup, token, MINE, "b-1")
    assert accepted.status == 200, await accepted.text()
    plan = await setup.client.get(f"/api/v1/plan?source={MINE}", headers=bearer(token))
    assert plan.status == 200 and (await plan.json())["source"] == MINE

    refused = await problem(await post_batch(setup, token, THEIRS, "b-2"), 403)
    assert [p["name"] for p in refused["invalid_params"]] == ["source"]
    assert MINE in refused["detail"]
    refused = await problem(
        await setup.client.get(f"/api/v1/plan?source={THEIRS}", headers=bearer(token)), 403
    )
    assert [p["name"] for p in refused["invalid_params"]] == ["source"]
    assert [source for source, _, _ in setup.world.ingested] == [MINE]
    # The shared token still acts for any source.
    shared = await post_batch(setup, TOKEN, THEIRS, "b-3")
    assert shared.status == 200, await shared.text()


@sqlite_only
async def test_a_node_agents_token_is_good_for_its_node_source(setup: Setup) -> None:
    token = setup.tokens.issue(
        "egresswatch", "egresswatch-agent", pod="egresswatch-node-9wdtx", node=NODE(1)
    )
    accepted = await post_batch(setup, token, NODE(1), "n-1")
    assert accepted.status == 200, await accepted.text()
    await problem(await post_batch(setup, token, NODE(0), "n-2"), 403)
    await problem(await post_batch(setup, token, THEIRS, "n-3"), 403)
    # Before Kubernetes 1.32 the token names no node: refused, saying so.
    old = setup.tokens.issue("egresswatch", "egresswatch-agent", pod="egresswatch-node-9wdtx")
    refused = await problem(await post_batch(setup, old, NODE(1), "n-4"), 403)
    assert "names no node" in refused["detail"]
    # A pod that is not a designated agent pod stands for nothing.
    stray = setup.tokens.issue("payments", "default", pod="someone-else-5d9f", node=NODE(0))
    refused = await problem(await post_batch(setup, stray, MINE, "n-5"), 403)
    assert "payments/someone-else-5d9f" in refused["detail"]


@sqlite_only
async def test_one_review_serves_many_batches(setup: Setup) -> None:
    token = setup.tokens.issue("payments", "egresswatch-agent", pod=POD0, node=NODE(0))
    took = []
    for number in range(10):
        started = time.perf_counter()
        response = await post_batch(setup, token, MINE, f"b-{number}")
        took.append(time.perf_counter() - started)
        assert response.status == 200, await response.text()
    cached = sorted(took[1:])[len(took[1:]) // 2]
    print(f"first batch (reviewed) {took[0] * 1000:.1f} ms, cached median {cached * 1000:.1f} ms")
    assert setup.tokens.reviews == 1
    assert setup.agents.reviews == 1


@sqlite_only
async def test_the_api_server_away_is_a_503_not_a_403(setup: Setup) -> None:
    token = setup.tokens.issue("payments", "egresswatch-agent", pod=POD0, node=NODE(0))
    setup.tokens.failing = True  # the API server answers 500
    answer = await problem(await post_batch(setup, token, MINE, "b-1"), 503)
    assert "cannot be checked" in answer["detail"]
    await setup.stop_api_server()  # and then it is gone
    response = await post_batch(setup, token, MINE, "b-2")
    await problem(response, 503)
    assert response.headers["Retry-After"] == "5"
    plan = await setup.client.get(f"/api/v1/plan?source={MINE}", headers=bearer(token))
    await problem(plan, 503)
    assert setup.world.ingested == []


# -- the cache, with a reviewer of our own (the seam) and a clock --------------------------------


class Reviewer:
    def __init__(self) -> None:
        self.calls = 0
        self.away = False

    async def __call__(self, token: str) -> ReviewedToken:
        self.calls += 1
        if self.away:
            raise ReviewUnavailable("HTTP 503")
        return reviewed(
            {
                "status": {
                    "authenticated": True,
                    "audiences": ["egresswatch"],
                    "user": {
                        "username": "system:serviceaccount:egresswatch:egresswatch-agent",
                        "extra": {"authentication.kubernetes.io/node-name": [NODE(0)]},
                    },
                }
            }
        )


def _identities(reviewer: Reviewer, now: list[float], **kwargs: Any) -> AgentIdentities:
    designated = Designated(
        synced=lambda: True,
        expected=lambda: {NODE(0): ExpectedSource(NODE(0), SourceKind.NODE, NODE(0))},
        retired=dict,
    )
    return AgentIdentities(
        reviewer, designated, node_agent_service_account=NODE_AGENTS, clock=lambda: now[0], **kwargs
    )


async def test_a_review_is_kept_for_its_ttl_never_past_the_tokens_expiry() -> None:
    reviewer, now = Reviewer(), [time.time()]  # epoch seconds, as the tokens' `exp`
    agents = _identities(reviewer, now, ttl_s=60.0)
    tokens = TokenReviews()
    token = tokens.issue("egresswatch", "egresswatch-agent", expires_in_s=3600)
    assert await agents.source_of(token) == NODE(0)
    now[0] += 59
    assert await agents.source_of(token) == NODE(0)
    assert reviewer.calls == 1
    now[0] += 2  # past the TTL: asked again
    await agents.source_of(token)
    assert reviewer.calls == 2
    # A token that expires sooner than the TTL is not trusted past its expiry.
    short = tokens.issue("egresswatch", "egresswatch-agent", expires_in_s=-1)  # already expired
    await agents.source_of(short)
    await agents.source_of(short)
    assert reviewer.calls == 4


async def test_the_cache_is_bounded_and_failures_are_not_kept() -> None:
    reviewer, now = Reviewer(), [1000.0]
    agents = _identities(reviewer, now, max_entries=2)
    for token in ("a", "b", "c"):
        await agents.source_of(token)
    await agents.source_of("a")  # "a" was pushed out by "c"
    assert reviewer.calls == 4
    reviewer.away = True
    for _ in range(2):
        with pytest.raises(Exception, match="cannot be checked") as caught:
            await agents.source_of("d")
        assert getattr(caught.value, "status", None) == 503
    assert reviewer.calls == 6  # the failure was not cached: asked again


def test_a_review_for_another_audience_is_not_authenticated() -> None:
    # Even from an API server that confirms no audience of ours, the token is refused.
    user = {"username": "system:serviceaccount:payments:egresswatch-agent"}
    answer = {"status": {"authenticated": True, "audiences": ["vault"], "user": user}}
    refused = reviewed(answer)
    assert not refused.authenticated and "egresswatch" in refused.error
    accepted = reviewed({"status": {**answer["status"], "audiences": ["egresswatch"]}})
    assert accepted.authenticated and accepted.service_account == ("payments", "egresswatch-agent")


def test_a_bad_node_agent_service_account_names_the_field() -> None:
    with pytest.raises(ConfigError, match="node_agent_service_account"):
        settings_from_dict(
            {
                "targets": [{"name": "t", "address": "example.test:443"}],
                "kubernetes": {"enabled": True, "node_agent_service_account": "no-slash"},
            }
        )
