"""Agents' batches read in their plain case (plain_batch.py) are answered exactly as pydantic's
path (`BatchIn`) answers them: the same rounds, or the same problem document, for batches as
agents make them and for damaged ones (a value changed, a key dropped or added, a NUL)."""

from __future__ import annotations

import copy
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch.agent.encode import batch_body, batch_head, encode_round
from egresswatch.controller.api.query import ApiError
from egresswatch.controller.ingest.batch_body import parse_batch, validated
from egresswatch.controller.ingest.plain_batch import plain_batch
from egresswatch.evidence import DnsEvidence, HttpEvidence, TcpAttempt, TcpEvidence, TlsEvidence
from egresswatch.model import PROBE_STEPS, Reason, RoundResult, SourceKind, Status, Step, StepResult

_EVIDENCE: dict[Step, list[dict[str, Any]]] = {
    Step.DNS_CLUSTER: [DnsEvidence(resolver="10.0.0.10:53", addresses=("10.1.0.1",)).to_json()],
    Step.DNS_UPSTREAM: [{}, {"blocked_by": "dns_cluster"}],
    Step.TCP_CONNECT: [
        TcpEvidence("10.1.0.1", 443, "dns_cluster", (TcpAttempt("10.1.0.1", "ok", 1),)).to_json(),
        {"attempts": [{"address": "10.1.0.1", "outcome": "conn_timeout", "ms": 2.5}]},
    ],
    Step.TLS_HANDSHAKE: [TlsEvidence("10.1.0.1", 443, "x.test", version="TLSv1.3").to_json()],
    Step.HTTP_RESPONSE: [HttpEvidence("https://x.test/", "10.1.0.1", status=200).to_json()],
    Step.PATH_TRACE: [{}],
}
TEXT = st.text(st.characters(codec="utf-8"), max_size=6)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(TEXT, inner, max_size=2),
    max_leaves=4,
)
NAMES = st.sampled_from(["target-1", "pod/probes/a", "x" * 253, "x" * 254, "", "a\tb", "é"])
WORDS = st.sampled_from(
    [s.value for s in Step] + [s.value for s in Status] + [r.value for r in Reason] + ["OK", ""]
)
DURATIONS = st.one_of(
    st.floats(-1, 9e7), st.integers(-1, 9 * 10**7), st.sampled_from([0, -0.0, 86_400_000, 2**64])
)
TIMES = st.sampled_from(
    ["2026-12-05T08:00:00Z", "2026-12-05 08:00:00.5+01:00", "2026-13-05T08:00:00Z", "1 May"]
)


def _rounds(data: st.DataObject) -> list[RoundResult]:
    """Rounds as an agent makes them: some of the probe steps, any of their statuses."""
    start = datetime(2026, 12, 5, 8, tzinfo=UTC)
    rounds = []
    for n in range(data.draw(st.integers(1, 3), label="rounds")):
        steps = data.draw(st.lists(st.sampled_from(PROBE_STEPS), min_size=1, unique=True))
        rounds.append(
            RoundResult(
                target=data.draw(st.sampled_from(["target-1", "t" * 253])),
                source="pod/probes/a",
                started_at=start + timedelta(seconds=n, microseconds=data.draw(st.integers(0, 9))),
                steps=tuple(_step(step, data) for step in steps),
            )
        )
    return rounds


def _step(step: Step, data: st.DataObject) -> StepResult:
    from egresswatch.steps import evidence_from_json

    evidence = data.draw(st.sampled_from(_EVIDENCE[step]), label=f"{step} evidence")
    return StepResult(
        step=step,
        status=data.draw(st.sampled_from(Status)),
        reason=data.draw(st.none() | st.sampled_from(Reason)),
        duration_s=data.draw(st.floats(0, 86_400) | st.integers(0, 9)),
        detail=data.draw(st.text(max_size=20)),
        evidence=evidence_from_json(step, evidence),
    )


def _body(rounds: list[RoundResult], data: st.DataObject) -> bytes:
    kind = data.draw(st.none() | st.sampled_from(SourceKind))
    head = batch_head("pod/probes/a", kind, data.draw(st.none() | st.just("node-1")))
    return batch_body(head, "b-1", [encode_round(r) for r in rounds])


def _places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `value` (keys and indexes)."""
    found = [path]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _places(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _places(inner, (*path, index))
    return found


# A value near what belongs at a key, for the keys whose checks are the plain path's own.
NEAR: dict[str, Any] = {
    "step": st.sampled_from([*[s.value for s in Step], "OK"]),
    "status": st.sampled_from([*[s.value for s in Status], "OK", "dns_cluster"]),
    "reason": st.none() | st.sampled_from([*[r.value for r in Reason], "ok"]),
    "source_kind": st.none() | st.sampled_from(["pod", "node", "Pod"]),
    "duration_ms": DURATIONS,
    "started_at": TIMES,
    "target": NAMES,
    "source": NAMES,
    "source_node": NAMES,
    "batch_id": NAMES,
    "detail": st.text(max_size=5000),
}


def _damaged(body: bytes, data: st.DataObject) -> bytes:
    """The body with one thing changed: a value replaced (by one near what belongs there, or
    any), a key dropped or added, a step twice, a NUL."""
    document = json.loads(body)
    places = _places(document)[1:]
    hows = ["near"] * 6 + ["any", "drop", "add", "twice", "nul", "derived"]  # near: the most
    how = data.draw(st.sampled_from(hows), label="how")
    if how == "near":  # a key of the batch's own first: the evidence's many would crowd them out
        key = data.draw(st.sampled_from(sorted({p[-1] for p in places} & NEAR.keys())))
        places = [p for p in places if p[-1] == key]
    where = data.draw(st.sampled_from(places), label="where")
    parent = document
    for part in where[:-1]:
        parent = parent[part]
    key = where[-1]
    if how == "near" and key in NEAR:
        parent[key] = data.draw(NEAR[key], label="near")
    elif how == "any":
        parent[key] = data.draw(ANY_JSON, label="value")
    elif how == "drop":
        del parent[key]
    elif how == "add" and isinstance(parent, dict):
        parent[data.draw(st.sampled_from(["stranger", "url", "detail"]))] = "x"
    elif how == "twice" and "steps" in where:
        steps = document["rounds"][where[1]]["steps"]
        steps.append(copy.deepcopy(steps[0]))
    elif how == "nul" and isinstance(parent[key], str):
        parent[key] += "\0"
    elif how == "derived" and "steps" in parent:
        derived = data.draw(st.sampled_from(["url", "ok", "first_failing_step", "next_command"]))
        parent[derived] = data.draw(ANY_JSON | st.sampled_from([*Step, "x", True]))
    return json.dumps(document, ensure_ascii=data.draw(st.booleans())).encode()


def _answer(read: Any, body: bytes) -> object:
    """What the API answers: the batch (repr: a 5 is not a 5.0), or the problem document."""
    try:
        return repr(read(body))
    except ApiError as error:
        return (error.status, error.title, error.detail, error.fields())


def _pydantic(body: bytes) -> object:
    return validated(body, b"\\u0000" not in body and b"\x00" not in body)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_batches_as_agents_make_them_take_the_plain_path_with_the_same_rounds(
    data: st.DataObject,
) -> None:
    body = _body(_rounds(data), data)
    assert plain_batch(body) is not None  # else the plain path is lost, and its speed
    assert _answer(parse_batch, body) == _answer(_pydantic, body)


@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_damaged_batches_are_answered_as_pydantic_answers_them(data: st.DataObject) -> None:
    body = _damaged(_body(_rounds(data), data), data)
    assert _answer(parse_batch, body) == _answer(_pydantic, body)


_ROUND = ("rounds", 0)
_STEP = (*_ROUND, "steps", 0)
# (where, values): each value put there in turn, in a batch that is plain otherwise.
_EDGES: list[tuple[tuple[Any, ...], list[Any]]] = [
    ((*_STEP, "step"), [*Step, "OK", 5, None]),
    ((*_STEP, "status"), [*Status, "OK", None]),
    ((*_STEP, "reason"), [None, *Reason, "ok", 1]),
    (
        (*_STEP, "duration_ms"),
        [0, -0.0, 1, 5, 86_400_000, 86_400_001, 86_400_000.5, -1, 2**64, True, "1", None],
    ),
    ((*_STEP, "detail"), ["x" * 4096, "x" * 4097, "é" * 4096, 5, None]),
    ((*_STEP, "evidence"), [{}, [], None, {"port": 1}, {"port": "1"}, {"blocked_by": "x"}]),
    ((*_ROUND, "started_at"), ["2026-12-05T08:00:00+01:00", "2026-12-05", "x", 5, None]),
    ((*_ROUND, "target"), ["t", "x" * 253, "x" * 254, "", "a\tb", "a\x7fb", "é", 5, None]),
    ((*_ROUND, "source"), ["pod/probes/a", "pod/probes/b", "", None]),
    ((*_ROUND, "url"), ["x", 5, None]),
    ((*_ROUND, "ok"), [True, 1, "true", None]),
    ((*_ROUND, "first_failing_step"), [*Step, "x", None]),
    ((*_ROUND, "first_failing_reason"), ["timeout", "x", None]),
    ((*_ROUND, "next_command"), ["x", 1, None]),
    (("batch_id",), ["b" * 128, "b" * 129, "", "a\nb", 1, None]),
    (("source",), ["pod/probes/b", "", None]),
    (("source_kind",), ["pod", "node", "Pod", None, 1]),
    (("source_node",), ["node-1", "", "x" * 254, None, 1]),
    (("rounds",), [[], None, {}]),
    ((*_ROUND, "steps"), [[], None, [{}]]),
]


def test_each_check_at_its_edges_is_answered_as_pydantic_answers_it() -> None:
    good = json.loads(_body(_rounds(_FirstData()), _FirstData()))  # type: ignore[arg-type]
    steps = good["rounds"][0]["steps"]
    variants = [good, {**good, "extra": 1}]
    variants.append({**good, "rounds": [{**good["rounds"][0], "steps": steps + steps}]})
    variants.append({**good, "rounds": [{**good["rounds"][0], "steps": steps * 7}]})
    no_evidence = copy.deepcopy(good)  # any step's evidence may be NotRun's {}
    del no_evidence["rounds"][0]["steps"][0]["evidence"]
    for (where, values), base in itertools.product(_EDGES, [good, no_evidence]):
        for value in values:
            variant = copy.deepcopy(base)
            parent = variant
            for part in where[:-1]:
                parent = parent[part]
            parent[where[-1]] = value
            variants.append(variant)
            dropped = copy.deepcopy(variant)
            parent = dropped
            for part in where[:-1]:
                parent = parent[part]
            del parent[where[-1]]
            variants.append(dropped)
    for variant in variants:
        body = json.dumps(variant).encode()
        assert _answer(parse_batch, body) == _answer(_pydantic, body), body


def test_json_edges_are_answered_as_pydantic_answers_them() -> None:
    """Text that JSON parsers may read differently: duplicate keys, NaN, a lone surrogate."""
    good = _body(
        [
            RoundResult(
                "target-1",
                "pod/probes/a",
                datetime(2026, 12, 5, 8, tzinfo=UTC),
                (StepResult(Step.TCP_CONNECT, Status.OK, None, 0.001, "", TcpEvidence()),),
            )
        ],
        _FixedData(),  # type: ignore[arg-type]
    )
    variants = [
        good,
        good.replace(b'"duration_ms":', b'"duration_ms":1,"duration_ms":'),
        good.replace(b'"batch_id":"b-1"', b'"batch_id":"b-1","batch_id":"b 2"'),
        good.replace(b'"detail":""', b'"detail":"\\ud800"'),
        good.replace(b'"duration_ms":1.0', b'"duration_ms":NaN'),
        good.replace(b'"evidence":{}', b'"evidence":{"port":1e400}'),
        good + b" x",
        b"\xef\xbb\xbf" + good,
    ]
    for body in variants:
        assert _answer(parse_batch, body) == _answer(_pydantic, body), body


class _FixedData:
    """A stand-in for hypothesis' data: draws None (no kind, no node)."""

    def draw(self, strategy: Any, label: str | None = None) -> Any:
        return None


class _FirstData:
    """A stand-in for hypothesis' data: draws each strategy's simplest example."""

    def draw(self, strategy: Any, label: str | None = None) -> Any:
        from hypothesis import find

        return find(strategy, lambda _: True)
