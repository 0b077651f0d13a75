"""PostgreSQL's binary COPY stream for `rounds` and `step_results`, written in one pass.

asyncpg's `copy_records_to_table` needs a tuple per row (the round's id put in front of each
step row: a second tuple per step) and then encodes each value through its codec; this writes
the stream straight from the prepared rows: a step's code columns (step, status, reason) are a
few distinct byte strings, encoded once per batch, and a round's id once for its six steps
(docs/performance.md, "Issue 14, third pass"). PostgreSQL stores from it exactly what it
stores from asyncpg's encoding of the same rows: `tests/test_copy_binary.py` compares the two
for any values.

The format (PostgreSQL's documentation, "COPY", "Binary Format"): a signature, flags and
header extension length; per row the number of fields (int16) and each field as its length
(int32, -1 for NULL) and its binary value, all big-endian; int16 -1 at the end. The column
types are migration 0006's: bigint ids, integer source and target ids, timestamptz, double
precision, varchar codes, text, and `json` evidence (its binary form is its text; `jsonb`
before 0006, which the migrations' tests still write to).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import exc

if TYPE_CHECKING:
    from egresswatch.storage.bulk import RoundRow, StepRow

HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, no header extension
TRAILER = b"\xff\xff"
_NULL = struct.pack(">i", -1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # timestamptz counts microseconds from here
_MICROSECOND = timedelta(microseconds=1)
# A round: 7 fields; id (int8), source_id and target_id (int4), started_at (int8 microseconds),
# duration_s (float8).
_ROUND = struct.Struct(">hiqiiiiiqid")
# A step's round_id field, with the row's field count in front (7 fields).
_STEP_HEAD = struct.Struct(">hiq")
_DURATION_AND_DETAIL = struct.Struct(">idi")  # duration_s (float8), then the detail's length
_LENGTH = struct.Struct(">i")
_BIGINT = struct.Struct(">iq")  # batch_id, when there is one
_JSONB_VERSION = b"\x01"


def rounds_copy(ids: Sequence[int], rounds: Sequence[RoundRow]) -> bytes:
    """The binary COPY stream of `rounds` (columns: bulk._ROUND_COLUMNS) with these `ids`."""
    parts = [HEADER]
    append = parts.append
    for pk, (source_id, target_id, started_at, duration_s, failing, batch_id) in zip(
        ids, rounds, strict=True
    ):
        when = (started_at - _PG_EPOCH) // _MICROSECOND
        append(_ROUND.pack(7, 8, pk, 4, source_id, 4, target_id, 8, when, 8, duration_s))
        append(_NULL if failing is None else _text(failing))
        append(_NULL if batch_id is None else _BIGINT.pack(8, batch_id))
    append(TRAILER)
    return b"".join(parts)


def steps_copy(ids: Sequence[int], steps: Sequence[StepRow], *, jsonb: bool = False) -> bytes:
    """The binary COPY stream of `steps` (columns: bulk._STEP_COLUMNS), each step's `round`
    replaced by `ids[round]`. `jsonb`: the evidence column is `jsonb` (before migration 0006),
    whose binary form is a version byte, then the text.

    Raises sqlalchemy's DataError for a text that is not valid UTF-8 (a lone surrogate), as
    for any other row the database cannot take: retrying cannot help.
    """
    parts = [HEADER]
    append = parts.append
    codes: dict[tuple[str, str, str | None], bytes] = {}  # (step, status, reason): encoded once
    last_round = -1
    head = b""
    try:
        for position, step, status, reason, duration_s, detail, evidence in steps:
            if position != last_round:
                head = _STEP_HEAD.pack(7, 8, ids[position])
                last_round = position
            key = (step, status, reason)
            code = codes.get(key)
            if code is None:
                code = codes[key] = _text(step) + _text(status) + _nullable(reason)
            detail_bytes = detail.encode()
            evidence_bytes = evidence.encode()
            append(head)
            append(code)
            append(_DURATION_AND_DETAIL.pack(8, duration_s, len(detail_bytes)))
            append(detail_bytes)
            if jsonb:
                append(_LENGTH.pack(len(evidence_bytes) + 1))
                append(_JSONB_VERSION)
            else:
                append(_LENGTH.pack(len(evidence_bytes)))
            append(evidence_bytes)
    except UnicodeEncodeError as error:
        raise exc.DataError("COPY step_results", None, error) from error
    append(TRAILER)
    return b"".join(parts)


def _text(value: str) -> bytes:
    data = value.encode()
    return _LENGTH.pack(len(data)) + data


def _nullable(value: str | None) -> bytes:
    return _NULL if value is None else _text(value)
