"""Ingest benchmark: rounds per second through the BatchedWriter into SQLite and PostgreSQL.

    python benchmarks/ingest.py                      # 100,000 rounds of 6 steps, both databases
    python benchmarks/ingest.py --rounds 20000 --db sqlite
    python benchmarks/ingest.py --pg-url postgresql+asyncpg://user:pw@127.0.0.1:5432/db
    python benchmarks/ingest.py --db postgresql --batch 2000 --repeat 3   # medians of 3 runs
    python benchmarks/ingest.py --db postgresql --via api   # agents' batches, as the controller

`--via writer` (the default) submits the rounds, as objects, to the `BatchedWriter` (what
`egresswatch run` does with its own rounds). `--via api` takes the controller's path for
agents' batches, `POST /api/v1/results` without its HTTP framing and token check: each body is
made beforehand as an agent makes it (agent/encode.py: one source, `--api-batch` rounds), then
timed: parsed and validated into rounds (controller/ingest/batch_body.py), and stored
by `Ingest.accept` (target and time checks, one transaction per batch), `--api-concurrency`
batches at a time, as agents' requests arrive on several connections.

Besides wall-clock rates it prints CPU time, which a shared machine disturbs far less: the
benchmark process's own (`time.process_time`, client CPU-ms per round) and, for PostgreSQL, the
server backends' that served the benchmark's database (utime + stime from /proc/<pid>/stat,
read just before the engine is disposed; needs the server on this machine).
SQLite writes to a fresh file in a temporary directory. PostgreSQL uses the server named by
--pg-url or EGRESSWATCH_TEST_PG_URL (see .ci/start-postgres.sh): a fresh database is created
there (the role needs CREATEDB) and dropped afterwards. Each run stops submitting after
--time-limit seconds, so a slow machine gives a number rather than hanging. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.agent.encode import batch_body, batch_head, encode_round
from egresswatch.controller.ingest.batch_body import parse_batch
from egresswatch.controller.ingest.intake import Ingest
from egresswatch.evidence import (
    DnsEvidence,
    Evidence,
    HttpEvidence,
    TcpAttempt,
    TcpEvidence,
    TlsEvidence,
    TraceEvidence,
    TraceHop,
)
from egresswatch.model import (
    PROBE_STEPS,
    Reason,
    RoundResult,
    SourceKind,
    Status,
    Step,
    StepResult,
)
from egresswatch.settings import Settings
from egresswatch.storage import BatchedWriter, Store, make_engine, upgrade

TARGETS = 25
SOURCES = 40


@dataclass
class Result:
    database: str
    rounds: int
    step_rows: int
    seconds: float
    client_cpu_s: float
    server_cpu_s: float | None  # PostgreSQL backends only


def _proc_cpu_s(pid: int) -> float | None:
    """utime + stime of process `pid` in seconds, None when /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _server_cpu_s(engine: AsyncEngine) -> float | None:
    """CPU seconds of the PostgreSQL backends connected to the engine's database."""
    if engine.dialect.name != "postgresql":
        return None
    async with engine.connect() as conn:
        pids = (
            await conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            )
        ).scalars()
        times = [_proc_cpu_s(int(pid)) for pid in pids]
    known = [t for t in times if t is not None]
    return sum(known) if known else None


def _evidence(step: Step, address: str, ms: float, failed: bool) -> Evidence:
    """A few fields of each step's own evidence type, about the size agents send."""
    match step:
        case Step.DNS_CLUSTER | Step.DNS_UPSTREAM:
            return DnsEvidence(resolver="10.0.0.10:53", addresses=(address,), name="x.test.")
        case Step.TCP_CONNECT:
            attempt = TcpAttempt(address, "conn_timeout" if failed else "ok", ms)
            return TcpEvidence(None if failed else address, 443, "dns_cluster", (attempt,))
        case Step.TLS_HANDSHAKE:
            return TlsEvidence(address, 443, "x.test", version="TLSv1.3", tls_ms=ms)
        case Step.HTTP_RESPONSE:
            return HttpEvidence("https://x.test/", address, status=200, total_ms=ms)
        case _:
            return TraceEvidence(address, 443, (TraceHop(1, address, ms, None, True),), address)


def step_variants(count: int) -> list[tuple[StepResult, ...]]:
    """Distinct step tuples to share between rounds (realistic rows, little memory)."""
    variants = []
    for v in range(count):
        steps = []
        for n, step in enumerate(PROBE_STEPS):
            failed = v % 10 == 0 and n == 2
            steps.append(
                StepResult(
                    step=step,
                    status=Status.FAIL if failed else Status.OK,
                    reason=Reason.CONN_TIMEOUT if failed else None,
                    duration_s=0.001 * (n + 1) + v * 1e-5,
                    detail=f"{step.value} answered from 10.0.{v % 256}.{n} in {n + 1}.{v % 10} ms",
                    evidence=_evidence(step, f"10.0.{v % 256}.{n}", v % 3, failed),
                )
            )
        variants.append(tuple(steps))
    return variants


def make_rounds(count: int, steps: int) -> list[RoundResult]:
    variants = [v[:steps] for v in step_variants(64)]
    start = datetime.now(UTC) - timedelta(hours=1)
    return [
        RoundResult(
            target=f"target-{i % TARGETS}",
            source=f"pod/probes/agent-{i % SOURCES}",
            started_at=start + timedelta(microseconds=30 * i),
            steps=variants[i % len(variants)],
        )
        for i in range(count)
    ]


async def ingest(
    label: str, url: URL, rounds: list[RoundResult], limit_s: float, batch: int
) -> Result:
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    writer = BatchedWriter(Store(engine), max_batch=batch, max_delay_s=1.0)
    try:
        writer.start()
        started = time.perf_counter()
        cpu_started = time.process_time()
        for chunk in range(0, len(rounds), 1000):
            for r in rounds[chunk : chunk + 1000]:
                writer.submit(r)
            await asyncio.sleep(0)  # let the writer work while we produce, as a service would
            if time.perf_counter() - started > limit_s:
                break
        await writer.close()
        seconds = time.perf_counter() - started
        client_cpu_s = time.process_time() - cpu_started
        server_cpu_s = await _server_cpu_s(engine)
    finally:
        await engine.dispose()
    written = writer.written
    steps = sum(len(r.steps) for r in rounds[:written])
    return Result(label, written, steps, seconds, client_cpu_s, server_cpu_s)


def agent_bodies(rounds: list[RoundResult], per_batch: int) -> list[tuple[int, bytes]]:
    """(rounds, body) of each batch agents would post: each source's rounds in batches of
    `per_batch`, encoded as agent/encode.py does; batches of the sources interleaved."""
    by_source: dict[str, list[RoundResult]] = {}
    for r in rounds:
        by_source.setdefault(r.source, []).append(r)
    bodies = []
    for source, own in by_source.items():
        head = batch_head(source, SourceKind.POD, "node-1")
        for n, first in enumerate(range(0, len(own), per_batch)):
            chunk = own[first : first + per_batch]
            documents = [encode_round(r) for r in chunk]
            bodies.append((n, len(chunk), batch_body(head, f"b-{n}", documents)))
    bodies.sort(key=lambda found: found[0])  # every source's first batch, then the second...
    return [(count, body) for _, count, body in bodies]


def _settings() -> Settings:
    """The benchmark's targets configured (Ingest refuses rounds of any other)."""
    return Settings.model_validate(
        {
            "source": {"name": "controller", "kind": "node"},
            "targets": [
                {"name": f"target-{n}", "url": f"https://target-{n}.example.test/"}
                for n in range(TARGETS)
            ],
        }
    )


async def ingest_api(
    label: str, url: URL, bodies: list[tuple[int, bytes]], limit_s: float, concurrency: int
) -> Result:
    """The bodies through the controller's ingest path, `concurrency` at a time."""
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    settings = _settings()
    ingest = Ingest(Store(engine), settings=lambda: settings, judge=lambda rounds: None, clock=_now)
    queue = list(reversed(bodies))
    totals = [0, 0]  # rounds, step rows stored

    async def agent_requests() -> None:
        while queue and time.perf_counter() - started < limit_s:
            _, body = queue.pop()
            batch = parse_batch(body)  # what routes.results does, without HTTP and the token
            rounds = batch.rounds
            stored = await ingest.accept(
                batch.source, batch.batch_id, rounds, batch.source_kind, batch.source_node
            )
            totals[0] += stored
            totals[1] += sum(len(r.steps) for r in rounds) if stored else 0

    try:
        started = time.perf_counter()
        cpu_started = time.process_time()
        async with asyncio.TaskGroup() as group:
            for n in range(concurrency):
                group.create_task(agent_requests(), name=f"bench-agent-{n}")
        seconds = time.perf_counter() - started
        client_cpu_s = time.process_time() - cpu_started
        server_cpu_s = await _server_cpu_s(engine)
    finally:
        await engine.dispose()
    return Result(label, totals[0], totals[1], seconds, client_cpu_s, server_cpu_s)


def _now() -> datetime:
    return datetime.now(UTC)


async def with_pg_database(server: URL) -> URL:
    name = f"egresswatch_bench_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(
        server.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return server.set(database=name)


async def drop_pg_database(server: URL, name: str) -> None:
    connection = await asyncpg.connect(
        server.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        # An autovacuum worker may still be in the fresh database (FORCE may not end it for a
        # role that is not a superuser): wait a little for it rather than leave the database.
        for attempt in range(30):
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
                return
            except asyncpg.ObjectInUseError:
                if attempt == 29:
                    raise
                await asyncio.sleep(1.0)
    finally:
        await connection.close()


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=6, choices=range(1, 7))
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default=os.environ.get("EGRESSWATCH_TEST_PG_URL"))
    parser.add_argument(
        "--time-limit", type=float, default=120.0, help="seconds of submitting per run"
    )
    parser.add_argument("--batch", type=int, default=None, help="the writer's max_batch")
    parser.add_argument("--repeat", type=int, default=1, help="runs per database (medians)")
    parser.add_argument("--via", choices=["writer", "api"], default="writer")
    parser.add_argument("--api-batch", type=int, default=200, help="rounds per agent batch")
    parser.add_argument("--api-concurrency", type=int, default=4, help="batches at a time")
    args = parser.parse_args(argv)
    batch = args.batch or BatchedWriter.DEFAULT_MAX_BATCH

    rounds = make_rounds(args.rounds, args.steps)
    bodies = agent_bodies(rounds, args.api_batch) if args.via == "api" else []

    async def run(label: str, url: URL) -> Result:
        if args.via == "api":
            return await ingest_api(label, url, bodies, args.time_limit, args.api_concurrency)
        return await ingest(label, url, rounds, args.time_limit, batch)

    results: list[Result] = []
    for _ in range(args.repeat):
        if args.db in ("sqlite", "both"):
            with tempfile.TemporaryDirectory() as directory:
                url = make_url(f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}")
                results.append(await run("sqlite", url))
        if args.db in ("postgresql", "both"):
            if not args.pg_url:
                print(
                    "no PostgreSQL: pass --pg-url or set EGRESSWATCH_TEST_PG_URL", file=sys.stderr
                )
                break
            server = make_url(args.pg_url)
            url = await with_pg_database(server)
            try:
                results.append(await run("postgresql", url))
            finally:
                assert url.database is not None
                await drop_pg_database(server, url.database)
    via = (
        f"via api: batches of {args.api_batch}, {args.api_concurrency} at a time"
        if args.via == "api"
        else f"via the writer: batch {batch}"
    )
    _report(results, via)
    return 0 if results else 1


def _report(results: list[Result], via: str) -> None:
    """One line per run, then the medians per database."""
    print(
        f"{via}\n{'database':<12}{'rounds':>10}{'step rows':>12}{'seconds':>9}"
        f"{'rounds/s':>10}{'step rows/s':>13}{'client ms/round':>17}{'server ms/round':>17}"
    )
    for r in results:
        print(_line(r.database, r))
    for database in sorted({r.database for r in results}):
        runs = [r for r in results if r.database == database]
        if len(runs) > 1:
            print(_line(f"{database} med", *runs))


def _line(label: str, *runs: Result) -> str:
    """The median of each column over `runs` (one run: its values)."""
    rate = statistics.median(r.rounds / r.seconds for r in runs)
    steps = statistics.median(r.step_rows / r.seconds for r in runs)
    client = statistics.median(1000 * r.client_cpu_s / r.rounds for r in runs)
    known = [1000 * r.server_cpu_s / r.rounds for r in runs if r.server_cpu_s is not None]
    server = f"{statistics.median(known):>17.3f}" if known else f"{'-':>17}"
    first = runs[0]
    return (
        f"{label:<12}{first.rounds:>10,}{first.step_rows:>12,}{first.seconds:>9.2f}"
        f"{rate:>10,.0f}{steps:>13,.0f}{client:>17.3f}{server}"
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
