"""Time the History queries the HTTP API makes, on a database filled by api_data.py.

    python benchmarks/api_queries.py URL [--calls 100] [--explain]

Each query runs `--calls` times with random arguments drawn from the stored targets, sources and
time range; the table gives rows returned (by the last call) and p50/p95/max milliseconds.
`--explain` prints each query's plan (PostgreSQL: EXPLAIN ANALYZE; SQLite: EXPLAIN QUERY PLAN),
to check that they use their indexes. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.model import Step
from egresswatch.storage import History, Page, Store, make_engine
from egresswatch.storage import tables as t


@dataclass
class Captured:
    statements: list[tuple[str, Any]]


def capture(engine: AsyncEngine) -> Captured:
    """Every statement the engine runs, with its parameters, for EXPLAIN."""
    captured = Captured([])

    def remember(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        captured.statements.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", remember)
    return captured


async def explain(engine: AsyncEngine, statement: str, parameters: Any) -> str:
    pg = engine.dialect.name == "postgresql"
    prefix = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " if pg else "EXPLAIN QUERY PLAN "
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql(prefix + statement, parameters)).all()
    if pg:
        return "\n".join(f"    {row[0]}" for row in rows)
    return "\n".join(f"    {row[-1]}" for row in rows)


def count_of(result: Any) -> int:
    if isinstance(result, Page):
        return len(result.items)
    if isinstance(result, list):
        return len(result)
    return int(result is not None)


async def measure(engine: AsyncEngine, seed: int, calls: int, show_plans: bool) -> None:
    """p50/p95 of each History query over `calls` calls with random arguments, from the
    targets, sources and time range stored."""
    history, store = History(engine), Store(engine)
    rng = random.Random(seed)
    targets = [record.name for record in await store.targets()]
    sources = [record.name for record in await store.sources()]
    first: datetime | None
    last: datetime
    async with engine.connect() as conn:
        first, last = (
            await conn.execute(
                sa.select(sa.func.min(t.rounds.c.started_at), sa.func.max(t.rounds.c.started_at))
            )
        ).one()
    if first is None:
        raise SystemExit("no rounds stored: nothing to measure")
    begin, span = first, (last - first).total_seconds()

    def moment() -> datetime:
        return begin + timedelta(seconds=rng.uniform(0, span))

    stored = (await history.incidents(limit=1000)).items

    async def incident_at() -> Any:
        """Half the time a moment inside a stored incident, else any moment."""
        if stored and rng.random() < 0.5:
            record = rng.choice(stored)
            return await history.incident_at(record.target, record.started_at)
        return await history.incident_at(rng.choice(targets), moment())

    async def second_page() -> Any:
        first = await history.changes(limit=50)
        return await history.changes(limit=50, cursor=first.next_cursor)

    async def day_of_changes() -> Any:
        since = moment()
        return await history.changes(since=since, until=since + timedelta(days=1))

    async def day_of_incidents() -> Any:
        since = moment()
        return await history.incidents(since=since, until=since + timedelta(days=1))

    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("incidents()", lambda: history.incidents()),
        ("incidents(target)", lambda: history.incidents(target=rng.choice(targets))),
        ("incidents(source)", lambda: history.incidents(source=rng.choice(sources))),
        ("incidents(since, until: 1 day)", day_of_incidents),
        ("incidents(open=True)", lambda: history.incidents(open=True)),
        ("incident_at(target, at)", incident_at),
        ("changes()", lambda: history.changes()),
        ("changes(target)", lambda: history.changes(target=rng.choice(targets))),
        ("changes(source)", lambda: history.changes(source=rng.choice(sources))),
        ("changes(step)", lambda: history.changes(step=Step.TCP_CONNECT)),
        ("changes(since, until: 1 day)", day_of_changes),
        ("changes: page 1 + page 2 (50 each)", second_page),
        ("states()", lambda: history.states()),
        ("states(target)", lambda: history.states(rng.choice(targets))),
        (
            f"latest_rounds(at): {len(targets) * len(sources):,} pairs",
            lambda: history.latest_rounds(moment()),
        ),
        (
            "latest_rounds(at, target)",
            lambda: history.latest_rounds(moment(), target=rng.choice(targets)),
        ),
    ]
    captured = capture(engine)
    print(f"\n{'query':<40}{'rows':>8}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for label, call in cases:
        await call()  # warm the pool and the caches once
        times: list[float] = []
        for _ in range(calls):
            started = time.perf_counter()
            result = await call()
            times.append((time.perf_counter() - started) * 1000)
        captured.statements.clear()
        result = await call()
        statements = list(captured.statements)
        rows = count_of(result)
        p95 = statistics.quantiles(times, n=20, method="inclusive")[18]
        median = statistics.median(times)
        print(f"{label:<40}{rows:>8}{median:>10.2f}{p95:>10.2f}{max(times):>10.2f}", flush=True)
        if show_plans:
            for statement, parameters in statements:
                if statement.lstrip().upper().startswith("SELECT") and "pg_" not in statement:
                    print(await explain(engine, statement, parameters))


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("url", help="a database filled by benchmarks/api_data.py")
    parser.add_argument("--calls", type=int, default=100, help="calls per query")
    parser.add_argument("--explain", action="store_true", help="print the query plans too")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    engine = make_engine(args.url)
    try:
        await measure(engine, args.seed, args.calls, args.explain)
    finally:
        await engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
