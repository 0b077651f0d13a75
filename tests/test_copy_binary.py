"""The binary COPY stream written directly (storage/copy_binary.py) stores on PostgreSQL exactly
what asyncpg's own record encoding stores, for any values; and the evidence text encoder
(jsonrecord's per-class functions) writes `json_text(to_json())` for values of any type."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import exc

from egresswatch.evidence import (
    DnsEvidence,
    DnsTry,
    HttpEvidence,
    ResetCheck,
    TcpAttempt,
    TcpEvidence,
    TlsEvidence,
    TraceEvidence,
    TraceHop,
)
from egresswatch.jsonrecord import Record, _layout, _Shape, json_text
from egresswatch.storage import upgrade
from egresswatch.storage.bulk import _ROUND_COLUMNS, _STEP_COLUMNS, RoundRow, StepRow
from egresswatch.storage.copy_binary import rounds_copy, steps_copy
from tests.support.databases import create_pg_database, drop_pg_database, pg_server_url

# Texts a database's text column holds: no NUL, no lone surrogate (not UTF-8).
TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"))
CODE = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=32)
JSON_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    TEXT,
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
ZONE = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
ROUND = st.builds(
    RoundRow,
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=ZONE),
    st.floats(),
    st.none() | CODE,
    st.none() | st.integers(-(2**63), 2**63 - 1),
)


def step_rows(rounds: int) -> st.SearchStrategy[list[StepRow]]:
    """Steps of `rounds` rounds, in round order (as prepare_rounds makes them)."""
    row = st.builds(
        StepRow,
        st.integers(0, rounds - 1),
        CODE,
        CODE,
        st.none() | CODE,
        st.floats(),
        TEXT,
        st.dictionaries(TEXT, JSON_VALUE, max_size=4).map(json_text),
    )
    return st.lists(row, max_size=3 * rounds).map(lambda rows: sorted(rows, key=lambda s: s[0]))


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[int], list[RoundRow], list[StepRow]]:
    rounds = draw(st.lists(ROUND, min_size=1, max_size=6))
    ids = draw(
        st.lists(st.integers(1, 2**63 - 1), min_size=len(rounds), max_size=len(rounds), unique=True)
    )
    return ids, rounds, draw(step_rows(len(rounds)))


async def _stored_both_ways(
    dsn: str, ids: list[int], rounds: list[RoundRow], steps: list[StepRow]
) -> tuple[list[str], list[str]]:
    """Both tables' rows as PostgreSQL's text, filled by asyncpg's records and by our stream."""
    round_records = [(pk, *r) for pk, r in zip(ids, rounds, strict=True)]
    step_records = [(ids[s[0]], *s[1:]) for s in steps]
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            ref_rounds, our_rounds = await _copy_both(
                connection, "rounds", _ROUND_COLUMNS, round_records, rounds_copy(ids, rounds)
            )
            ref_steps, our_steps = await _copy_both(
                connection, "step_results", _STEP_COLUMNS, step_records, steps_copy(ids, steps)
            )
    finally:
        await connection.close()
    return ref_rounds + ref_steps, our_rounds + our_steps


async def _copy_both(
    connection: asyncpg.Connection,
    table: str,
    columns: tuple[str, ...],
    records: list[tuple[Any, ...]],
    stream: bytes,
) -> tuple[list[str], list[str]]:
    """`records` COPYed by asyncpg and `stream` COPYed as it is, each into a copy of `table`;
    the rows of each as text, in COPY's order."""
    found = []
    for copy in (f"ref_{table}", f"our_{table}"):
        await connection.execute(f"CREATE TEMP TABLE {copy} (LIKE {table}) ON COMMIT DROP")
        if copy.startswith("ref"):
            await connection.copy_records_to_table(copy, records=records, columns=list(columns))
        else:
            await connection.copy_to_table(
                copy, source=memoryview(stream), columns=list(columns), format="binary"
            )
        rows = await connection.fetch(f"SELECT t::text AS row FROM {copy} t")
        found.append([row["row"] for row in rows])
    return found[0], found[1]


def test_the_stream_stores_what_asyncpgs_records_store() -> None:
    server = pg_server_url()
    url = asyncio.run(create_pg_database(server))
    try:
        upgrade(url)
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)

        @settings(max_examples=40, deadline=None)
        @given(batch=batches())
        def check(batch: tuple[list[int], list[RoundRow], list[StepRow]]) -> None:
            reference, ours = asyncio.run(_stored_both_ways(dsn, *batch))
            assert ours == reference

        check()
    finally:
        assert url.database is not None
        asyncio.run(drop_pg_database(server, url.database))


def test_a_text_that_is_not_utf8_is_bad_data() -> None:
    step = StepRow(0, "dns_cluster", "ok", None, 0.1, "lone \ud800 surrogate", "{}")
    with pytest.raises(exc.DataError):
        steps_copy([1], [step])


def test_round_times_count_microseconds_from_2000_in_utc() -> None:
    """A fixed point, so a change that keeps both paths equal but wrong still fails."""
    when = datetime(2000, 1, 1, 1, 0, 0, 1, tzinfo=timezone(timedelta(hours=1)))
    stream = rounds_copy([7], [RoundRow(1, 2, when, 0.5, None, None)])
    start = 19 + 2 + 4 + 8 + 4 + 4 + 4 + 4 + 4  # header, field count, id, source, target, length
    assert stream[start : start + 8] == (1).to_bytes(8, "big")
    assert datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=1) == when


# -- evidence text ---------------------------------------------------------------------------

EVIDENCE_TYPES: list[type[Record]] = [
    DnsEvidence,
    DnsTry,
    TcpEvidence,
    TcpAttempt,
    ResetCheck,
    TlsEvidence,
    HttpEvidence,
    TraceEvidence,
    TraceHop,
]
# Any scalar value, or tuple of them, in any field: the encoder's fast branches follow the
# annotation, and a value of another type must still come out as json_text writes it. (Nested
# records: test_ingest_copy's property test.)
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(),
    st.tuples(),
    st.lists(st.one_of(st.text(), st.integers(), st.none()), max_size=3).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(EVIDENCE_TYPES), data=st.data())
def test_evidence_text_matches_for_any_values_in_any_field(
    kind: type[Record], data: st.DataObject
) -> None:
    values: dict[str, Any] = {}
    for name, _, _, shape, _ in _layout(kind):
        # A list of records holds records (to_json would iterate anything else): none or empty.
        anything = st.none() | st.just(()) if shape is _Shape.RECORDS else ANY_VALUE
        values[name] = data.draw(anything, label=name)
    evidence = kind(**values)
    assert evidence.to_json_text() == json_text(evidence.to_json())


def test_evidence_text_keeps_floats_and_integers_apart() -> None:
    hop = TraceHop(1, "10.0.0.1", 2, None, True)
    expected = '{"ttl":1,"address":"10.0.0.1","rtt_ms":2,"icmp":null,"reached":true}'
    assert hop.to_json_text() == expected
    # NaN and infinities, and a value of another type, take json_text's spelling.
    tls = TlsEvidence(tls_ms=float("nan"), days_left=True)
    assert '"days_left":true' in tls.to_json_text()
    assert '"tls_ms":NaN' in tls.to_json_text()
