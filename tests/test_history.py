"""History: changes, incidents, step states, their filters and pages; SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from egresswatch.model import (
    PROBE_STEPS,
    Change,
    Reason,
    RoundResult,
    Status,
    Step,
    StepResult,
    StepState,
    Suspect,
)
from egresswatch.storage import (
    BadCursor,
    History,
    IncidentRecord,
    Page,
    StateRecord,
    Store,
)
from tests.support.databases import migrated_engine_fixture  # noqa: F401

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
API = "https://api.example.test/"
SHOP = "https://shop.example.test/"
POD_A = "pod/default/probe-a"
POD_AB = "pod/default/probe-ab"  # a name that contains POD_A: filters must match whole names
NODE = "node/aks-nodepool1-0"

T = TypeVar("T")


@pytest.fixture(name="history")
def history_fixture(migrated_engine: AsyncEngine) -> History:
    return History(migrated_engine)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def change(
    started: float,
    detected: float | None = None,
    *,
    source: str = POD_A,
    target: str = API,
    step: Step | None = Step.TCP_CONNECT,
    previous: StepState = StepState.OK,
    current: StepState = StepState.FAILING,
    reason: Reason | None = Reason.CONN_TIMEOUT,
    detail: str = "",
) -> Change:
    return Change(
        source=source,
        target=target,
        step=step,
        previous=previous,
        current=current,
        started_at=at(started),
        detected_at=at(detected if detected is not None else started + 60),
        reason=reason,
        detail=detail,
    )


def incident(
    incident_id: str,
    started: float,
    ended: float | None = None,
    *,
    target: str = API,
    sources: tuple[str, ...] = (POD_A,),
    suspect: Suspect = Suspect.NSG_OR_ROUTE,
) -> IncidentRecord:
    return IncidentRecord(
        id=incident_id,
        target=target,
        started_at=at(started),
        detected_at=at(started + 90),
        ended_at=at(ended) if ended is not None else None,
        sources=sources,
        first_failing_step=Step.TCP_CONNECT,
        suspect=suspect,
        evidence=("tcp_connect to 203.0.113.7:443 timed out (silent drop)",),
        next_command="kubectl run -it --rm debug --image=debian -- nc -z -v api.example.test 443",
        history=(
            {
                "at": at(started + 90).isoformat(),
                "first_failing_step": "tcp_connect",
                "suspect": suspect.value,
                "sources": list(sources),
                "states": {s: {"tcp_connect": "failing"} for s in sources},
            },
        ),
    )


async def every_page(
    fetch: Callable[[str | None], Awaitable[Page[T]]],
    between: Callable[[int], Awaitable[None]] | None = None,
) -> list[list[T]]:
    """All pages, following next_cursor; `between(n)` runs after page n (inserts, updates)."""
    pages: list[list[T]] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor
        if between is not None:
            await between(len(pages))


# -- changes and states -----------------------------------------------------------------------


async def test_changes_round_trip_newest_first(history: History) -> None:
    stored = [
        change(0, 60, detail="tcp_connect timed out 3 rounds in a row — «10.0.0.1»"),
        change(
            100,
            130,
            step=None,
            previous=StepState.OK,
            current=StepState.UNKNOWN,
            reason=None,
            source=NODE,
        ),
        change(
            200,
            260,
            previous=StepState.FAILING,
            current=StepState.OK,
            reason=None,
            target=SHOP,
        ),
        # Another zone: the same instant in UTC comes back.
        Change(
            POD_A,
            API,
            Step.HTTP_RESPONSE,
            StepState.OK,
            StepState.DEGRADED,
            datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 3, 1, 14, 5, tzinfo=timezone(timedelta(hours=2))),
        ),
    ]
    await history.save_changes(stored)
    await history.save_changes([])  # nothing to do
    page = await history.changes()
    assert page.next_cursor is None
    assert page.items == sorted(stored, key=lambda c: c.detected_at, reverse=True)
    assert all(c.detected_at.tzinfo is UTC for c in page.items)


async def test_names_are_created_on_demand_and_shared_with_the_store(history: History) -> None:
    store = Store(history.engine)
    await history.save_changes([change(0, source="pod/new/one", target="https://new.test/")])
    await history.save_incident(incident("i-1", 0, target="https://other.test/"))
    assert {s.name for s in await store.sources()} == {"pod/new/one"}
    assert {t.name for t in await store.targets()} == {"https://new.test/", "https://other.test/"}
    # The Store finds the rows History made (one row per name, not two).
    await store.save_rounds([make_round("https://new.test/", "pod/new/one", 10)])
    assert len(await store.sources()) == 1
    assert [c.target for c in (await history.changes(target="https://new.test/")).items] == [
        "https://new.test/"
    ]


async def test_states_latest_change_wins(history: History) -> None:
    await history.save_changes([change(0, 60), change(0, 30, step=Step.DNS_CLUSTER)])
    # The recovery: the newer change wins.
    await history.save_changes(
        [change(100, 160, previous=StepState.FAILING, current=StepState.OK, reason=None)]
    )
    # A change arriving late (detected before the stored state) is logged, but does not win.
    await history.save_changes([change(50, 70, current=StepState.DEGRADED, reason=None)])
    # Within one batch the later detection wins whatever the order; on a tie, the later one.
    await history.save_changes(
        [
            change(300, 400, step=Step.DNS_CLUSTER, current=StepState.UNKNOWN, reason=None),
            change(200, 350, step=Step.DNS_CLUSTER, current=StepState.FAILING),
            change(500, 600, step=None, current=StepState.DEGRADED, reason=None, source=NODE),
            change(500, 600, step=None, current=StepState.UNKNOWN, reason=None, source=NODE),
        ]
    )
    await history.save_changes([change(0, 10, target=SHOP)])
    assert await history.states(API) == [
        StateRecord(NODE, API, None, StepState.UNKNOWN, at(500), None, at(600)),
        StateRecord(POD_A, API, Step.DNS_CLUSTER, StepState.UNKNOWN, at(300), None, at(400)),
        StateRecord(POD_A, API, Step.TCP_CONNECT, StepState.OK, at(100), None, at(160)),
    ]
    everything = await history.states()
    assert [(s.target, s.source, s.step) for s in everything] == [
        (API, NODE, None),
        (API, POD_A, Step.DNS_CLUSTER),
        (API, POD_A, Step.TCP_CONNECT),
        (SHOP, POD_A, Step.TCP_CONNECT),
    ]
    assert await history.states("https://unknown.test/") == []
    assert len((await history.changes(limit=1000)).items) == 9


async def test_change_filters(history: History) -> None:
    await history.save_changes(
        [
            change(0, 50, detail="a"),
            change(100, 500, detail="b", source=POD_AB),  # detected long after it started
            change(200, 210, detail="c", target=SHOP),
            change(300, 310, detail="d", step=Step.DNS_CLUSTER, source=NODE),
            change(400, 410, detail="e", step=None, source=NODE, target=SHOP),
        ]
    )

    async def details(**filters: Any) -> list[str]:
        return [c.detail for c in (await history.changes(**filters)).items]

    assert await details() == ["b", "e", "d", "c", "a"]
    assert await details(target=API) == ["b", "d", "a"]
    assert await details(source=POD_A) == ["c", "a"]
    assert await details(source=NODE, target=SHOP) == ["e"]
    assert await details(step=Step.TCP_CONNECT) == ["b", "c", "a"]
    assert await details(step=Step.DNS_CLUSTER, target=SHOP) == []
    # [since, until) on started_at: b started at 100 (detected at 500) is in [100, 300).
    assert await details(since=at(100), until=at(300)) == ["b", "c"]
    assert await details(since=at(100)) == ["b", "e", "d", "c"]
    assert await details(until=at(100)) == ["a"]
    assert await details(target="https://unknown.test/") == []
    assert await details(source="pod/unknown") == []


# -- incidents --------------------------------------------------------------------------------


async def test_incident_round_trip_and_update_in_place(history: History) -> None:
    opened = incident("inc-1", 0, sources=(POD_A, NODE))
    await history.save_incident(opened)
    assert await history.incident("inc-1") == opened
    assert opened.open
    assert await history.incident("inc-2") is None

    closed = IncidentRecord(
        **{
            **opened.__dict__,
            "ended_at": at(900),
            "suspect": Suspect.FIREWALL,
            "first_failing_step": Step.TLS_HANDSHAKE,
            "sources": (POD_A,),
            "evidence": ("foreign issuer O=Corp Proxy CA", "HTTP 470 from 10.1.0.4"),
            "next_command": None,
            "history": (
                *opened.history,
                {"at": at(900).isoformat(), "states": {POD_A: {"tcp_connect": "ok"}}},
            ),
        }
    )
    await history.save_incident(closed)
    stored = await history.incident("inc-1")
    assert stored == closed
    assert stored is not None and not stored.open
    assert stored.history[1]["states"] == {POD_A: {"tcp_connect": "ok"}}
    assert (await history.incidents()).items == [closed]


async def test_incident_filters(history: History) -> None:
    await history.save_incident(incident("a", 0, 100))
    await history.save_incident(incident("b", 200, 300, sources=(POD_AB, NODE)))
    await history.save_incident(incident("c", 250, None, target=SHOP, sources=(NODE,)))
    await history.save_incident(incident("d", 400, None))

    async def ids(**filters: Any) -> list[str]:
        return [i.id for i in (await history.incidents(**filters)).items]

    assert await ids() == ["d", "c", "b", "a"]
    assert await ids(target=API) == ["d", "b", "a"]
    assert await ids(target="https://unknown.test/") == []
    assert await ids(source=POD_A) == ["d", "a"]  # not b: its sources hold POD_AB, not POD_A
    assert await ids(source=NODE) == ["c", "b"]
    assert await ids(source=NODE, target=API) == ["b"]
    assert await ids(open=True) == ["d", "c"]
    assert await ids(open=False) == ["b", "a"]
    # Overlapping [since, until): ended at 100 is out of [100, …), started at 400 out of […, 400).
    assert await ids(since=at(100), until=at(400)) == ["c", "b"]
    assert await ids(since=at(99), until=at(200)) == ["a"]
    assert await ids(since=at(1000)) == ["d", "c"]  # open ones overlap any later window
    assert await ids(until=at(1)) == ["a"]
    assert await ids(since=at(260), until=at(1000), open=False, source=NODE) == ["b"]


async def test_incident_at(history: History) -> None:
    await history.save_incident(incident("closed", 100, 200))
    await history.save_incident(incident("open", 500))
    await history.save_incident(incident("shop", 0, target=SHOP))
    found = {
        moment: (i.id if (i := await history.incident_at(API, at(moment))) else None)
        for moment in (99, 100, 150, 200, 499, 500, 10_000)
    }
    assert found == {
        99: None,
        100: "closed",
        150: "closed",
        200: None,  # ended_at is the first moment it is over
        499: None,
        500: "open",
        10_000: "open",
    }
    assert await history.incident_at("https://unknown.test/", at(150)) is None


# -- pages ------------------------------------------------------------------------------------


async def test_change_pages_lose_and_repeat_nothing_while_inserts_happen(
    history: History,
) -> None:
    # 250 changes, detected in runs of five at the same instant: pages must split ties by id.
    originals = [change(i, 1000 + i // 5, detail=f"c{i}") for i in range(250)]
    await history.save_changes(originals)
    inserted = 0

    async def insert(page: int) -> None:
        nonlocal inserted
        # Newer than everything, and tied with rows already paged past and rows still ahead.
        await history.save_changes(
            [
                change(5000 + page, 5000 + page, detail=f"new-late{page}"),
                change(1000, 1000 + 49, detail=f"new-tie-top{page}"),
                change(1000, 1000, detail=f"new-tie-bottom{page}"),
            ]
        )
        inserted += 3

    pages = await every_page(lambda c: history.changes(limit=7, cursor=c), insert)
    seen = [c.detail for page in pages for c in page]
    assert len(pages) > 35 and all(len(page) == 7 for page in pages[:-1])
    assert len(seen) == len(set(seen))  # nothing repeated
    assert {c.detail for c in originals} <= set(seen)  # nothing lost
    # Newest first throughout.
    detected = [c.detected_at for page in pages for c in page]
    assert detected == sorted(detected, reverse=True)
    # Filters travel with the cursor: a filtered walk sees exactly the filtered rows.
    pages = await every_page(
        lambda c: history.changes(since=at(100), until=at(200), cursor=c, limit=9)
    )
    assert [c.detail for page in pages for c in page] == [f"c{i}" for i in range(199, 99, -1)]
    assert inserted > 0


async def test_incident_pages_lose_and_repeat_nothing_while_inserts_happen(
    history: History,
) -> None:
    # Started in runs of four at the same instant; ids sort differently from start times.
    originals = [incident(f"i{(i * 37) % 250:03d}", i // 4) for i in range(250)]
    for record in originals:
        await history.save_incident(record)

    async def insert_and_update(page: int) -> None:
        await history.save_incident(incident(f"new{page}", 10_000 + page))
        await history.save_incident(incident(f"zzz-tie{page}", 0))  # ties with the oldest
        # Closing an incident in place does not move it.
        old = originals[page]
        started = (old.started_at - T0).total_seconds()
        await history.save_incident(incident(old.id, started, 10**6))

    pages = await every_page(lambda c: history.incidents(limit=7, cursor=c), insert_and_update)
    seen = [i.id for page in pages for i in page]
    assert len(seen) == len(set(seen))
    assert {i.id for i in originals} <= set(seen)
    started = [i.started_at for page in pages for i in page]
    assert started == sorted(started, reverse=True)


async def test_bad_cursors_and_limits(history: History) -> None:
    await history.save_changes([change(i, detail=str(i)) for i in range(5)])
    for i in range(5):
        await history.save_incident(incident(f"i{i}", i))
    change_cursor = (await history.changes(limit=2)).next_cursor
    incident_cursor = (await history.incidents(limit=2)).next_cursor
    assert change_cursor is not None and incident_cursor is not None
    # The cursor works with the same filters (and any limit).
    assert len((await history.changes(limit=1000, cursor=change_cursor)).items) == 3

    def encoded(data: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()

    bad = [
        "",
        "not a cursor!",
        "%%%",
        encoded([1, 2]),
        encoded({"q": "x"}),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        incident_cursor,  # another list
    ]
    for cursor in bad:
        with pytest.raises(BadCursor):
            await history.changes(cursor=cursor)
    with pytest.raises(BadCursor, match="filters"):
        await history.changes(cursor=change_cursor, target=API)
    with pytest.raises(BadCursor):
        await history.changes(cursor=change_cursor, step=Step.TCP_CONNECT)
    with pytest.raises(BadCursor):
        await history.incidents(cursor=change_cursor)
    with pytest.raises(BadCursor):
        await history.incidents(cursor=incident_cursor, open=True)
    # A tampered key of the wrong type is not a cursor either.
    data = json.loads(base64.urlsafe_b64decode(change_cursor + "=" * (-len(change_cursor) % 4)))
    with pytest.raises(BadCursor):
        await history.changes(cursor=encoded({**data, "i": "1"}))
    assert issubclass(BadCursor, ValueError)

    for limit in (0, 1001, -1):
        with pytest.raises(ValueError, match="limit"):
            await history.changes(limit=limit)
        with pytest.raises(ValueError, match="limit"):
            await history.incidents(limit=limit)
    with pytest.raises(ValueError, match="since"):
        await history.changes(since=datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="started_at"):
        await history.save_changes(
            [Change(POD_A, API, None, StepState.OK, StepState.UNKNOWN, datetime(2026, 3, 1), at(0))]
        )
    assert len((await history.changes(limit=1000)).items) == 5  # nothing stored


# -- the checklist at a moment ----------------------------------------------------------------


def make_round(
    target: str, source: str, seconds: float, failing: Step | None = None
) -> RoundResult:
    steps = tuple(
        StepResult(step, Status.FAIL, Reason.CONN_TIMEOUT, 5.0, "timed out")
        if step is failing
        else StepResult(step, Status.OK, None, 0.001 * (n + 1), f"ok at {seconds}")
        for n, step in enumerate(PROBE_STEPS)
    )
    return RoundResult(target, source, at(seconds), steps)


async def test_latest_rounds_at_a_moment(history: History) -> None:
    store = Store(history.engine)
    rounds = [
        make_round(target, source, seconds, Step.TCP_CONNECT if seconds == 1000 else None)
        for target in (API, SHOP)
        for source in (POD_A, POD_AB, NODE)
        for seconds in (0, 500, 1000, 1500)
    ]
    # NODE stopped probing API after 500, POD_AB probes SHOP only at 0.
    rounds = [
        r
        for r in rounds
        if not (r.source == NODE and r.target == API and r.started_at > at(500))
        and not (r.source == POD_AB and r.target == SHOP and r.started_at > at(0))
    ]
    await store.save_rounds(rounds)

    def keys(found: list[RoundResult]) -> list[tuple[str, str, float]]:
        return [(r.target, r.source, (r.started_at - T0).total_seconds()) for r in found]

    found = await history.latest_rounds(at(1200), lookback_s=1000)
    assert keys(found) == [
        (API, NODE, 500),
        (API, POD_A, 1000),
        (API, POD_AB, 1000),
        (SHOP, NODE, 1000),
        (SHOP, POD_A, 1000),
    ]
    assert found[1].first_failing_step is Step.TCP_CONNECT
    assert found[1] == next(
        r for r in rounds if (r.target, r.source) == (API, POD_A) and r.started_at == at(1000)
    )
    # `at` itself is included, at - lookback is not.
    assert keys(await history.latest_rounds(at(1000), target=API, lookback_s=500)) == [
        (API, POD_A, 1000),
        (API, POD_AB, 1000),
    ]
    assert keys(await history.latest_rounds(at(1500), source=NODE)) == [
        (API, NODE, 500),
        (SHOP, NODE, 1500),
    ]
    assert keys(await history.latest_rounds(at(1500), source=NODE, target=SHOP)) == [
        (SHOP, NODE, 1500)
    ]
    assert await history.latest_rounds(at(-1)) == []
    assert await history.latest_rounds(at(100), target="https://unknown.test/") == []
    with pytest.raises(ValueError, match="lookback"):
        await history.latest_rounds(at(100), lookback_s=0)


async def test_states_reuses_unchanged_records_and_sees_a_change(history: History) -> None:
    """An unchanged state comes back as the same record object (the status reuses what it
    derived from it), a changed one as a new record; what is kept between calls is a
    fingerprint of each row, not the row (issue 14)."""
    await history.save_changes([change(0, 60), change(0, 30, step=Step.DNS_CLUSTER)])
    first = await history.states()
    again = await history.states()
    assert [a is b for a, b in zip(first, again, strict=True)] == [True, True]
    await history.save_changes(
        [change(100, 160, previous=StepState.FAILING, current=StepState.OK, reason=None)]
    )
    changed = await history.states()
    assert changed[0] is first[0]  # dns_cluster: unchanged
    assert changed[1] is not first[1] and changed[1].state is StepState.OK
    kept = [held for held, _ in history._states_read.values()]
    assert all(isinstance(held, int) for held in kept)
