"""A real API server over a real Store and History, seeded with a known history.

`build_world(engine)` makes the app (controller.api.make_app + routes.add_api_routes) over a
migrated database and stores rounds, changes and incidents whose shape the tests know (see
`seed`). The two seams we own are fakes that record their calls: `ingest` stores through the
real Store (so idempotency is the database's), `run_now` returns a canned round.

- `api_world` / `api_client` fixtures: a world of the test's own, and an aiohttp TestClient
  on 127.0.0.1, on SQLite and PostgreSQL (tests/support/databases.py); `sqlite_only` marks
  a test whose subject is not the database.
- `shared_api` / `shared_client`: one server per module and database kind, for tests that
  only read (they cost no database each).
- `ThreadedApi`: the server on its own event loop in a thread, on 127.0.0.1:PORT, for
  clients of any loop, or none (schemathesis).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.controller.api.agent_identity import AgentIdentities
from egresswatch.controller.api.app import make_app
from egresswatch.controller.api.auth import Right, Tokens, authorize
from egresswatch.controller.api.ratelimit import RateLimiter
from egresswatch.controller.api.routes import ApiDeps, add_api_routes
from egresswatch.controller.ingest.intake import Ingest
from egresswatch.evidence import TcpAttempt, TcpEvidence
from egresswatch.model import (
    PROBE_STEPS,
    Change,
    Reason,
    RoundResult,
    SourceKind,
    Status,
    Step,
    StepResult,
    StepState,
    Suspect,
)
from egresswatch.settings import Settings, settings_from_dict
from egresswatch.storage import (
    DatabaseProbe,
    History,
    IncidentRecord,
    Outage,
    Store,
    make_engine,
    upgrade,
)
from tests.support.databases import (  # noqa: F401
    KINDS,
    create_pg_database,
    drop_pg_database,
    migrated_engine_fixture,
    pg_server_url,
    sqlite_url,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOKEN = "agent-token-for-tests"
RUN_TOKEN = "run-token-for-tests"
READ_TOKEN = "read-token-for-tests"
RUN_BURST = 1000  # the rate limit is not these tests' subject (tests/test_run_limits.py)
PROXY_PASSWORD_ENV = "EGRESSWATCH_TEST_PROXY_PASSWORD"
PROXY_PASSWORD = "env-secret-4b1d"
PROXY_URL_PASSWORD = "url-secret-9f2e"
NODE, POD = "node-a", "pod-x"
SOURCES = (NODE, POD)
CONFIGURED = ("api", "db", "kubernetes-io")
STORED_ONLY = "legacy"  # rounds stored, never configured
ROUND_EVERY = timedelta(minutes=1)
ROUNDS_PER_PAIR = 30
POD_FAILS_SINCE = NOW - timedelta(minutes=10)


def config(**changes: Any) -> Settings:
    """The test configuration: two endpoints, a control, a proxy with credentials."""
    os.environ.setdefault(PROXY_PASSWORD_ENV, PROXY_PASSWORD)
    data: dict[str, Any] = {
        "source": {"name": "controller", "kind": "node"},
        "dns": {"upstream": "168.63.129.16"},
        "proxy": {
            "url": f"http://squid:{PROXY_URL_PASSWORD}@proxy.internal:3128",
            "username": "squid",
            "password_env": PROXY_PASSWORD_ENV,
            "no_proxy": ["10.0.0.0/8", ".cluster.local"],
        },
        "egress_devices": ["10.1.0.4/32"],
        "targets": [
            {
                "name": "api",
                "url": "https://api.example.test/health",
                "pinned_ips": ["203.0.113.10"],
                "interval": "20s",
                "expect_status": "200-299",
            },
            {"name": "db", "address": "db.example.test:5432", "use_proxy": False},
            {"name": "kubernetes-io", "url": "https://kubernetes.io/", "role": "control"},
        ],
    }
    data.update(changes)
    return settings_from_dict(data)


def make_round(
    target: str,
    source: str,
    at: datetime,
    failing: Step | None = None,
    reason: Reason | None = None,
) -> RoundResult:
    """Steps 1-5 ok (path_trace not due), or failing from `failing` on (later ones skipped)."""
    steps = []
    broken = False
    for step in PROBE_STEPS:
        if step is failing:
            steps.append(
                StepResult(
                    step,
                    Status.FAIL,
                    reason,
                    duration_s=5.0,
                    detail=f"{step.value} failed",
                    evidence=TcpEvidence(
                        address="203.0.113.10",
                        port=443,
                        ip_source="dns_cluster",
                        attempts=(
                            TcpAttempt("203.0.113.10", reason.value if reason else "?", 5000.0),
                        ),
                    ),
                )
            )
            broken = True
        elif step is Step.PATH_TRACE:
            steps.append(StepResult(step, Status.SKIPPED, Reason.NOT_DUE))
        elif broken and step is not Step.DNS_UPSTREAM:
            steps.append(StepResult(step, Status.SKIPPED, Reason.DEPENDENCY_FAILED))
        else:
            steps.append(StepResult(step, Status.OK, None, duration_s=0.012, detail="ok"))
    return RoundResult(target, source, at, tuple(steps))


def seed_rounds() -> list[RoundResult]:
    """Every (source, configured target) every minute for 30 minutes before NOW; pod-x cannot
    connect to `api` for the last 10 minutes; one round of the never-configured `legacy`."""
    rounds = []
    for i in range(ROUNDS_PER_PAIR):
        at = NOW - ROUND_EVERY * (ROUNDS_PER_PAIR - i)
        for source in SOURCES:
            for target in CONFIGURED:
                failing = target == "api" and source == POD and at >= POD_FAILS_SINCE
                rounds.append(
                    make_round(
                        target,
                        source,
                        at,
                        Step.TCP_CONNECT if failing else None,
                        Reason.CONN_TIMEOUT if failing else None,
                    )
                )
    rounds.append(make_round(STORED_ONLY, NODE, NOW - timedelta(minutes=5)))
    return rounds


def seed_changes() -> list[Change]:
    """120 changes: 58 flap-and-recover pairs two days ago, then four that set today's states:
    pod-x/api tcp_connect failing, node-a/db dns_cluster degraded, pod-x/db silent (unknown),
    node-a/api http_response recovered."""
    keys = [(s, t, step) for s in SOURCES for t in ("api", "db") for step in PROBE_STEPS[:5]]
    changes = []
    start = NOW - timedelta(days=2)
    for i in range(58):
        source, target, step = keys[i % len(keys)]
        at = start + timedelta(minutes=20 * i)
        for offset, (before, after) in enumerate(
            ((StepState.OK, StepState.FAILING), (StepState.FAILING, StepState.OK))
        ):
            began = at + timedelta(minutes=5 * offset)
            changes.append(
                Change(
                    source,
                    target,
                    step,
                    before,
                    after,
                    began,
                    began + timedelta(minutes=2),
                    Reason.CONN_RESET if after is StepState.FAILING else None,
                    f"flap {i}",
                )
            )
    changes += [
        Change(
            NODE,
            "api",
            Step.HTTP_RESPONSE,
            StepState.FAILING,
            StepState.OK,
            NOW - timedelta(hours=3),
            NOW - timedelta(hours=2, minutes=58),
        ),
        Change(
            NODE,
            "db",
            Step.DNS_CLUSTER,
            StepState.OK,
            StepState.DEGRADED,
            NOW - timedelta(hours=1),
            NOW - timedelta(minutes=50),
            detail="latency up",
        ),
        Change(
            POD,
            "db",
            None,
            StepState.OK,
            StepState.UNKNOWN,
            NOW - timedelta(minutes=30),
            NOW - timedelta(minutes=20),
            detail="silent",
        ),
        Change(
            POD,
            "api",
            Step.TCP_CONNECT,
            StepState.OK,
            StepState.FAILING,
            POD_FAILS_SINCE,
            NOW - timedelta(minutes=7),
            Reason.CONN_TIMEOUT,
            "3 rounds in a row",
        ),
    ]
    return changes


def seed_incidents() -> list[IncidentRecord]:
    """One open incident of `api` (pod-x, since POD_FAILS_SINCE) and four closed ones."""
    open_one = IncidentRecord(
        id="inc-api-now",
        target="api",
        started_at=POD_FAILS_SINCE,
        detected_at=NOW - timedelta(minutes=7),
        ended_at=None,
        sources=(POD,),
        first_failing_step=Step.TCP_CONNECT,
        suspect=Suspect.NETWORK_POLICY,
        evidence=("pod-x times out connecting to 203.0.113.10:443; node-a gets through",),
        next_command="nc -z -v -w 5 203.0.113.10 443",
        history=(
            {
                "at": "2026-03-01T11:53:00Z",
                "first_failing_step": "tcp_connect",
                "suspect": "network_policy",
                "sources": [POD],
                "states": {POD: {"tcp_connect": "failing"}},
            },
        ),
    )
    closed = [
        IncidentRecord(
            id=f"inc-{target}-{days}d",
            target=target,
            started_at=NOW - timedelta(days=days),
            detected_at=NOW - timedelta(days=days) + timedelta(minutes=2),
            ended_at=NOW - timedelta(days=days) + timedelta(minutes=40),
            sources=SOURCES,
            first_failing_step=Step.DNS_CLUSTER,
            suspect=Suspect.CLUSTER_DNS,
            evidence=("both sources: SERVFAIL from 10.0.0.10",),
            next_command="nslookup db.example.test",
            history=(),
        )
        for target, days in (("db", 1), ("api", 2), ("db", 3), ("api", 4))
    ]
    return [open_one, *closed]


@dataclass
class ApiWorld:
    """The app and what the tests look at: the seams' calls and the injected config."""

    store: Store
    history: History
    settings: Settings
    app: web.Application
    now: datetime = NOW
    ingested: list[tuple[str, str, list[RoundResult]]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    run_error: Exception | None = None
    run_gate: asyncio.Event | None = None  # when set, on-demand rounds wait for it

    intake: Ingest | None = None
    judged: list[RoundResult] = field(default_factory=list)

    async def ingest(
        self,
        source: str,
        batch_id: str,
        rounds: Sequence[RoundResult],
        kind: SourceKind | None = None,
        node: str | None = None,
    ) -> int:
        """The real ingest path (validated, stored, then judged), its calls recorded."""
        assert self.intake is not None
        stored = await self.intake.accept(source, batch_id, rounds, kind, node)
        self.ingested.append((source, batch_id, list(rounds)))
        return stored

    async def run_now(self, target: str) -> RoundResult:
        self.runs.append(target)
        if self.run_gate is not None:
            await self.run_gate.wait()
        if self.run_error is not None:
            raise self.run_error
        return make_round(target, "controller", self.now, Step.HTTP_RESPONSE, Reason.HTTP_STATUS)


async def build_world(
    engine: AsyncEngine,
    *,
    token: str | None = TOKEN,
    run_token: str | None = RUN_TOKEN,
    read_token: str | None = None,
    run_limit: RateLimiter | None = None,
    outage: Outage | None = None,
    agents: AgentIdentities | None = None,
) -> ApiWorld:
    """Seed a migrated database and make the app over it (not started). The tokens are the
    agents', the run token and the read token (None: not configured: reading is open)."""
    store = Store(engine, clock=lambda: NOW)
    history = History(engine)
    settings = config()
    await store.sync_targets([(t.name, t.endpoint.url, t.role) for t in settings.targets])
    await store.register_source(NODE, SourceKind.NODE)
    await store.register_source(POD, SourceKind.POD)
    await store.save_rounds(seed_rounds())
    await history.save_changes(seed_changes())
    for incident in seed_incidents():
        await history.save_incident(incident)
    tokens = Tokens(agent=token, read=read_token, run=run_token)
    outage = outage or Outage()
    app = make_app(
        registry=CollectorRegistry(),
        readiness=lambda: {"database_schema": True},
        probes={"database": DatabaseProbe(lambda: store.engine, outage=outage, cache_s=0.0)},
        metrics_guard=lambda request: authorize(request, Right.READ, tokens),
    )
    world = ApiWorld(store, history, settings, app)
    world.intake = Ingest(
        store, settings=lambda: world.settings, judge=world.judged.extend, clock=lambda: world.now
    )
    deps = ApiDeps(
        store=store,
        history=history,
        settings=lambda: world.settings,
        ingest=world.ingest,
        run_now=world.run_now,
        tokens=tokens,
        run_limit=run_limit or RateLimiter(burst=RUN_BURST, every_s=1.0),
        clock=lambda: world.now,
        outage=outage,
        agents=agents,
    )
    add_api_routes(app, deps)
    return world


@pytest.fixture(name="api_world")
async def api_world_fixture(migrated_engine: AsyncEngine) -> ApiWorld:
    """A world of its own, for a test that changes something."""
    return await build_world(migrated_engine)


@pytest.fixture(name="api_client")
async def api_client_fixture(api_world: ApiWorld) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(api_world.app, host="127.0.0.1")) as client:
        yield client


# Overrides the database fixture's parameters, for tests whose subject is not the database
# (validation, authentication): they run on SQLite only.
sqlite_only = pytest.mark.parametrize("migrated_engine", ["sqlite"], indirect=True)


@pytest.fixture(name="shared_api", scope="module", params=KINDS)
def shared_api_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadedApi]:
    """One seeded server per module and database kind, for tests that only read: never
    change its world."""
    if request.param == "sqlite":
        with ThreadedApi(sqlite_url(tmp_path_factory.mktemp("shared-api"))) as api:
            yield api
        return
    server = pg_server_url()
    url = asyncio.run(create_pg_database(server))
    try:
        with ThreadedApi(url) as api:
            yield api
    finally:
        assert url.database is not None
        asyncio.run(drop_pg_database(server, url.database))


@pytest.fixture(name="shared_client")
async def shared_client_fixture(shared_api: ThreadedApi) -> AsyncIterator[ClientSession]:
    async with ClientSession(base_url=shared_api.base_url) as session:
        yield session


class ThreadedApi:
    """The seeded server on 127.0.0.1 in a thread of its own, over the EMPTY database at
    `url` (migrated and seeded here), for clients on other event loops or none (schemathesis).

    `with ThreadedApi(url) as api: requests.get(api.base_url + "/api/v1/status")`.
    """

    def __init__(self, url: URL | str) -> None:
        self._url = url
        self._thread = threading.Thread(target=self._main, name="api-server", daemon=True)
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.base_url = ""
        self.world: ApiWorld | None = None

    def __enter__(self) -> ThreadedApi:
        self._thread.start()
        if not self._started.wait(60):
            raise TimeoutError("the API server did not start within 60 s")
        if self._error is not None:
            raise RuntimeError("the API server failed to start") from self._error
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await asyncio.to_thread(upgrade, self._url)
        engine = make_engine(self._url)
        runner: web.AppRunner | None = None
        try:
            self.world = await build_world(engine)
            runner = web.AppRunner(self.world.app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.base_url = f"http://127.0.0.1:{port}"
            self._started.set()
            await self._stop.wait()
        finally:
            if runner is not None:
                await runner.cleanup()
            await engine.dispose()
