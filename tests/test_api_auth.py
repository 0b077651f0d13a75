"""Who may do what, against the real app: the read token, the run token, the agents' token.

/healthz, /readyz and /openapi.json are open; with a read token configured, the API's reads
and /metrics need it (or the run token); the plan and ingest need the agents' token; on-demand
rounds need the run token and are closed without one. No token: 401 with WWW-Authenticate; a
token without the right: 403. A token is never logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.controller.api.auth import Tokens
from egresswatch.controller.api.ratelimit import RateLimiter
from egresswatch.settings import ConfigError, settings_from_dict
from egresswatch.wiring import Service
from tests.support.apiserver import READ_TOKEN, RUN_TOKEN, TOKEN, build_world, sqlite_only
from tests.support.databases import migrated_engine_fixture  # noqa: F401
from tests.support.dnsserver import dns_server
from tests.support.https import pki
from tests.support.service import free_port
from tests.test_service import Lab, lab, running

__all__ = ["dns_server", "lab", "pki", "running"]  # fixtures, imported explicitly

AGENT = {"Authorization": f"Bearer {TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
RUN = {"Authorization": f"Bearer {RUN_TOKEN}"}
WRONG = {"Authorization": f"Bearer {READ_TOKEN}x"}
READS = ["/api/v1/status", "/api/v1/changes?limit=1", "/api/v1/targets/api/timeline", "/metrics"]
OPEN = ["/healthz", "/readyz", "/openapi.json"]


async def refused(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = json.loads(await response.text())
    assert body["status"] == status and body["detail"]
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return body


@sqlite_only
async def test_with_a_read_token_reading_needs_it_or_the_run_token(
    migrated_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world = await build_world(migrated_engine, read_token=READ_TOKEN)
    async with TestClient(TestServer(world.app, host="127.0.0.1")) as client:
        for path in READS:
            await refused(await client.get(path), 401)
            await refused(await client.get(path, headers={"Authorization": "Basic eDp5"}), 401)
            for headers in (WRONG, AGENT):  # the agents' token does not read
                body = await refused(await client.get(path, headers=headers), 403)
                assert "read token" in body["detail"]
            for headers in (READ, RUN):
                response = await client.get(path, headers=headers)
                assert response.status == 200, (path, await response.text())
        for path in OPEN:
            assert (await client.get(path)).status == 200, path
    for token in (TOKEN, READ_TOKEN, RUN_TOKEN):
        assert token not in caplog.text


@sqlite_only
async def test_without_a_read_token_reading_stays_open(migrated_engine: AsyncEngine) -> None:
    world = await build_world(migrated_engine)
    async with TestClient(TestServer(world.app, host="127.0.0.1")) as client:
        for path in READS + OPEN:
            assert (await client.get(path)).status == 200, path


@sqlite_only
async def test_the_plan_is_served_to_the_agents_token_only(migrated_engine: AsyncEngine) -> None:
    world = await build_world(migrated_engine, read_token=READ_TOKEN)
    async with TestClient(TestServer(world.app, host="127.0.0.1")) as client:
        path = "/api/v1/plan?source=node-a"
        await refused(await client.get(path), 401)
        for headers in (READ, RUN, WRONG):
            body = await refused(await client.get(path, headers=headers), 403)
            assert "agents' token" in body["detail"]
        assert (await client.get(path, headers=AGENT)).status == 200


@sqlite_only
async def test_runs_need_the_run_token_and_no_other(migrated_engine: AsyncEngine) -> None:
    world = await build_world(migrated_engine, read_token=READ_TOKEN)
    async with TestClient(TestServer(world.app, host="127.0.0.1")) as client:
        path = "/api/v1/targets/api/run"
        await refused(await client.post(path), 401)
        for headers in (READ, AGENT, WRONG):
            await refused(await client.post(path, headers=headers), 403)
        # Unauthorized callers learn nothing of the targets: 401, not 404.
        await refused(await client.post("/api/v1/targets/example.com/run"), 401)
        assert world.runs == []
        assert (await client.post(path, headers=RUN)).status == 200
        assert world.runs == ["api"]


@sqlite_only
async def test_without_a_run_token_runs_are_closed(migrated_engine: AsyncEngine) -> None:
    world = await build_world(migrated_engine, run_token=None)
    async with TestClient(TestServer(world.app, host="127.0.0.1")) as client:
        for headers in ({}, RUN, AGENT):
            response = await client.post("/api/v1/targets/api/run", headers=headers)
            body = await refused(response, 403)
            assert "run_token_env" in body["detail"]
    assert world.runs == []


@sqlite_only
async def test_runs_are_rate_limited_per_target(migrated_engine: AsyncEngine) -> None:
    now = [0.0]
    limit = RateLimiter(burst=2, every_s=30.0, clock=lambda: now[0])
    world = await build_world(migrated_engine, run_limit=limit)
    async with TestClient(TestServer(world.app, host="127.0.0.1")) as client:
        statuses = [
            (await client.post("/api/v1/targets/api/run", headers=RUN)).status for _ in range(2)
        ]
        assert statuses == [200, 200]
        response = await client.post("/api/v1/targets/api/run", headers=RUN)
        body = await refused(response, 429)
        assert response.headers["Retry-After"] == "30"
        assert "'api'" in body["detail"]
        assert (await client.post("/api/v1/targets/db/run", headers=RUN)).status == 200
        now[0] += 15.0
        response = await client.post("/api/v1/targets/api/run", headers=RUN)
        assert (response.status, response.headers["Retry-After"]) == (429, "15")
        now[0] += 15.0
        assert (await client.post("/api/v1/targets/api/run", headers=RUN)).status == 200
    assert world.runs == ["api", "api", "db", "api"]


def test_the_tokens_never_show_in_their_repr() -> None:
    tokens = Tokens(agent=TOKEN, read=READ_TOKEN, run=None)
    shown = repr(tokens)
    assert TOKEN not in shown and READ_TOKEN not in shown
    assert "'run': False" in shown


def test_each_token_variable_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in ("read_token_env", "run_token_env"):
        variable = f"EGRESSWATCH_TEST_UNSET_{field.upper()}"
        monkeypatch.delenv(variable, raising=False)
        with pytest.raises(ConfigError) as error:
            settings_from_dict({field: variable})
        assert f"{field}: environment variable {variable} is not set" in str(error.value)
        # A command that serves no API does not need it.
        assert getattr(settings_from_dict({field: variable}, agent_token=False), field)
        monkeypatch.setenv(variable, "s3cret")
        settings = settings_from_dict({field: variable})
        assert getattr(settings, field.removesuffix("_env"))() == "s3cret"


async def test_egresswatch_run_guards_reading_and_metrics_with_its_read_token(
    lab: Lab, running: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wiring: the tokens come from the variables the config names."""
    monkeypatch.setenv("EGRESSWATCH_TEST_READ_TOKEN", READ_TOKEN)
    path = lab.write(
        [{"name": "closed", "address": f"127.0.0.1:{free_port()}"}],
        read_token_env="EGRESSWATCH_TEST_READ_TOKEN",
    )
    service: Service = await running(path, migrate=True)
    assert service.listening is not None
    base = "http://{}:{}".format(*service.listening)
    async with aiohttp.ClientSession() as session:
        for path_ in ("/metrics", "/api/v1/status"):
            async with session.get(base + path_) as response:
                await refused(response, 401)
            async with session.get(base + path_, headers=READ) as response:
                assert response.status == 200
        for path_ in OPEN:
            async with session.get(base + path_) as response:
                assert response.status == 200, path_
        async with session.post(base + "/api/v1/targets/closed/run", headers=READ) as response:
            body = await refused(response, 403)  # no run token configured: closed
            assert "run_token_env" in body["detail"]
