"""Ingest benchmark: rounds per second through the BatchedWriter into SQLite and PostgreSQL.

    python benchmarks/ingest.py                      # 100,000 rounds of 6 steps, both databases
    python benchmarks/ingest.py --rounds 20000 --db sqlite
    python benchmarks/ingest.py --pg-url postgresql+asyncpg://user:pw@127.0.0.1:5432/db

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
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from sqlalchemy.engine import URL, make_url

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
from egresswatch.model import PROBE_STEPS, Reason, RoundResult, Status, Step, StepResult
from egresswatch.storage import BatchedWriter, Store, make_engine, upgrade


@dataclass
class Result:
    database: str
    rounds: int
    step_rows: int
    seconds: float


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
            target=f"https://target-{i % 25}.example.test/",
            source=f"pod/probes/agent-{i % 40}",
            started_at=start + timedelta(microseconds=30 * i),
            steps=variants[i % len(variants)],
        )
        for i in range(count)
    ]


async def ingest(label: str, url: URL, rounds: list[RoundResult], limit_s: float) -> Result:
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    # Close waits for the whole buffer: give it the time limit, not the 10 s default.
    writer = BatchedWriter(Store(engine), max_batch=500, max_delay_s=1.0, close_timeout_s=limit_s)
    try:
        writer.start()
        started = time.perf_counter()
        for chunk in range(0, len(rounds), 1000):
            for r in rounds[chunk : chunk + 1000]:
                writer.submit(r)
            await asyncio.sleep(0)  # let the writer work while we produce, as a service would
        await writer.close()
        seconds = time.perf_counter() - started
    finally:
        await engine.dispose()
    written = writer.written
    steps = sum(len(r.steps) for r in rounds[:written])
    return Result(label, written, steps, seconds)


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
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=6, choices=range(1, 7))
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default=os.environ.get("EGRESSWATCH_TEST_PG_URL"))
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per database")
    args = parser.parse_args(argv)

    rounds = make_rounds(args.rounds, args.steps)
    results: list[Result] = []
    if args.db in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as directory:
            url = make_url(f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}")
            results.append(await ingest("sqlite", url, rounds, args.time_limit))
    if args.db in ("postgresql", "both"):
        if not args.pg_url:
            print("no PostgreSQL: pass --pg-url or set EGRESSWATCH_TEST_PG_URL", file=sys.stderr)
        else:
            server = make_url(args.pg_url)
            url = await with_pg_database(server)
            try:
                results.append(await ingest("postgresql", url, rounds, args.time_limit))
            finally:
                assert url.database is not None
                await drop_pg_database(server, url.database)

    print(
        f"{'database':<12}{'rounds':>10}{'step rows':>12}{'seconds':>10}{'rounds/s':>12}"
        f"{'step rows/s':>14}"
    )
    for r in results:
        print(
            f"{r.database:<12}{r.rounds:>10,}{r.step_rows:>12,}{r.seconds:>10.2f}"
            f"{r.rounds / r.seconds:>12,.0f}{r.step_rows / r.seconds:>14,.0f}"
        )
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
