"""A database outage is an outage, said plainly: 503 with Retry-After and a problem document,
/readyz failing with the reason, one warning when it starts and one line when it ends (no
traceback per request or per write), and nothing lost.

The database really goes away: PostgreSQL behind a TCP relay the test cuts (other engineers
share the server, so it is never stopped), SQLite with its directory replaced by a file and
its pooled connections closed (a volume that went away).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.backoff import Backoff
from egresswatch.model import Endpoint, RoundResult
from egresswatch.report import round_document
from egresswatch.storage import BatchedWriter, NoHooks, Outage, Store, make_engine, upgrade
from egresswatch.wiring import Service
from tests.support.apiserver import NODE, NOW, TOKEN, build_world, make_round
from tests.support.databases import KINDS, create_pg_database, drop_pg_database, pg_server_url
from tests.support.dnsserver import dns_server
from tests.support.https import NAME, LocalServers, Reply, local_servers, pki
from tests.support.relay import TcpRelay
from tests.support.service import poll, wait_for
from tests.test_service import Lab, lab, running

__all__ = ["dns_server", "lab", "local_servers", "pki", "running"]  # fixtures

AUTH = {"Authorization": f"Bearer {TOKEN}"}
READS = [
    "/api/v1/status",
    "/api/v1/incidents",
    "/api/v1/changes?limit=5",
    "/api/v1/targets/api/timeline",
    "/api/v1/targets/api/diagnosis",
    "/api/v1/incidents/inc-api-now",
]
OUTAGE_LOGGER = "egresswatch.storage.outage"


class Database:
    """A migrated database of one kind whose connection the test can cut and restore."""

    def __init__(self, engine: AsyncEngine, cut: Any, restore: Any) -> None:
        self.engine = engine
        self.cut = cut
        self.restore = restore


@pytest.fixture(name="database", params=KINDS)
async def database_fixture(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        async for database in _sqlite(tmp_path):
            yield database
        return
    async for database in _postgresql():
        yield database


async def _sqlite(tmp_path: Path) -> AsyncIterator[Database]:
    home = tmp_path / "data"
    home.mkdir()
    url = f"sqlite+aiosqlite:///{home / 'egresswatch.db'}"
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    away = tmp_path / "data-away"

    async def cut() -> None:
        home.rename(away)
        home.write_text("")  # the path is there, but it is no directory
        await engine.dispose()  # the pooled connections held the file open

    async def restore() -> None:
        home.unlink()
        away.rename(home)

    try:
        yield Database(engine, cut, restore)
    finally:
        await engine.dispose()


async def _postgresql() -> AsyncIterator[Database]:
    async with relayed_postgresql() as (url, relay):
        engine = make_engine(url)
        try:
            yield Database(engine, relay.cut, relay.restore)
        finally:
            await engine.dispose()


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == OUTAGE_LOGGER]


def batch(batch_id: str) -> dict[str, Any]:
    at = NOW - timedelta(seconds=20)
    document = round_document(make_round("api", NODE, at), Endpoint.parse("example.test:443"))
    kept = {k: document[k] for k in ("target", "source", "started_at", "steps")}
    return {"source": NODE, "batch_id": batch_id, "rounds": [kept]}


async def assert_unavailable(response: Any) -> None:
    assert response.status == 503, await response.text()
    assert response.content_type == "application/problem+json"
    assert int(response.headers["Retry-After"]) >= 1
    body = json.loads(await response.text())
    assert body["status"] == 503 and "database" in body["detail"]


async def test_while_the_database_is_away_the_api_answers_503_and_readyz_says_why(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    world = await build_world(database.engine)
    async with TestClient(TestServer(world.app, host="127.0.0.1")) as client:
        assert (await client.get("/api/v1/status")).status == 200
        assert (await client.get("/readyz")).status == 200

        await database.cut()
        for _ in range(5):
            for path in READS:
                await assert_unavailable(await client.get(path))
        # Ingest too: the agent keeps its batch and retries it.
        await assert_unavailable(
            await client.post("/api/v1/results", json=batch("b-1"), headers=AUTH)
        )
        ready = await client.get("/readyz")
        assert ready.status == 503
        body = await ready.json()
        assert body["checks"]["database"] is False
        assert body["reasons"]["database"].startswith("database unreachable")

        # Said once, not once per request: one warning, no traceback anywhere.
        lines = outage_lines(caplog)
        assert [r.levelname for r in lines] == ["WARNING"], [r.getMessage() for r in lines]
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]

        await database.restore()

        async def answers() -> bool:
            return (await client.get("/api/v1/status")).status == 200

        await poll(answers, timeout_s=15)
        assert (await client.get("/readyz")).status == 200
        stored = await client.post("/api/v1/results", json=batch("b-1"), headers=AUTH)
        assert stored.status == 200 and (await stored.json())["stored"] == 1  # nothing lost
    lines = outage_lines(caplog)
    assert [r.levelname for r in lines] == ["WARNING", "INFO"]
    assert "database is back" in lines[1].getMessage()
    assert "operations failed meanwhile" in lines[1].getMessage()


class CountingHooks(NoHooks):
    def __init__(self) -> None:
        self.errors = 0

    def database_error(self, error: BaseException) -> None:
        self.errors += 1

    def rounds_dropped(self, rounds: int, why: str) -> None:
        raise AssertionError(f"{rounds} rounds dropped ({why})")


async def test_rounds_written_during_an_outage_are_stored_after_it_and_logged_once(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    store = Store(database.engine)
    await store.sync_targets([("api", "https://api.example.test/", "endpoint")])
    hooks = CountingHooks()
    outage = Outage()
    writer = BatchedWriter(
        store,
        max_batch=20,
        max_delay_s=0.01,
        backoff=Backoff(0.02, 0.1),
        hooks=hooks,
        outage=outage,
    )
    await database.cut()
    writer.start()
    rounds: list[RoundResult] = []
    try:
        for i in range(60):
            rounds.append(make_round("api", NODE, NOW - timedelta(minutes=60 - i)))
            writer.submit(rounds[-1])
            await asyncio.sleep(0.005)

        async def failed_often() -> bool:
            return hooks.errors >= 10

        await poll(failed_often, timeout_s=15, every_s=0.02)
        assert outage.down and writer.written == 0
        await database.restore()

        async def all_written() -> bool:
            return writer.written == 60

        await poll(all_written, timeout_s=20, every_s=0.05)
    finally:
        await writer.close()
    back = await store.rounds_between("api", NOW - timedelta(hours=2), NOW)
    assert back == rounds
    lines = outage_lines(caplog)
    print(f"\n{hooks.errors} failed writes during the outage, {len(lines)} outage log lines")
    assert [r.levelname for r in lines] == ["WARNING", "INFO"], [r.getMessage() for r in lines]
    assert "first seen by writer" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_a_long_outage_is_counted_not_repeated(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    now = [0.0]
    outage = Outage(clock=lambda: now[0], report_every_s=60.0)
    error = ConnectionRefusedError(111, "refused")
    for _ in range(475):  # the 60 s: 475 failed requests and flushes
        outage.failed(error, "api")
        now[0] += 60.0 / 475
    outage.failed(error, "writer")
    outage.recovered()
    outage.recovered()  # nothing more to say
    messages = [r.getMessage() for r in caplog.records if r.name == OUTAGE_LOGGER]
    assert len(messages) == 3, messages
    assert messages[0].startswith(
        "database unreachable (ConnectionRefusedError, first seen by api)"
    )
    assert messages[1].startswith("database still unreachable after 60s: 4")
    assert messages[2].startswith("database is back after 60.0s: 476 operations failed")
    assert outage.outages == 1 and not outage.down


async def test_egresswatch_run_through_a_postgresql_outage(
    lab: Lab,
    running: Callable[..., Any],
    local_servers: LocalServers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The whole service: the API, /readyz, the writer and detection share one outage, said
    once; the rounds run meanwhile are stored after it."""
    caplog.set_level(logging.DEBUG)
    async with relayed_postgresql() as (database_url, relay):
        good = await local_servers.https(Reply(200))
        path = lab.write(
            [{"name": "good", "url": f"https://{NAME}:{good.port}/"}], database=database_url
        )
        service: Service = await running(path)
        writer = service.ingest.writer
        await wait_for(lambda: writer.written >= 2, timeout_s=15)
        assert service.listening is not None
        base = "http://{}:{}".format(*service.listening)
        async with aiohttp.ClientSession() as session:
            await relay.cut()
            await wait_for(lambda: writer.depth >= 2, timeout_s=15)  # rounds wait in memory
            async with session.get(f"{base}/api/v1/status") as response:
                await assert_unavailable(response)
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 503
                assert (await response.json())["reasons"]["database"].startswith(
                    "database unreachable"
                )
            await asyncio.sleep(2.0)  # a few more rounds, flushes and controller ticks
            buffered = writer.depth
            await relay.restore()
            await wait_for(lambda: writer.depth == 0, timeout_s=30)

            async def ready() -> bool:
                async with session.get(f"{base}/readyz") as response:
                    return response.status == 200

            await poll(ready, timeout_s=15)
        assert writer.dropped == 0
        lines = outage_lines(caplog)
        print(f"\n{buffered} rounds buffered during the outage, all stored after it")
        assert [r.levelname for r in lines] == ["WARNING", "INFO"], [r.getMessage() for r in lines]
        noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        assert not noisy, [r.getMessage() for r in noisy]


@contextlib.asynccontextmanager
async def relayed_postgresql() -> AsyncIterator[tuple[str, TcpRelay]]:
    """A migrated PostgreSQL database behind a relay: its URL through the relay, the relay."""
    server = pg_server_url()
    url: URL = await create_pg_database(server)
    await asyncio.to_thread(upgrade, url)
    relay = TcpRelay(url.host or "127.0.0.1", url.port or 5432)
    await relay.start()
    try:
        relayed = url.set(host="127.0.0.1", port=relay.port)
        yield relayed.render_as_string(hide_password=False), relay
    finally:
        await relay.close()
        assert url.database is not None
        await drop_pg_database(server, url.database)
