"""HTTP API latency on a database filled by api_data.py: p50/p95 of the read endpoints.

    python benchmarks/api_latency.py URL [URL ...] [--requests 200] [--warmup 20]

For each database URL it serves the real application (`make_app` + `add_api_routes`, over a
Store and History on that database and a Settings naming the stored targets with their roles)
on 127.0.0.1, as `egresswatch run` does (access log off, `gc.freeze()` once started), and
times sequential requests over HTTP with an aiohttp client in the same process: `--warmup`
requests first (not counted, but the first of them is shown: empty pool, nothing cached yet),
then `--requests` per endpoint, each case bounded by `--case-seconds`. A latency is from
sending the request to having read the whole body. Every answer must be 200. Prints one plain
table per database; exits 1 when a p95 held to the goal (incidents, status) is 50 ms or more.
Nothing is written to the database. Not a test.

The data does not change while it runs, so after its first request /api/v1/status renders
nothing again (History.states and the status document reuse what did not change, see
controller/api/documents.py): its first request is the cost when every state has changed.

The generated target names are URLs (`https://api-00.example.test/health`), which the config's
name pattern refuses; the Settings is therefore built without validation (`model_construct`),
with each stored target's name, URL and role: the status document reads only those.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import sqlalchemy as sa
from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import make_url

from egresswatch.controller.api.app import make_app
from egresswatch.controller.api.auth import Tokens
from egresswatch.controller.api.ratelimit import RateLimiter
from egresswatch.controller.api.routes import ApiDeps, add_api_routes
from egresswatch.model import Role, RoundResult, SourceKind
from egresswatch.settings import Settings, TargetSettings
from egresswatch.storage import History, Store, make_engine, redact
from egresswatch.storage import tables as t

GOAL_MS = 50.0  # p95 target for incidents and status


@dataclass(frozen=True)
class Case:
    label: str
    path: Callable[[], str]  # a new path (with its query) per request
    goal: bool  # held to the p95 goal


@dataclass(frozen=True)
class Measured:
    label: str
    items: int
    kib: float
    first: float  # the first request (nothing cached yet)
    p50: float
    p95: float
    max: float
    requests: int
    goal: bool


def settings_for(targets: Sequence[tuple[str, str, Role]]) -> Settings:
    """A Settings naming exactly the stored (name, url, role) targets, unvalidated (the names
    are URLs; see the module docstring)."""
    return Settings.model_construct(
        targets=[
            TargetSettings.model_construct(name=name, url=url, role=role)
            for name, url, role in targets
        ]
    )


async def refuse_ingest(
    source: str,
    batch_id: str,
    rounds: Sequence[RoundResult],
    kind: SourceKind | None,
    node: str | None,
) -> int:
    raise RuntimeError("ingest is not part of this benchmark")


async def refuse_run(target: str) -> RoundResult:
    raise RuntimeError("on-demand rounds are not part of this benchmark")


async def serve(url: str) -> tuple[web.AppRunner, str, dict[str, Any]]:
    """The API over the database at `url`, listening on 127.0.0.1; its base URL and facts."""
    engine = make_engine(url)
    store, history = Store(engine), History(engine)
    stored = await store.targets()
    settings = settings_for([(r.name, r.url, r.role) for r in stored])
    async with engine.connect() as conn:
        counts = {
            table.name: (
                await conn.execute(sa.select(sa.func.count()).select_from(table))
            ).scalar_one()
            for table in (t.step_results, t.rounds, t.changes, t.incidents, t.step_states)
        }
        server_version = (
            (await conn.exec_driver_sql("SHOW server_version")).scalar_one()
            if engine.dialect.name == "postgresql"
            else (await conn.exec_driver_sql("SELECT sqlite_version()")).scalar_one()
        )
    app = make_app(registry=CollectorRegistry(), readiness=lambda: {"database_schema": True})
    add_api_routes(
        app,
        ApiDeps(
            store=store,
            history=history,
            settings=lambda: settings,
            ingest=refuse_ingest,
            run_now=refuse_run,
            tokens=Tokens(),
            run_limit=RateLimiter(burst=1, every_s=1.0),
            clock=lambda: datetime.now(UTC),
        ),
    )

    async def dispose(_: web.Application) -> None:
        await engine.dispose()

    app.on_cleanup.append(dispose)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    facts = {
        "dialect": engine.dialect.name,
        "version": server_version,
        "targets": [r.name for r in stored],
        "sources": len(await store.sources()),
        **counts,
    }
    return runner, f"http://127.0.0.1:{port}", facts


def cases(targets: Sequence[str], rng: random.Random) -> list[Case]:
    def target() -> str:
        return quote(rng.choice(targets), safe="")

    return [
        Case("GET /api/v1/incidents", lambda: "/api/v1/incidents", True),
        Case(
            "GET /api/v1/incidents?target=",
            lambda: f"/api/v1/incidents?target={target()}",
            True,
        ),
        Case("GET /api/v1/incidents?open=true", lambda: "/api/v1/incidents?open=true", True),
        Case(
            "GET /api/v1/incidents?target=&open=true",
            lambda: f"/api/v1/incidents?target={target()}&open=true",
            True,
        ),
        Case("GET /api/v1/changes", lambda: "/api/v1/changes", False),
        Case("GET /api/v1/changes?target=", lambda: f"/api/v1/changes?target={target()}", False),
        Case("GET /api/v1/status", lambda: "/api/v1/status", True),
    ]


async def timed_get(session: aiohttp.ClientSession, path: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    async with session.get(path) as response:
        body = await response.read()
        status = response.status
    elapsed = (time.perf_counter() - started) * 1000
    if status != 200:
        raise SystemExit(f"GET {path}: HTTP {status}: {body[:300]!r}")
    return elapsed, body


def items_in(body: bytes) -> int:
    """Items of a page, or (source, target) rows of the status document."""
    document = json.loads(body)
    if "items" in document:
        return len(document["items"])
    return sum(len(target["sources"]) for target in document["targets"])


async def measure(
    base: str, case: Case, requests: int, warmup: int, case_seconds: float
) -> Measured:
    async with aiohttp.ClientSession(base_url=base) as session:
        deadline = time.perf_counter() + case_seconds
        first, _ = await timed_get(session, case.path())
        for _ in range(warmup - 1):
            await timed_get(session, case.path())
        times: list[float] = []
        body = b""
        while len(times) < requests and time.perf_counter() < deadline:
            elapsed, body = await timed_get(session, case.path())
            times.append(elapsed)
    if len(times) < 2:
        raise SystemExit(f"{case.label}: fewer than 2 requests in {case_seconds} s")
    p95 = statistics.quantiles(times, n=20, method="inclusive")[18]
    return Measured(
        case.label,
        items_in(body),
        len(body) / 1024,
        first,
        statistics.median(times),
        p95,
        max(times),
        len(times),
        case.goal,
    )


def print_table(title: str, rows: Sequence[Measured]) -> None:
    print(f"\n{title}")
    header = (
        f"{'request':<42}{'n':>5}{'items':>7}{'KiB':>9}{'1st ms':>9}{'p50 ms':>9}"
        f"{'p95 ms':>9}{'max ms':>9}  goal"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        goal = ("ok" if row.p95 < GOAL_MS else "MISSED") if row.goal else "-"
        print(
            f"{row.label:<42}{row.requests:>5}{row.items:>7}{row.kib:>9.1f}{row.first:>9.2f}"
            f"{row.p50:>9.2f}{row.p95:>9.2f}{row.max:>9.2f}  {goal}",
            flush=True,
        )


async def run_one(url: str, args: argparse.Namespace) -> bool:
    runner, base, facts = await serve(url)
    try:
        # What `egresswatch run` does once started: long-lived objects out of the collector's
        # generations.
        gc.collect()
        gc.freeze()
        print(
            f"\n{redact(make_url(url))}: {facts['dialect']} {facts['version']};"
            f" {facts['step_results']:,} step results, {facts['rounds']:,} rounds,"
            f" {len(facts['targets'])} targets x {facts['sources']} sources,"
            f" {facts['changes']:,} changes, {facts['incidents']:,} incidents,"
            f" {facts['step_states']:,} step states; serving on {base}",
            flush=True,
        )
        rng = random.Random(args.seed)
        rows = [
            await measure(base, case, args.requests, args.warmup, args.case_seconds)
            for case in cases(facts["targets"], rng)
            if args.only in case.label
        ]
    finally:
        await runner.cleanup()
        gc.unfreeze()
    print_table(f"{facts['dialect']}: {args.requests} sequential requests each", rows)
    return all(row.p95 < GOAL_MS for row in rows if row.goal)


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("urls", nargs="+", help="databases filled by benchmarks/api_data.py")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per endpoint")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests first (>= 1)")
    parser.add_argument("--case-seconds", type=float, default=120.0, help="time bound per endpoint")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--only", default="", help="measure only the requests whose path contains this"
    )
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.requests < 2:
        parser.error("give --warmup 1 or more and --requests 2 or more")
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python"
        f" {platform.python_version()}, aiohttp {aiohttp.__version__},"
        f" SQLAlchemy {sa.__version__}; client and server in one process and event loop"
    )
    met = True
    for url in args.urls:
        met = await run_one(url, args) and met
    print(f"\np95 < {GOAL_MS:.0f} ms for incidents and status: {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
