"""Incidents from scripted result streams: a real Detector feeding an IncidentBook, with an
injected clock and an injected verdict (the diagnosis is tested on its own)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from egresswatch.controller.detection.hysteresis import Detector
from egresswatch.controller.detection.incidents import (
    Incident,
    IncidentBook,
    IncidentEvent,
    IncidentEventKind,
)
from egresswatch.model import Change, RoundResult, Step, StepState, Suspect, Verdict
from egresswatch.settings import DetectionSettings
from tests.support.rounds import INTERVAL_S, at, dns_outage, round_, step_result

OPENED, UPDATED, CLOSED = (
    IncidentEventKind.OPENED,
    IncidentEventKind.UPDATED,
    IncidentEventKind.CLOSED,
)
FAILING, OK, UNKNOWN = StepState.FAILING, StepState.OK, StepState.UNKNOWN


class Watch:
    """A Detector and an IncidentBook wired the way the controller wires them."""

    def __init__(self, **detection: object) -> None:
        settings = DetectionSettings.model_validate(
            {"fail_after": 3, "recover_after": 2, **detection}
        )
        self.detector = Detector(lambda _: settings)
        self.book = IncidentBook()
        self.suspect = Suspect.CLUSTER_DNS
        self.asked: list[tuple[str, tuple[str, ...]]] = []
        self.changes: list[Change] = []

    def verdict_for(self, target: str, sources: tuple[str, ...]) -> Verdict:
        self.asked.append((target, sources))
        return Verdict(
            self.suspect,
            Step.DNS_CLUSTER,
            evidence=(f"{self.suspect} from {', '.join(sources)}",),
            next_command="nslookup shop.example",
        )

    def apply(self, changes: Sequence[Change], now: datetime) -> list[IncidentEvent]:
        self.changes += changes
        return self.book.apply(
            changes, now=now, detector_states=self.detector.states, verdict_for=self.verdict_for
        )

    def rounds(self, *rounds: RoundResult) -> list[IncidentEvent]:
        """Observe each round a few seconds after it started, then apply its changes."""
        events = []
        for r in rounds:
            now = r.started_at + timedelta(seconds=3)
            events += self.apply(self.detector.observe(r, now=now), now)
        return events

    def stale(self, now: datetime) -> list[IncidentEvent]:
        return self.apply(self.detector.stale(now, lambda _: INTERVAL_S), now)


def kinds(events: Sequence[IncidentEvent]) -> list[IncidentEventKind]:
    return [e.kind for e in events]


def only(events: Sequence[IncidentEvent], kind: IncidentEventKind) -> Incident:
    (incident,) = [e.incident for e in events if e.kind is kind]
    return incident


@pytest.mark.parametrize("no_address", [False, True], ids=["later-steps-ok", "later-skipped"])
def test_a_dns_outage_is_one_incident_from_its_first_failed_round_to_its_first_good_one(
    no_address: bool,
) -> None:
    watch = Watch()
    outage = [dns_outage(i, no_address=no_address) for i in range(3, 8)]
    events = watch.rounds(*[round_(i) for i in range(3)], *outage)

    assert [c.step for c in watch.changes] == [Step.DNS_CLUSTER]
    assert kinds(events) == [OPENED]
    incident = events[0].incident
    assert incident.id == "shop@20240501T120130Z"
    assert incident.target == "shop"
    assert incident.started_at == at(3)  # the first failed round
    assert incident.detected_at == at(5) + timedelta(seconds=3)  # when hysteresis said so
    assert incident.ended_at is None and incident.is_open
    assert incident.sources == ("pod-a",)
    assert incident.first_failing_step is Step.DNS_CLUSTER
    assert incident.suspect is Suspect.CLUSTER_DNS
    assert incident.evidence == ("cluster_dns from pod-a",)
    assert incident.next_command == "nslookup shop.example"
    (opened,) = incident.history
    assert (opened.at, opened.note, opened.first_failing_step) == (
        at(3),
        "opened",
        Step.DNS_CLUSTER,
    )
    assert opened.states["pod-a"][Step.DNS_CLUSTER] is FAILING
    assert opened.states["pod-a"][Step.TCP_CONNECT] is OK  # skipped: kept as it was
    assert watch.book.open_incidents() == (incident,)
    assert watch.book.open_for("shop") == incident

    events = watch.rounds(round_(8), round_(9), round_(10))

    assert kinds(events) == [CLOSED]
    closed = events[0].incident
    assert closed.id == incident.id
    assert closed.ended_at == at(8)  # the first good round, not when recovery was detected
    assert closed.first_failing_step is Step.DNS_CLUSTER  # what it was while failing
    assert [u.note for u in closed.history] == ["opened", "closed: all sources recovered"]
    assert closed.history[-1].states["pod-a"][Step.DNS_CLUSTER] is OK
    assert closed.history[-1].first_failing_step is None
    assert watch.book.open_incidents() == ()
    assert watch.book.get(incident.id) == closed


@pytest.mark.parametrize(
    ("codes", "detection"),
    [
        (["nxdomain", ".", "nxdomain", ".", "nxdomain", ".", "nxdomain", "."], {}),
        (["nxdomain", "nxdomain", ".", "nxdomain", "nxdomain", "."], {}),
        (["nxdomain", "-", "!", "."], {"fail_after": 2}),  # skipped/error do not make a run
    ],
)
def test_flapping_under_the_thresholds_opens_nothing(
    codes: list[str], detection: dict[str, object]
) -> None:
    watch = Watch(**detection)
    events = watch.rounds(*[round_(i, dns_cluster=code) for i, code in enumerate(codes)])
    assert events == [] and watch.changes == []


def test_flapping_caught_by_the_window_opens_an_incident_from_the_first_failure() -> None:
    watch = Watch(fail_window=(3, 6))
    codes = [".", "nxdomain", ".", "nxdomain", ".", "nxdomain"]
    events = watch.rounds(*[round_(i, dns_cluster=code) for i, code in enumerate(codes)])
    assert only(events, OPENED).started_at == at(1)


def test_degraded_and_unknown_never_open_an_incident() -> None:
    watch = Watch(stale_after=2)
    watch.rounds(*[round_(i, ms=20) for i in range(30)], *[round_(i, ms=80) for i in range(30, 40)])
    assert watch.detector.state("pod-a", "shop", Step.TCP_CONNECT) is StepState.DEGRADED
    assert watch.stale(at(50)) == []
    assert {c.current for c in watch.changes} == {StepState.DEGRADED, UNKNOWN}
    assert watch.book.open_incidents() == ()


def test_two_sources_the_incident_grows_and_closes_when_both_recovered() -> None:
    watch = Watch()
    events = watch.rounds(*[dns_outage(i) for i in range(3)])
    assert only(events, OPENED).sources == ("pod-a",)

    events = watch.rounds(*[dns_outage(i, "pod-b") for i in (1, 2, 3)])
    grown = only(events, UPDATED)
    assert grown.sources == ("pod-a", "pod-b")
    assert grown.history[-1].note == "pod-b failing too"
    assert grown.history[-1].at == at(1)
    assert watch.asked[-1] == ("shop", ("pod-a", "pod-b"))

    events = watch.rounds(round_(4), round_(5), dns_outage(4, "pod-b"))
    assert CLOSED not in kinds(events)
    assert watch.detector.state("pod-a", "shop", Step.DNS_CLUSTER) is OK

    events = watch.rounds(round_(5, "pod-b"), round_(6, "pod-b"))
    closed = only(events, CLOSED)
    assert closed.ended_at == at(5)
    assert closed.sources == ("pod-a", "pod-b")  # sources only grow


def test_a_source_whose_failure_began_earlier_moves_the_start_back() -> None:
    watch = Watch()
    watch.book.apply(
        [
            Change("pod-a", "shop", Step.TCP_CONNECT, OK, FAILING, at(5), at(7)),
            Change("pod-b", "shop", Step.TCP_CONNECT, OK, FAILING, at(2), at(8)),
        ],
        now=at(8),
        detector_states=lambda _: {},
        verdict_for=watch.verdict_for,
    )
    (incident,) = watch.book.open_incidents()
    assert incident.started_at == at(2)
    assert incident.id == "shop@20240501T120230Z"  # fixed at opening: a primary key
    assert incident.detected_at == at(7)


def test_a_silent_source_gives_one_unknown_change_no_incident_and_comes_back() -> None:
    watch = Watch(stale_after=3)
    watch.rounds(*[round_(i) for i in range(3)])
    assert watch.stale(at(10)) == []
    assert [(c.step, c.current) for c in watch.changes] == [(None, UNKNOWN)]
    assert watch.rounds(round_(11)) == []
    assert [(c.step, c.previous, c.current) for c in watch.changes[1:]] == [(None, UNKNOWN, OK)]


def test_an_incident_whose_only_failing_source_goes_silent_stays_open_until_it_recovers() -> None:
    # Silence is not a recovery: closing would tell the on-call connectivity came back, and a
    # pod whose egress broke may well be the one that stopped reporting.
    watch = Watch(stale_after=3)
    watch.rounds(*[dns_outage(i) for i in range(4)])

    events = watch.stale(at(10))
    silent = only(events, UPDATED)
    assert silent.is_open
    assert silent.history[-1].note == "pod-a silent"
    assert silent.history[-1].silent == ("pod-a",)
    assert set(silent.history[-1].states["pod-a"].values()) == {UNKNOWN}
    assert watch.stale(at(100)) == []  # time alone changes nothing

    events = watch.rounds(dns_outage(101))
    back = only(events, UPDATED)
    assert back.history[-1].note == "pod-a reporting again"
    assert back.history[-1].silent == ()

    events = watch.rounds(round_(102), round_(103))
    closed = only(events, CLOSED)
    assert closed.ended_at == at(102)
    assert closed.started_at == at(0)


def test_a_silent_source_does_not_keep_an_incident_open_once_the_others_recovered() -> None:
    watch = Watch(stale_after=3)
    watch.rounds(*[dns_outage(i) for i in range(3)], *[dns_outage(i, "pod-b") for i in range(3)])
    watch.rounds(*[dns_outage(i) for i in range(3, 8)])  # pod-b goes quiet after round 2
    watch.stale(at(7))
    assert watch.detector.unknown_sources("shop") == {"pod-b"}

    events = watch.rounds(round_(8), round_(9))
    first = only(events, CLOSED)
    assert first.ended_at == at(8)
    assert first.history[-1].silent == ("pod-b",)

    # pod-b reports again, still failing: what happened meanwhile is not known, so this is a
    # new incident from its return, not a continuation of the closed one.
    events = watch.rounds(dns_outage(20, "pod-b"))
    second = only(events, OPENED)
    assert second.id != first.id
    assert second.started_at == at(20)
    assert second.sources == ("pod-b",)


def test_dns_recovering_while_tcp_keeps_failing_is_history_not_a_new_verdict() -> None:
    """The incident keeps the verdict of the failure (DESIGN.md §1); its history records that
    tcp_connect is what still fails while it recovers."""
    watch = Watch()
    both = {"dns_cluster": "servfail", "tcp_connect": "conn_timeout", "tls_handshake": "-"}
    tcp = {"tcp_connect": "conn_timeout", "tls_handshake": "-", "http_response": "-"}
    events = watch.rounds(*[round_(i, codes=both) for i in range(4)])
    assert only(events, OPENED).first_failing_step is Step.DNS_CLUSTER

    events = watch.rounds(*[round_(i, codes=tcp) for i in range(4, 7)])

    moved = only(events, UPDATED)
    assert moved.first_failing_step is Step.DNS_CLUSTER
    assert moved.suspect is Suspect.CLUSTER_DNS
    update = moved.history[-1]
    assert update.note == "recovering: first failing step dns_cluster -> tcp_connect"
    assert update.at == at(4)  # the first good dns round
    assert update.first_failing_step is Step.TCP_CONNECT
    assert update.states["pod-a"][Step.DNS_CLUSTER] is OK
    assert update.states["pod-a"][Step.TCP_CONNECT] is FAILING


def test_suspect_update_is_recorded_when_the_verdict_changes() -> None:
    watch = Watch()
    watch.rounds(*[dns_outage(i) for i in range(3)])
    assert watch.apply([], at(4)) == []  # same verdict: nothing

    watch.suspect = Suspect.UPSTREAM_DNS
    (event,) = watch.apply([], at(5))

    assert event.kind is UPDATED
    assert event.incident.suspect is Suspect.UPSTREAM_DNS
    assert event.incident.evidence == ("upstream_dns from pod-a",)
    assert event.incident.history[-1].note == "suspect cluster_dns -> upstream_dns"
    assert event.incident.history[-1].at == at(5)


def test_retiring_the_last_failing_source_closes_the_incident() -> None:
    watch = Watch(stale_after=3)
    watch.rounds(*[dns_outage(i) for i in range(3)])
    watch.stale(at(10))

    def retire(source: str) -> list[IncidentEvent]:
        return watch.book.retire(
            source, at=at(20), detector_states=watch.detector.states, verdict_for=watch.verdict_for
        )

    assert retire("pod-z") == []  # it had no part in the incident
    closed = only(retire("pod-a"), CLOSED)
    assert closed.ended_at == at(20)
    assert closed.history[-1].note == "closed: pod-a retired while failing; recovery not observed"


def test_retiring_one_of_two_failing_sources_keeps_the_incident_open() -> None:
    watch = Watch(stale_after=3)
    watch.rounds(*[round_(i, dns_cluster="servfail") for i in range(3)])
    watch.rounds(*[round_(i, "pod-b", tcp_connect="conn_timeout") for i in range(7)])
    watch.stale(at(7))
    assert watch.book.open_incidents()[0].history[-1].silent == ("pod-a",)

    (event,) = watch.book.retire(
        "pod-a", at=at(8), detector_states=watch.detector.states, verdict_for=watch.verdict_for
    )
    assert event.kind is UPDATED
    assert event.incident.first_failing_step is Step.TCP_CONNECT
    update = event.incident.history[-1]
    assert update.note == "first failing step dns_cluster -> tcp_connect; pod-a retired"
    assert update.silent == ()


def test_ids_are_unique_and_closed_incidents_are_kept_boundedly() -> None:
    book = IncidentBook(keep_closed=2)

    def apply(previous: StepState, current: StepState, began: datetime) -> list[IncidentEvent]:
        change = Change("pod-a", "shop", Step.TCP_CONNECT, previous, current, began, began)
        return book.apply(
            [change], now=began, detector_states=lambda _: {}, verdict_for=Watch().verdict_for
        )

    ids = []
    for n in range(4):  # three incidents starting at the same moment, one 250 µs later
        began = at(0) + timedelta(microseconds=250) if n == 3 else at(0)
        (opened,) = apply(OK, FAILING, began)
        apply(FAILING, OK, began)
        ids.append(opened.incident.id)

    assert ids == [
        "shop@20240501T120000Z",
        "shop@20240501T120000Z-2",
        "shop@20240501T120000Z-3",
        "shop@20240501T120000.000250Z",
    ]
    assert book.get(ids[0]) is None  # forgotten: storage keeps them
    assert book.get(ids[3]) is not None


def test_a_new_failure_after_part_of_an_incident_recovered_moves_the_verdict_again() -> None:
    watch = Watch()
    tcp = {"tcp_connect": "conn_timeout", "tls_handshake": "-", "http_response": "-"}
    watch.rounds(*[dns_outage(i) for i in range(3)])
    watch.rounds(round_(3), round_(4))  # dns recovers: the incident closes
    events = watch.rounds(*[round_(i, codes=tcp) for i in range(5, 8)])
    assert only(events, OPENED).first_failing_step is Step.TCP_CONNECT


def test_one_source_recovering_before_the_other_does_not_rewrite_the_suspect() -> None:
    """Pod and node fail; the pod recovers a round earlier. "Only the node fails" is how the
    incident ends, not why it broke."""
    watch = Watch()
    watch.rounds(*[r for i in range(3) for r in (dns_outage(i, "pod-a"), dns_outage(i, "node-1"))])
    [incident] = watch.book.open_incidents()
    kept = incident.suspect
    watch.rounds(round_(3, "pod-a"))  # a good round, not yet a recovery
    watch.suspect = Suspect.SOURCE_LOCAL  # what the diagnosis says once only the node fails
    events = watch.rounds(round_(4, "pod-a"), dns_outage(4.5, "node-1"))
    updated = [e.incident for e in events]
    assert updated and all(i.suspect is kept for i in updated)
    closing = watch.rounds(round_(5, "node-1"), round_(6, "node-1"))
    closed = only(closing, CLOSED)
    assert closed.suspect is kept and closed.first_failing_step is Step.DNS_CLUSTER


def test_a_new_suspect_must_hold_before_the_incident_takes_it() -> None:
    """The evidence of a round or two (most often the repair under way) does not rewrite why
    it broke: without a new failure, a different suspect must hold as long as hysteresis takes
    to confirm a failure."""
    watch = Watch()
    watch.book = IncidentBook(verdict_hold=lambda _: timedelta(seconds=3 * INTERVAL_S))
    watch.rounds(*[dns_outage(i) for i in range(3)])
    watch.suspect = Suspect.UPSTREAM_DNS
    assert watch.apply([], at(5)) == []  # seen once: held back
    assert watch.apply([], at(6)) == []
    (event,) = watch.apply([], at(8))  # held for 3 intervals: taken
    assert event.incident.suspect is Suspect.UPSTREAM_DNS
    assert event.incident.history[-1].note == "suspect cluster_dns -> upstream_dns"
    # Back and forth never holds long enough.
    watch.suspect = Suspect.CLUSTER_DNS
    assert watch.apply([], at(9)) == []
    watch.suspect = Suspect.UPSTREAM_DNS
    assert watch.apply([], at(10)) == []
    watch.suspect = Suspect.CLUSTER_DNS
    assert watch.apply([], at(11)) == []
    [held] = watch.book.open_incidents()
    assert held.suspect is Suspect.UPSTREAM_DNS


def test_a_trace_failing_alone_is_no_incident_and_does_not_keep_one_open() -> None:
    watch = Watch()

    def traced(i: int, **codes: str) -> RoundResult:
        plain = round_(i, codes=codes)
        stop = step_result(Step.PATH_TRACE, "conn_timeout")
        return replace(plain, steps=(*plain.steps, stop))

    assert watch.rounds(*[traced(i) for i in range(4)]) == []
    assert watch.detector.state("pod-a", "shop", Step.PATH_TRACE) is FAILING
    tcp = {"tcp_connect": "conn_timeout", "tls_handshake": "-", "http_response": "-"}
    opened = only(watch.rounds(*[traced(i, **tcp) for i in range(4, 7)]), OPENED)
    assert opened.first_failing_step is Step.TCP_CONNECT  # never the trace
    # The target works again; the trace still stops short: the incident closes all the same.
    closed = only(watch.rounds(*[traced(i) for i in range(7, 9)]), CLOSED)
    assert closed.first_failing_step is Step.TCP_CONNECT
