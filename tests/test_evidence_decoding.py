"""Evidence decoding's quick checks (jsonrecord._quick) give exactly what the full decoding
(`_value` for every field) gives: the same record, or the same error at the same path, strict
and lenient, for any JSON values in any field."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch import jsonrecord
from egresswatch.evidence import TcpAttempt, TcpEvidence, TraceHop
from egresswatch.jsonrecord import EvidenceError, Record
from tests.test_copy_binary import EVIDENCE_TYPES as KINDS

SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1]),  # 64 bits' edges
    st.floats(),
    st.text(max_size=5),
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


def _object(kind: type[Record], data: st.DataObject) -> dict[str, Any]:
    """Some of `kind`'s keys (now and then an unknown one), each with any JSON value."""
    found: dict[str, Any] = {}
    for item in dataclasses.fields(kind):
        if data.draw(st.booleans(), label=f"has {item.name}"):
            found[item.name] = data.draw(JSON, label=item.name)
    if data.draw(st.integers(0, 9), label="stranger") == 0:
        found["stranger"] = 1
    return found


def _decoded(kind: type[Record], value: dict[str, Any], strict: bool) -> object:
    try:
        return kind.from_json(value, strict=strict)
    except EvidenceError as error:
        return ("error", error.field, error.problem)
    except (TypeError, OverflowError) as error:  # what the full decoding raises, if it does
        return ("raised", type(error).__name__)


def _full(kind: type[Record], value: dict[str, Any], strict: bool) -> object:
    """`_decoded` with every field through `_value` (the decoding before the quick checks)."""
    saved = dict(jsonrecord._DECODING)
    original = jsonrecord._quick
    jsonrecord._DECODING.clear()
    jsonrecord._quick = lambda hint: None
    try:
        return _decoded(kind, value, strict)
    finally:
        jsonrecord._quick = original
        jsonrecord._DECODING.clear()
        jsonrecord._DECODING.update(saved)


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(KINDS), strict=st.booleans(), data=st.data())
def test_quick_checks_decode_as_the_full_decoding(
    kind: type[Record], strict: bool, data: st.DataObject
) -> None:
    value = _object(kind, data)
    assert _decoded(kind, value, strict) == _full(kind, value, strict)


def test_plain_values_take_the_quick_checks() -> None:
    """The common case decodes to the right values (a float stays a float, a list a tuple)."""
    evidence = TcpEvidence.from_json(
        {
            "address": "10.0.0.1",
            "port": 443,
            "attempts": [{"address": "10.0.0.1", "outcome": "ok", "ms": 1.5}],
            "untried": ["10.0.0.2"],
        }
    )
    assert evidence == TcpEvidence(
        "10.0.0.1", 443, None, (TcpAttempt("10.0.0.1", "ok", 1.5),), ("10.0.0.2",)
    )
    assert TraceHop.from_json({"ttl": 1, "rtt_ms": 2}).rtt_ms == 2.0
    assert type(TraceHop.from_json({"ttl": 1, "rtt_ms": 2}).rtt_ms) is float
