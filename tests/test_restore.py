"""Restoring detection from what is stored gives the judgements an uninterrupted run gives.

Pure: a detector fed a whole history is compared with one that stops after round k, whose
step states (what the database holds) and latest rounds restore a new detector, which then
takes the rest. For every split point the changes after it must be the same.

One case is knowingly not covered: with `fail_window`, failures before a step's very first good
round count in the window of an uninterrupted run; a restore starts that step from its stored
OK state at that first good round and does not count them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest

from egresswatch.controller.detection.hysteresis import Detector, SavedState
from egresswatch.controller.detection.incidents import IncidentBook
from egresswatch.controller.detection.restart import RESTORE_ROUNDS, failing_steps
from egresswatch.model import PROBE_STEPS, Change, RoundResult, Step, StepState, Suspect, Verdict
from egresswatch.settings import DetectionSettings
from tests.support.rounds import at, round_

CODES = {"F": "conn_timeout", ".": ".", "s": "-"}
SOURCES = ("pod-a", "node-1")


def policy(**fields: object) -> DetectionSettings:
    return DetectionSettings.model_validate(fields)


def history(pattern_a: str, pattern_b: str) -> list[RoundResult]:
    """tcp_connect of two sources, one char a round each (F fails, . ok, s skipped)."""
    rounds = []
    for i, (a, b) in enumerate(zip(pattern_a, pattern_b, strict=True)):
        rounds.append(round_(i, "pod-a", tcp_connect=CODES[a]))
        rounds.append(round_(i + 0.1, "node-1", tcp_connect=CODES[b]))
    return rounds


def feed(detector: Detector, rounds: Sequence[RoundResult]) -> list[Change]:
    changes: list[Change] = []
    for r in rounds:
        changes += detector.observe(r, now=r.started_at + timedelta(seconds=3))
    return changes


def stored_states(detector: Detector) -> list[SavedState]:
    """What the database holds after the pipeline stored the detector's changes."""
    saved = []
    for source, target in detector.pairs():
        for step in PROBE_STEPS:
            since = detector.since(source, target, step)
            state = detector.state(source, target, step)
            if since is not None and state is not StepState.UNKNOWN:
                saved.append(SavedState(source, target, step, state, since))
    return saved


def judged(changes: Sequence[Change]) -> list[tuple[str, Step | None, StepState, object]]:
    return [(c.source, c.step, c.current, c.started_at) for c in changes]


@pytest.mark.parametrize(
    ("pattern_a", "pattern_b", "settings"),
    [
        ("..FFFF..FF.F..", "..............", policy(fail_after=3, recover_after=2)),
        ("FFF.F.FF..FFF.", "..F..FFF...F..", policy(fail_after=2, recover_after=3)),
        (".F.F.F.F..sss.F.", ".FsFsF..F.F.F...", policy(fail_after=3, fail_window=(3, 5))),
        ("FFFFFFF.......", "FFF.....FFFFFF", policy(fail_after=1, recover_after=4)),
    ],
)
def test_a_restored_detector_judges_the_rest_as_if_nothing_had_stopped(
    pattern_a: str, pattern_b: str, settings: DetectionSettings
) -> None:
    rounds = history(pattern_a, pattern_b)
    whole = Detector(lambda _: settings)
    expected = [judged(feed(whole, [r])) for r in rounds]
    for k in range(1, len(rounds)):
        before = Detector(lambda _: settings)
        feed(before, rounds[:k])
        restored = Detector(lambda _: settings)
        latest = rounds[max(0, k - RESTORE_ROUNDS) : k]
        missed = restored.restore(stored_states(before), latest, now=rounds[k].started_at)
        assert missed == [], f"split at {k}: nothing was judged but not stored"
        after = [judged(feed(restored, [r])) for r in rounds[k:]]
        assert after == expected[k:], f"split at {k}"


def test_changes_judged_but_not_stored_are_judged_again_at_restore() -> None:
    settings = policy(fail_after=3, recover_after=2)
    rounds = history("...FFF", "......")
    before = Detector(lambda _: settings)
    feed(before, rounds[:6])  # the states as stored: no failure yet
    saved = stored_states(before)
    restored = Detector(lambda _: settings)
    missed = restored.restore(saved, rounds, now=at(7))
    assert [(c.source, c.step, c.current, c.started_at) for c in missed] == [
        ("pod-a", Step.TCP_CONNECT, StepState.FAILING, at(3))
    ]
    assert missed[0].detected_at == at(7)


def test_a_silent_pair_stays_silent_and_comes_back_with_a_change() -> None:
    settings = policy(fail_after=3, recover_after=2, stale_after=3)
    rounds = history("...", "...")
    detector = Detector(lambda _: settings)
    feed(detector, rounds)
    saved = [
        *stored_states(detector),
        SavedState("pod-a", "shop", None, StepState.UNKNOWN, at(3)),
    ]
    restored = Detector(lambda _: settings)
    assert restored.restore(saved, rounds, now=at(10)) == []
    assert restored.unknown_sources("shop") == {"pod-a"}
    back = feed(restored, [round_(11, "pod-a")])
    assert [(c.step, c.previous, c.current) for c in back] == [
        (None, StepState.UNKNOWN, StepState.OK)
    ]


def test_no_source_goes_silent_in_the_first_window_after_a_restore() -> None:
    settings = policy(stale_after=3)
    detector = Detector(lambda _: settings)  # agents retry within 30 s: one interval here
    rounds = [round_(i) for i in range(3)]
    detector.restore([], rounds, now=at(20))  # down for 17 intervals
    assert detector.stale(at(24), lambda _: 30.0) == []  # agents deliver what they buffered
    assert [c.current for c in detector.stale(at(25), lambda _: 30.0)] == [StepState.UNKNOWN]


def test_a_degraded_step_is_measured_against_its_latency_before_it_degraded() -> None:
    settings = policy()
    rounds = [round_(i, ms=20) for i in range(10)] + [round_(i, ms=200) for i in range(10, 20)]
    saved = [
        SavedState("pod-a", "shop", step, StepState.OK, at(0))
        for step in PROBE_STEPS
        if step is not Step.TCP_CONNECT
    ] + [SavedState("pod-a", "shop", Step.TCP_CONNECT, StepState.DEGRADED, at(10))]
    detector = Detector(lambda _: settings)
    restored = detector.restore(saved, rounds, now=at(20))
    # The other steps' latency rose too: their change was not stored, so it is found now.
    assert Step.TCP_CONNECT not in {c.step for c in restored}
    assert detector.state("pod-a", "shop", Step.TCP_CONNECT) is StepState.DEGRADED
    back = feed(detector, [round_(i, ms=20) for i in range(20, 60)])
    assert (Step.TCP_CONNECT, StepState.OK) in [(c.step, c.current) for c in back]
    # Without any good round before it degraded, there is nothing to measure against.
    lost = Detector(lambda _: settings).restore(saved, rounds[10:], now=at(20))
    assert [(c.previous, c.current) for c in lost if c.step is Step.TCP_CONNECT] == [
        (StepState.DEGRADED, StepState.OK)
    ]


def verdict(target: str, sources: tuple[str, ...]) -> Verdict:
    return Verdict(Suspect.UNKNOWN, None, ("test",))


def test_a_restored_book_keeps_the_incident_and_closes_it_once() -> None:
    settings = policy(fail_after=2, recover_after=2)
    rounds = history("..FFFF", "......")
    detector = Detector(lambda _: settings)
    book = IncidentBook()
    events = []
    for r in rounds:
        changes = feed(detector, [r])
        events += book.apply(
            changes, now=r.started_at, detector_states=detector.states, verdict_for=verdict
        )
    [incident] = book.open_incidents()

    saved = stored_states(detector)
    restored = Detector(lambda _: settings)
    assert restored.restore(saved, rounds, now=at(7)) == []
    again = IncidentBook()
    again.restore([incident], failing=failing_steps(saved), silent={})
    assert (
        again.reconcile(
            now=at(7),
            recovered_at=lambda *_: at(7),
            detector_states=restored.states,
            verdict_for=verdict,
        )
        == []
    )
    closing = []
    for r in history("..", "..")[:4]:
        moved = r.__class__(r.target, r.source, r.started_at + timedelta(seconds=240), r.steps)
        changes = feed(restored, [moved])
        closing += again.apply(
            changes, now=moved.started_at, detector_states=restored.states, verdict_for=verdict
        )
    [closed] = [e.incident for e in closing if e.incident.ended_at is not None]
    assert (closed.id, closed.started_at) == (incident.id, incident.started_at)
    assert [u.note for u in closed.history].count("closed: all sources recovered") == 1


def test_reconcile_closes_an_incident_whose_recovery_was_judged_but_not_stored() -> None:
    settings = policy(fail_after=2, recover_after=2)
    # The incident as stored: opened, its closing never reached the database.
    opened_detector = Detector(lambda _: settings)
    stored_book = IncidentBook()
    for r in history("..FF", "...."):
        stored_book.apply(
            feed(opened_detector, [r]),
            now=r.started_at,
            detector_states=opened_detector.states,
            verdict_for=verdict,
        )
    [still_open] = stored_book.open_incidents()
    # The step states as stored: the recovery's change was.
    recovered = Detector(lambda _: settings)
    feed(recovered, history("..FF..", "......"))
    saved = stored_states(recovered)
    restored = Detector(lambda _: settings)
    restored.restore(saved, [], now=at(8))
    book = IncidentBook()
    book.restore([still_open], failing=failing_steps(saved), silent={})
    [event] = book.reconcile(
        now=at(8),
        recovered_at=lambda *_: at(4),
        detector_states=restored.states,
        verdict_for=verdict,
    )
    assert event.incident.id == still_open.id and event.incident.ended_at == at(4)
    assert event.incident.history[-1].note.startswith("closed: all sources had recovered")
