"""Fill a database with an API-sized history, then (with --measure) time the History queries.

    python benchmarks/api_data.py sqlite+aiosqlite:////tmp/ew-api.db
    python benchmarks/api_data.py postgresql+asyncpg://user:pw@127.0.0.1:5432/ew_api --measure
    python benchmarks/api_queries.py URL --explain   # only measure (and show the plans)

Defaults: 50 targets x 20 sources over 30 days, 1.7 million rounds of 6 steps (10.2 million
step results), about 400 incidents and a few thousand changes, consistent with each other: the
rounds inside an incident fail at its first failing step, from its sources. The database must
be empty or only migrated (the schema is brought to head first); nothing is dropped afterwards.

Rounds and step results are made by set-based SQL, in one transaction, with the indexes (and on
PostgreSQL the primary key and foreign keys of step_results and rounds) dropped during the load
and built again after it: PostgreSQL numbers them from generate_series, SQLite from a recursive
CTE. Sources, targets, changes and incidents go through the Store and History, as the controller
writes them. `--measure` then runs benchmarks/api_queries.py on it. The last line printed is
the URL, for an API benchmark. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from api_queries import measure  # the sibling script, on sys.path when run as a script
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from egresswatch.model import Change, Role, SourceKind, Step, StepState, Suspect
from egresswatch.storage import (
    History,
    IncidentRecord,
    Store,
    make_engine,
    redact,
    upgrade,
)
from egresswatch.storage import tables as t

# Per probe step: checklist position, typical seconds, the reason and detail when it fails.
STEPS = {
    Step.DNS_CLUSTER: (0, 0.002, "dns_timeout", "10.0.0.10:53 did not answer within 2 s"),
    Step.DNS_UPSTREAM: (1, 0.004, "servfail", "168.63.129.16:53 answered SERVFAIL"),
    Step.TCP_CONNECT: (2, 0.012, "conn_timeout", "no SYN-ACK from 203.0.113.7:443 in 3 s"),
    Step.TLS_HANDSHAKE: (3, 0.030, "tls_untrusted", "issuer O=Corp Proxy CA is not trusted"),
    Step.HTTP_RESPONSE: (4, 0.080, "http_status", "HTTP 403 from the proxy"),
    Step.PATH_TRACE: (5, 0.300, "timeout", "last hop 10.224.0.1 (ttl 3)"),
}
SUSPECTS = {
    Step.DNS_CLUSTER: Suspect.CLUSTER_DNS,
    Step.DNS_UPSTREAM: Suspect.UPSTREAM_DNS,
    Step.TCP_CONNECT: Suspect.NSG_OR_ROUTE,
    Step.TLS_HANDSHAKE: Suspect.TLS_INTERCEPTION,
    Step.HTTP_RESPONSE: Suspect.PROXY,
}
FAILING_STEPS = list(SUSPECTS)


@dataclass(frozen=True)
class Plan:
    targets: int
    sources: int
    days: int
    rounds: int
    incidents: int
    end: datetime
    seed: int

    @property
    def begin(self) -> datetime:
        return self.end - timedelta(days=self.days)

    @property
    def pairs(self) -> int:
        return self.targets * self.sources

    @property
    def interval_s(self) -> int:
        """Seconds between two rounds of one (source, target)."""
        return max(1, self.days * 86_400 // max(1, self.rounds // self.pairs))


def target_name(i: int) -> str:
    return f"https://api-{i:02d}.example.test/health"


def source_name(i: int) -> str:
    return f"node/aks-nodepool1-{i:02d}" if i % 4 == 3 else f"pod/probes/agent-{i:02d}"


# -- the story: incidents and their changes ------------------------------------------------


@dataclass(frozen=True)
class Story:
    incidents: list[IncidentRecord]
    changes: list[Change]


def make_story(plan: Plan, targets: list[str], sources: list[str]) -> Story:
    """Incidents that do not overlap per target, their changes, and some staleness changes."""
    rng = random.Random(plan.seed)
    incidents: list[IncidentRecord] = []
    changes: list[Change] = []
    per_target = max(1, plan.incidents // len(targets))
    span = (plan.end - plan.begin).total_seconds()
    for ti, target in enumerate(targets):
        slot = span / per_target
        for k in range(per_target):
            start = plan.begin + timedelta(seconds=k * slot + rng.uniform(0, slot / 2))
            length = timedelta(seconds=rng.uniform(1800, min(8 * 3600, slot / 2)))
            still_open = k == per_target - 1 and ti % 10 == 0  # a few open at the end
            end = None if still_open else start + length
            step = rng.choice(FAILING_STEPS)
            whole = rng.random() < 0.1  # everything fails from everywhere: egress_path
            failing = tuple(sorted(sources if whole else rng.sample(sources, rng.randint(1, 4))))
            suspect = Suspect.EGRESS_PATH if whole else SUSPECTS[step]
            detected = start + timedelta(seconds=90)
            history: list[dict[str, Any]] = [
                {
                    "at": detected.isoformat(),
                    "first_failing_step": step.value,
                    "suspect": suspect.value,
                    "sources": list(failing),
                    "states": {s: {step.value: "failing"} for s in failing},
                }
            ]
            if end is not None:
                history.append(
                    {
                        "at": (end + timedelta(seconds=90)).isoformat(),
                        "first_failing_step": None,
                        "suspect": suspect.value,
                        "sources": [],
                        "states": {s: {step.value: "ok"} for s in failing},
                    }
                )
            incidents.append(
                IncidentRecord(
                    id=f"inc-{ti:02d}-{k:03d}",
                    target=target,
                    started_at=start,
                    detected_at=detected,
                    ended_at=end,
                    sources=failing,
                    first_failing_step=step,
                    suspect=suspect,
                    evidence=(STEPS[step][3], f"failing from {len(failing)} source(s)"),
                    next_command=f"kubectl run -it --rm debug --image=debian -- curl -Iv {target}",
                    history=tuple(history),
                )
            )
            for source in failing:
                changes.append(
                    Change(
                        source,
                        target,
                        step,
                        StepState.OK,
                        StepState.FAILING,
                        start,
                        detected,
                        None,
                        STEPS[step][3],
                    )
                )
                if end is not None:
                    changes.append(
                        Change(
                            source,
                            target,
                            step,
                            StepState.FAILING,
                            StepState.OK,
                            end,
                            end + timedelta(seconds=90),
                        )
                    )
    changes += noise(plan, targets, sources, rng, len(changes))
    changes.sort(key=lambda c: c.detected_at)
    return Story(incidents, changes)


def noise(
    plan: Plan, targets: list[str], sources: list[str], rng: random.Random, count: int
) -> list[Change]:
    """`count` changes outside incidents: sources going silent for a while (whole-pair
    changes) and latency shifts (degraded), each with its way back."""
    changes: list[Change] = []
    span = (plan.end - plan.begin).total_seconds()
    for _ in range(count // 2):
        source, target = rng.choice(sources), rng.choice(targets)
        start = plan.begin + timedelta(seconds=rng.uniform(0, span - 7200))
        step = None if rng.random() < 0.5 else Step.HTTP_RESPONSE
        state = StepState.UNKNOWN if step is None else StepState.DEGRADED
        back = start + timedelta(seconds=rng.uniform(300, 3600))
        changes.append(
            Change(source, target, step, StepState.OK, state, start, start + timedelta(seconds=60))
        )
        changes.append(
            Change(source, target, step, state, StepState.OK, back, back + timedelta(seconds=60))
        )
    return changes


# -- rounds and step results, set-based ----------------------------------------------------


def sqlite_time(moment: datetime) -> str:
    """UTCDateTime's text on SQLite: naive UTC, always with microseconds."""
    return moment.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


async def load_helpers(
    conn: AsyncConnection,
    plan: Plan,
    source_ids: list[int],
    target_ids: list[int],
    incidents: list[IncidentRecord],
    ids: dict[str, int],
) -> None:
    """Temporary tables the two big INSERT ... SELECTs read: pairs, steps, failure windows."""
    pg = conn.dialect.name == "postgresql"
    when = "timestamptz" if pg else "text"
    rng = random.Random(plan.seed + 1)
    for statement in (
        "CREATE TEMP TABLE bench_pairs (p integer PRIMARY KEY, source_id integer,"
        " target_id integer, jitter integer)",
        "CREATE TEMP TABLE bench_steps (step text PRIMARY KEY, ord integer, base float,"
        " fail_reason text, fail_detail text)",
        f"CREATE TEMP TABLE bench_windows (target_id integer, source_id integer, starts {when},"
        f" ends {when}, step text)",
        "CREATE INDEX bench_windows_pair ON bench_windows (target_id, source_id, starts)",
    ):
        await conn.exec_driver_sql(statement)
    pairs = [
        {
            "p": p,
            "s": source_ids[p % plan.sources],
            "t": target_ids[p // plan.sources],
            "j": rng.randrange(plan.interval_s),
        }
        for p in range(plan.pairs)
    ]
    await conn.execute(sa.text("INSERT INTO bench_pairs VALUES (:p, :s, :t, :j)"), pairs)
    await conn.execute(
        sa.text("INSERT INTO bench_steps VALUES (:step, :ord, :base, :reason, :detail)"),
        [
            {"step": s.value, "ord": o, "base": b, "reason": r, "detail": d}
            for s, (o, b, r, d) in STEPS.items()
        ],
    )
    far = plan.end + timedelta(days=3650)
    windows = [
        {
            "t": ids[i.target],
            "s": ids[s],
            "a": i.started_at if pg else sqlite_time(i.started_at),
            "b": (i.ended_at or far) if pg else sqlite_time(i.ended_at or far),
            "step": i.first_failing_step.value if i.first_failing_step else None,
        }
        for i in incidents
        for s in i.sources
    ]
    await conn.execute(sa.text("INSERT INTO bench_windows VALUES (:t, :s, :a, :b, :step)"), windows)


# The step results of the rounds just inserted: ok up to the first failing step, which fails;
# later steps skipped (dependency_failed), except path_trace, which runs when something failed.
STEP_ROWS = """
INSERT INTO step_results (round_id, step, status, reason, duration_s, detail, evidence)
SELECT r.id, s.step,
  CASE WHEN f.ord IS NULL OR s.ord < f.ord OR s.step = 'path_trace' THEN 'ok'
       WHEN s.ord = f.ord THEN 'fail' ELSE 'skipped' END,
  CASE WHEN s.ord = f.ord THEN s.fail_reason
       WHEN s.ord > f.ord AND s.step <> 'path_trace' THEN 'dependency_failed' END,
  CASE WHEN s.ord = f.ord THEN 3.0
       ELSE s.base + ((r.id * 7919 + s.ord * 104729) % 1000) / 100000.0 END,
  CASE WHEN s.ord = f.ord THEN s.fail_detail
       WHEN s.ord > f.ord AND s.step <> 'path_trace' THEN 'an earlier step failed'
       ELSE s.step || ' ok' END,
  {evidence}
FROM rounds r CROSS JOIN bench_steps s LEFT JOIN bench_steps f ON f.step = r.first_failing_step
"""

PG_ROUNDS = """
INSERT INTO rounds (id, source_id, target_id, started_at, duration_s, first_failing_step)
SELECT x.g, x.source_id, x.target_id, x.ts, 0.43 + (x.g % 1000) / 10000.0,
  (SELECT w.step FROM bench_windows w WHERE w.target_id = x.target_id
     AND w.source_id = x.source_id AND w.starts <= x.ts AND x.ts < w.ends LIMIT 1)
FROM (
  SELECT g, p.source_id, p.target_id,
    timestamptz '{begin}' + make_interval(secs => ((g - 1) / {pairs}) * {interval} + p.jitter) ts
  FROM generate_series(1, {rounds}) g JOIN bench_pairs p ON p.p = (g - 1) % {pairs}
) x
"""

SQLITE_ROUNDS = """
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {rounds})
INSERT INTO rounds (id, source_id, target_id, started_at, duration_s, first_failing_step)
SELECT x.n, x.source_id, x.target_id, x.ts, 0.43 + (x.n % 1000) / 10000.0,
  (SELECT w.step FROM bench_windows w WHERE w.target_id = x.target_id
     AND w.source_id = x.source_id AND w.starts <= x.ts AND x.ts < w.ends LIMIT 1)
FROM (
  SELECT n, p.source_id, p.target_id,
    strftime('%Y-%m-%d %H:%M:%S', {begin} + ((n - 1) / {pairs}) * {interval} + p.jitter,
             'unixepoch') || '.000000' AS ts
  FROM g JOIN bench_pairs p ON p.p = (n - 1) % {pairs}
) x
"""


def load_constraints(dialect: str) -> list[sa.schema.Constraint]:
    """What is dropped during the load and built again after it, besides the indexes."""
    if dialect != "postgresql":
        return []  # SQLite cannot drop constraints, and does not check foreign keys here
    return [
        t.step_results.primary_key,
        *t.step_results.foreign_key_constraints,
        *sorted(t.rounds.foreign_key_constraints, key=lambda c: str(c.name)),
    ]


async def load_rounds(conn: AsyncConnection, plan: Plan) -> None:
    pg = conn.dialect.name == "postgresql"
    indexes = sorted(t.rounds.indexes, key=lambda i: str(i.name))
    constraints = load_constraints(conn.dialect.name)
    for constraint in reversed(constraints):
        await conn.execute(sa.schema.DropConstraint(constraint))
    for index in indexes:
        await conn.execute(sa.schema.DropIndex(index))
    if pg:
        rounds_sql = PG_ROUNDS.format(
            begin=plan.begin.isoformat(),
            pairs=plan.pairs,
            interval=plan.interval_s,
            rounds=plan.rounds,
        )
        evidence = """'{"attempt": 1}'::jsonb"""
    else:
        rounds_sql = SQLITE_ROUNDS.format(
            begin=int(plan.begin.timestamp()),
            pairs=plan.pairs,
            interval=plan.interval_s,
            rounds=plan.rounds,
        )
        evidence = """'{"attempt":1}'"""
    started = time.perf_counter()
    await conn.exec_driver_sql(rounds_sql)
    print(f"  rounds inserted in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    await conn.exec_driver_sql(STEP_ROWS.format(evidence=evidence))
    print(f"  step results inserted in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    for index in indexes:
        await conn.execute(sa.schema.CreateIndex(index))
    for constraint in constraints:
        await conn.execute(sa.schema.AddConstraint(constraint))
    if pg:
        await conn.exec_driver_sql(
            "SELECT setval(pg_get_serial_sequence('rounds', 'id'), (SELECT max(id) FROM rounds))"
        )
    print(f"  indexes and constraints built in {time.perf_counter() - started:.1f} s", flush=True)


async def fill(engine: AsyncEngine, plan: Plan) -> None:
    store, history = Store(engine), History(engine)
    targets = [target_name(i) for i in range(plan.targets)]
    sources = [source_name(i) for i in range(plan.sources)]
    await store.sync_targets(
        [(name, name, Role.CONTROL if i < 2 else Role.ENDPOINT) for i, name in enumerate(targets)]
    )
    for name in sources:
        await store.register_source(
            name, SourceKind.NODE if name.startswith("node/") else SourceKind.POD
        )
    async with engine.connect() as conn:
        ids: dict[str, int] = {}
        for table in (t.sources, t.targets):
            for name, pk in (await conn.execute(sa.select(table.c.name, table.c.id))).all():
                ids[name] = pk
        if (await conn.execute(sa.select(sa.func.count()).select_from(t.rounds))).scalar_one():
            raise SystemExit("the database already holds rounds: give an empty one")
    story = make_story(plan, targets, sources)

    started = time.perf_counter()
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '512MB'")
            await conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        else:
            await conn.exec_driver_sql("PRAGMA cache_size = -262144")  # 256 MiB
        await load_helpers(
            conn, plan, [ids[s] for s in sources], [ids[x] for x in targets], story.incidents, ids
        )
        await load_rounds(conn, plan)
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM (ANALYZE) rounds, step_results")
    bulk_s = time.perf_counter() - started

    started = time.perf_counter()
    for chunk in range(0, len(story.changes), 500):
        await history.save_changes(story.changes[chunk : chunk + 500])
    for record in story.incidents:
        await history.save_incident(record)
    story_s = time.perf_counter() - started
    async with engine.connect() as conn:
        counts = {
            table.name: (
                await conn.execute(sa.select(sa.func.count()).select_from(table))
            ).scalar_one()
            for table in (t.rounds, t.step_results, t.changes, t.incidents, t.step_states)
        }
    print(f"rounds and step results: {bulk_s:.1f} s; changes and incidents: {story_s:.1f} s")
    print("  " + ", ".join(f"{name} {count:,}" for name, count in counts.items()))


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "url", help="database URL (sqlite+aiosqlite:///… or postgresql+asyncpg://…)"
    )
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--sources", type=int, default=20)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=1_700_000)
    parser.add_argument("--incidents", type=int, default=400)
    parser.add_argument(
        "--end",
        type=datetime.fromisoformat,
        default=None,
        help="when the data ends (default: now, to the minute)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--measure", action="store_true", help="time the History queries")
    parser.add_argument("--calls", type=int, default=100, help="calls per query with --measure")
    parser.add_argument("--explain", action="store_true", help="print the query plans too")
    args = parser.parse_args(argv)

    end = args.end or datetime.now(UTC).replace(second=0, microsecond=0)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    plan = Plan(args.targets, args.sources, args.days, args.rounds, args.incidents, end, args.seed)
    url: URL = make_url(args.url)
    print(
        f"database {redact(url)}: {plan.targets} targets x {plan.sources} sources,"
        f" {plan.rounds:,} rounds of 6 steps, one every {plan.interval_s} s per pair,"
        f" {plan.begin:%Y-%m-%d %H:%M} to {plan.end:%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    started = time.perf_counter()
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(url)
    try:
        await fill(engine, plan)
        print(f"filled in {time.perf_counter() - started:.1f} s", flush=True)
        if args.measure or args.explain:
            await measure(engine, args.seed + 2, args.calls, args.explain)
    finally:
        await engine.dispose()
    print(f"EGRESSWATCH_API_DATA_URL={url.render_as_string(hide_password=False)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
