"""Hysteresis on scripted result streams, with an injected clock (nothing sleeps)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import timedelta

import pytest

from egresswatch.controller.detection.hysteresis import Detector
from egresswatch.controller.detection.step_rules import UNJUDGED, StepTrack
from egresswatch.model import (
    Change,
    Reason,
    RoundResult,
    Status,
    Step,
    StepResult,
    StepState,
)
from egresswatch.settings import DetectionSettings, Settings
from tests.support.purity import io_imported
from tests.support.rounds import CHECKLIST, INTERVAL_S, at, dns_outage, index, round_

OK, FAILING, DEGRADED, UNKNOWN = (
    StepState.OK,
    StepState.FAILING,
    StepState.DEGRADED,
    StepState.UNKNOWN,
)


def feed(detector: Detector, rounds: Sequence[RoundResult]) -> list[Change]:
    """Observe each round, `now` a few seconds after it started (when its result arrives)."""
    changes = []
    for r in rounds:
        changes += detector.observe(r, now=r.started_at + timedelta(seconds=3))
    return changes


def policy(**fields: object) -> DetectionSettings:
    return DetectionSettings.model_validate(fields)


CODES = {"F": "conn_timeout", "R": "conn_refused", ".": ".", "s": "-", "e": "!"}


def flips(pattern: str, settings: DetectionSettings) -> list[tuple[int, StepState, int]]:
    """tcp_connect through `pattern` (F/R fail, . ok, s skipped, e error), one char a round:
    each change as (round it was detected in, state it went to, round it started at)."""
    detector = Detector(lambda _: settings)
    out = []
    for i, char in enumerate(pattern):
        for change in feed(detector, [round_(i, tcp_connect=CODES[char])]):
            assert change.step is Step.TCP_CONNECT
            out.append((i, change.current, int(index(change.started_at))))
    return out


@pytest.mark.parametrize(
    ("pattern", "settings", "expected"),
    [
        # fail_after: a run of failures, counted from its first round
        ("..FFF...", policy(fail_after=3), [(4, FAILING, 2), (6, OK, 5)]),
        ("..F", policy(fail_after=1), [(2, FAILING, 2)]),
        # flapping under the threshold opens nothing without a window...
        ("F.F.F.F.F.F.F.F.", policy(fail_after=3), []),
        ("FF.FF.FF.FF.", policy(fail_after=3), []),
        # ...and the M-of-K window catches it, from the first failure inside the window
        ("..F.F.F.", policy(fail_after=3, fail_window=(3, 5)), [(6, FAILING, 2)]),
        ("F...F.F.F", policy(fail_after=3, fail_window=(3, 5)), [(8, FAILING, 4)]),
        # both rules hold: the earlier start wins
        ("F.FFF", policy(fail_after=3, fail_window=(4, 5)), [(4, FAILING, 0)]),
        # recovery needs recover_after good rounds in a row, from the first of them
        (".FFF.F...", policy(fail_after=3, recover_after=3), [(3, FAILING, 1), (8, OK, 6)]),
        # a recovery clears the window: old failures cannot fail the step again
        (
            ".FFF..F.F",
            policy(fail_after=3, fail_window=(3, 8), recover_after=2),
            [(3, FAILING, 1), (5, OK, 4)],
        ),
        # skipped and error neither fail nor recover, nor break a run
        (".FFsFe", policy(fail_after=3), [(4, FAILING, 1)]),
        (".FFFs.e.", policy(fail_after=3, recover_after=2), [(3, FAILING, 1), (7, OK, 5)]),
        ("sssseeee", policy(fail_after=1), []),
        # a step seen only skipped or error so far is judged from its first ok or fail on,
        # as one never seen (the shared UNJUDGED track stays as built)
        ("sesFFF.", policy(fail_after=3), [(5, FAILING, 3)]),
        ("ssF.F.F.", policy(fail_after=3, fail_window=(3, 5)), [(6, FAILING, 2)]),
        ("se.sFsF", policy(fail_after=2), [(6, FAILING, 4)]),
        # a step failing from its first round flips from UNKNOWN; the first good round sets OK
        # silently (the previous state is checked in test_a_step_starts_unknown)
        ("FFF", policy(fail_after=3), [(2, FAILING, 0)]),
        # the latest reason does not matter to the counting
        ("FRFR", policy(fail_after=4), [(3, FAILING, 0)]),
    ],
)
def test_hysteresis(
    pattern: str, settings: DetectionSettings, expected: list[tuple[int, StepState, int]]
) -> None:
    assert flips(pattern, settings) == expected


def test_a_step_starts_unknown_and_its_first_good_round_is_not_a_change() -> None:
    detector = Detector(lambda _: policy(fail_after=2))
    assert detector.state("pod-a", "shop", Step.TCP_CONNECT) is UNKNOWN

    assert feed(detector, [round_(0)]) == []
    assert detector.state("pod-a", "shop", Step.TCP_CONNECT) is OK
    assert detector.since("pod-a", "shop", Step.TCP_CONNECT) == at(0)

    fresh = Detector(lambda _: policy(fail_after=2))
    (change,) = feed(fresh, [round_(i, tcp_connect="conn_refused") for i in (0, 1)])
    assert (change.previous, change.current) == (UNKNOWN, FAILING)


def test_a_first_good_round_is_a_baseline_to_store_once_not_a_change() -> None:
    detector = Detector(lambda _: policy(fail_after=2))
    assert feed(detector, [round_(0)]) == []
    baselines = detector.take_baselines()
    tcp = [b for b in baselines if b.step is Step.TCP_CONNECT]
    assert [(b.previous, b.current, b.started_at) for b in tcp] == [(UNKNOWN, OK, at(0))]
    assert detector.take_baselines() == []  # taken
    feed(detector, [round_(1), round_(2)])
    assert detector.take_baselines() == []  # only the first good round of a step
    failing = Detector(lambda _: policy(fail_after=2))
    feed(failing, [round_(i, tcp_connect="conn_refused") for i in (0, 1)])
    assert [b for b in failing.take_baselines() if b.step is Step.TCP_CONNECT] == []


@pytest.mark.parametrize("no_address", [False, True], ids=["later-steps-ok", "later-skipped"])
def test_a_dns_outage_is_one_change_for_dns_cluster_from_its_first_failed_round(
    no_address: bool,
) -> None:
    detector = Detector(lambda _: policy(fail_after=3, recover_after=2))
    rounds = [round_(i) for i in range(3)]
    rounds += [dns_outage(i, no_address=no_address) for i in range(3, 8)]
    rounds += [round_(i) for i in range(8, 11)]

    changes = feed(detector, rounds)

    failing, recovered = changes
    assert failing.step is Step.DNS_CLUSTER
    assert (failing.previous, failing.current) == (OK, FAILING)
    assert failing.started_at == at(3)  # the first failed round...
    assert failing.detected_at == at(5) + timedelta(seconds=3)  # ...not when it was detected
    assert failing.reason is Reason.NXDOMAIN
    assert failing.detail.startswith("3 failed rounds in a row: nxdomain")
    assert (recovered.step, recovered.previous, recovered.current) == (
        Step.DNS_CLUSTER,
        FAILING,
        OK,
    )
    assert recovered.started_at == at(8)  # the first good round
    assert recovered.detected_at == at(9) + timedelta(seconds=3)
    assert detector.state("pod-a", "shop", Step.TCP_CONNECT) is OK


def test_the_reason_is_that_of_the_latest_failure() -> None:
    detector = Detector(lambda _: policy(fail_after=2))
    rounds = [round_(0), round_(1, tcp_connect="conn_timeout"), round_(2, tcp_connect="conn_reset")]
    (change,) = feed(detector, rounds)
    assert change.reason is Reason.CONN_RESET


def test_failing_since_and_states() -> None:
    detector = Detector(lambda _: policy(fail_after=2))
    feed(detector, [round_(0), dns_outage(1), dns_outage(2), round_(2, "pod-b")])

    assert detector.failing_since("pod-a", "shop", Step.DNS_CLUSTER) == at(1)
    assert detector.failing_since("pod-a", "shop", Step.TCP_CONNECT) is None
    assert detector.failing_since("pod-z", "shop", Step.TCP_CONNECT) is None
    states = detector.states("shop")
    assert states["pod-a"][Step.DNS_CLUSTER] is FAILING
    assert states["pod-a"][Step.HTTP_RESPONSE] is OK
    assert set(states["pod-b"].values()) == {OK}
    assert detector.states("bank") == {}
    assert set(detector.pairs()) == {("pod-a", "shop"), ("pod-b", "shop")}


def test_per_target_overrides_are_honoured() -> None:
    settings = Settings.model_validate(
        {
            "detection": {"fail_after": 3},
            "targets": [
                {"name": "shop", "url": "https://shop.example/"},
                {"name": "bank", "url": "https://bank.example/", "detection": {"fail_after": 1}},
            ],
        }
    )

    def detection(name: str) -> DetectionSettings:
        target = settings.target(name)
        assert target is not None
        return settings.detection_for(target)

    detector = Detector(detection)
    changes = feed(detector, [dns_outage(0, target="shop"), dns_outage(0, target="bank")])
    assert [(c.target, c.current) for c in changes] == [("bank", FAILING)]
    changes = feed(detector, [dns_outage(i, target="shop") for i in (1, 2)])
    assert [(c.target, c.current, c.started_at) for c in changes] == [("shop", FAILING, at(0))]


def test_a_config_change_resizes_the_window() -> None:
    current = {"settings": policy(fail_after=10, fail_window=(2, 3))}
    detector = Detector(lambda _: current["settings"])
    feed(detector, [round_(0, tcp_connect="conn_refused"), round_(1), round_(2)])
    current["settings"] = policy(fail_after=10, fail_window=(2, 5))
    (change,) = feed(detector, [round_(3, tcp_connect="conn_refused")])
    assert change.started_at == at(0)  # round 0 is still in the now larger window


def test_a_replayed_or_older_round_is_ignored() -> None:
    detector = Detector(lambda _: policy(fail_after=2))
    feed(detector, [round_(0), dns_outage(1)])
    assert feed(detector, [dns_outage(1), dns_outage(0.5)]) == []
    assert detector.state("pod-a", "shop", Step.DNS_CLUSTER) is OK


# -- staleness -------------------------------------------------------------------------------


def interval(_: str) -> float:
    return INTERVAL_S


def test_a_silent_source_becomes_unknown_once_and_comes_back() -> None:
    detector = Detector(lambda _: policy(stale_after=3))
    feed(detector, [round_(i) for i in range(3)] + [round_(i, "pod-b") for i in range(6)])

    assert detector.stale(at(5), interval) == []  # 3 intervals since round 2: not more
    (change,) = detector.stale(at(5.1), interval)
    assert (change.source, change.step) == ("pod-a", None)
    assert (change.previous, change.current) == (OK, UNKNOWN)
    assert change.started_at == at(3)  # the first round that did not come
    assert change.detected_at == at(5.1)
    assert detector.stale(at(7), interval) == []  # once
    assert detector.unknown_sources("shop") == {"pod-a"}
    assert detector.state("pod-a", "shop", Step.DNS_CLUSTER) is UNKNOWN
    assert set(detector.states("shop")["pod-a"].values()) == {UNKNOWN}

    (back,) = feed(detector, [round_(10)])
    assert (back.source, back.step, back.previous, back.current) == ("pod-a", None, UNKNOWN, OK)
    assert back.started_at == at(10)
    assert detector.unknown_sources("shop") == frozenset()
    assert detector.state("pod-a", "shop", Step.DNS_CLUSTER) is OK


def test_a_silent_failing_source_keeps_its_state_and_time_changes_nothing() -> None:
    detector = Detector(lambda _: policy(fail_after=2, recover_after=2, stale_after=2))
    feed(detector, [round_(0)] + [dns_outage(i) for i in (1, 2)])

    (gone,) = detector.stale(at(5), interval)
    assert (gone.previous, gone.current) == (FAILING, UNKNOWN)
    assert detector.failing_since("pod-a", "shop", Step.DNS_CLUSTER) is None  # unknown now
    for hours in (1, 5, 24):
        assert detector.stale(at(5) + timedelta(hours=hours), interval) == []

    back = feed(detector, [round_(3000)])
    assert [(c.step, c.previous, c.current) for c in back] == [(None, UNKNOWN, FAILING)]
    assert detector.failing_since("pod-a", "shop", Step.DNS_CLUSTER) == at(1)
    (recovered,) = feed(detector, [round_(3001)])
    assert (recovered.step, recovered.current, recovered.started_at) == (
        Step.DNS_CLUSTER,
        OK,
        at(3000),
    )


def test_a_silence_breaks_runs_so_an_unknown_source_never_fails_a_step() -> None:
    detector = Detector(lambda _: policy(fail_after=3, stale_after=2))
    feed(detector, [round_(0), dns_outage(1), dns_outage(2)])
    detector.stale(at(10), interval)

    changes = feed(detector, [dns_outage(20)])
    assert [(c.step, c.current) for c in changes] == [(None, OK)]  # not FAILING: 1 in a row
    changes = feed(detector, [dns_outage(21), dns_outage(22)])
    assert [(c.step, c.current, c.started_at) for c in changes] == [
        (Step.DNS_CLUSTER, FAILING, at(20))
    ]


def test_a_source_never_judged_goes_silent_without_a_change() -> None:
    detector = Detector(lambda _: policy(stale_after=1))
    skipped = {s.value: "-" for s in CHECKLIST}
    feed(detector, [round_(0, codes=skipped)])
    assert detector.stale(at(5), interval) == []
    assert detector.unknown_sources("shop") == {"pod-a"}
    assert feed(detector, [round_(6)]) == []


def test_forget_drops_sources_and_targets() -> None:
    detector = Detector(lambda _: policy())
    feed(detector, [round_(0), round_(0, "pod-b"), round_(0, target="bank")])
    detector.forget(source="pod-a")
    assert set(detector.pairs()) == {("pod-b", "shop")}
    detector.forget(target="shop")
    assert list(detector.pairs()) == []
    with pytest.raises(ValueError):
        detector.forget()


# -- latency ---------------------------------------------------------------------------------


def latency_rounds(start: int, count: int, ms: float, seed: int) -> list[RoundResult]:
    rng = random.Random(seed)
    return [round_(start + i, ms=ms * math.exp(rng.gauss(0, 0.2))) for i in range(count)]


def test_a_latency_rise_is_degraded_from_where_it_began_and_recovers() -> None:
    detector = Detector(lambda _: policy())
    rounds = latency_rounds(0, 40, 20, seed=1) + latency_rounds(40, 30, 60, seed=2)
    rounds += latency_rounds(70, 30, 20, seed=3)

    changes = feed(detector, rounds)

    # every step of the round got slower: each is DEGRADED, then OK again
    assert {c.step for c in changes} == set(CHECKLIST)
    for step in CHECKLIST:
        up, down = [c for c in changes if c.step is step]
        assert (up.previous, up.current) == (OK, DEGRADED)
        assert 38 <= index(up.started_at) <= 40
        assert index(up.detected_at) - 40 <= 5
        assert up.detail.startswith("latency ")
        assert (down.previous, down.current) == (DEGRADED, OK)
        assert 68 <= index(down.started_at) <= 70
        assert "latency back to" in down.detail


def test_failing_wins_over_degraded_and_recovery_is_ok_not_degraded() -> None:
    detector = Detector(lambda _: policy(fail_after=2, recover_after=2))
    rounds = latency_rounds(0, 30, 20, seed=1) + latency_rounds(30, 10, 80, seed=2)
    feed(detector, rounds)
    assert detector.state("pod-a", "shop", Step.TCP_CONNECT) is DEGRADED

    changes = feed(detector, [round_(40 + i, tcp_connect="conn_timeout", ms=80) for i in range(2)])
    assert [(c.previous, c.current) for c in changes] == [(DEGRADED, FAILING)]
    changes = feed(detector, latency_rounds(42, 20, 80, seed=3))
    tcp = [c for c in changes if c.step is Step.TCP_CONNECT]
    assert [(c.previous, c.current) for c in tcp] == [(FAILING, OK)]  # a new baseline at 80 ms


def test_path_trace_duration_is_not_latency() -> None:
    detector = Detector(lambda _: policy())
    for i in range(60):
        trace = StepResult(Step.PATH_TRACE, Status.OK, duration_s=0.5 if i < 30 else 5.0)
        r = round_(i)
        feed(detector, [RoundResult(r.target, r.source, r.started_at, (*r.steps, trace))])
    assert detector.state("pod-a", "shop", Step.PATH_TRACE) is OK


def test_degraded_holds_while_the_level_stays_up_and_ends_when_it_drifts_back() -> None:
    detector = Detector(lambda _: policy())
    feed(detector, latency_rounds(0, 30, 20, seed=1) + latency_rounds(30, 20, 60, seed=2))
    assert detector.state("pod-a", "shop", Step.TCP_CONNECT) is DEGRADED

    feed(detector, latency_rounds(50, 60, 35, seed=3))  # down, but still 1.75x
    assert detector.state("pod-a", "shop", Step.TCP_CONNECT) is DEGRADED

    # back to 20 ms by 1% a round: too slow to be a shift, the level follows it
    rng = random.Random(4)
    ramp = [
        round_(110 + i, ms=max(20.0, 35 * 0.99**i) * math.exp(rng.gauss(0, 0.2)))
        for i in range(150)
    ]
    changes = [c for c in feed(detector, ramp) if c.step is Step.TCP_CONNECT]
    assert [(c.previous, c.current) for c in changes] == [(DEGRADED, OK)]
    assert index(changes[0].started_at) >= 110  # on the way down, not when it first fell


def test_the_detection_rules_import_no_io_library() -> None:
    modules = ("hysteresis", "incidents")
    assert io_imported(*(f"egresswatch.controller.detection.{m}" for m in modules)) == []


def latency_changes(levels_ms: Sequence[float], rounds_each: int, **fields: object) -> list[Change]:
    """tcp_connect at each level in turn (every step takes the level), `rounds_each` rounds."""
    detector = Detector(lambda _: policy(**fields))
    series = [level for level in levels_ms for _ in range(rounds_each)]
    rounds = [round_(i, ms=level) for i, level in enumerate(series)]
    return [c for c in feed(detector, rounds) if c.step is Step.TCP_CONNECT]


def test_a_sub_millisecond_rise_on_a_quiet_path_is_not_a_regression() -> None:
    """1.2 ms -> 2.0 ms is a 1.7x shift that the change-point detector does find; it is below
    `latency_min_change` (5 ms by default), so nothing degrades."""
    assert latency_changes([1.2, 2.0], 40) == []
    found = latency_changes([1.2, 2.0], 40, latency_min_change="0.1ms")
    assert [c.current for c in found][:1] == [StepState.DEGRADED]  # the setting decides


def test_a_degraded_step_still_reports_a_larger_regression() -> None:
    found = latency_changes([10.0, 22.0, 300.0], 40)
    assert [(c.previous, c.current) for c in found][:2] == [
        (OK, StepState.DEGRADED),
        (StepState.DEGRADED, StepState.DEGRADED),
    ]
    assert "latency rose again" in found[1].detail and "300.0 ms" in found[1].detail


def test_steps_never_judged_share_one_track_that_stays_as_built() -> None:
    """An `address:` target's DNS, TLS, HTTP and trace steps are skipped every round: they
    share UNJUDGED (160 bytes a step less), which no round, silence or return changes."""
    detector = Detector(lambda _: policy(fail_after=1, fail_window=(1, 2)))
    skipped = {"dns_cluster": "-", "tls_handshake": "-", "http_response": "!"}
    feed(detector, [round_(0, codes=skipped), round_(1, codes=skipped, tcp_connect="conn_timeout")])
    tracks = detector._tracks["shop"]["pod-a"].steps
    assert tracks[Step.DNS_CLUSTER] is tracks[Step.TLS_HANDSHAKE] is UNJUDGED
    assert tracks[Step.HTTP_RESPONSE] is UNJUDGED and tracks[Step.TCP_CONNECT] is not UNJUDGED
    assert detector.stale(at(50), interval)  # silent: stale
    feed(detector, [round_(51, codes=skipped)])  # back: the runs are broken
    assert StepTrack() == UNJUDGED
    assert detector.states("shop")["pod-a"][Step.TLS_HANDSHAKE] is UNKNOWN
    feed(detector, [round_(52)])  # every step judged now: tracks of their own
    assert UNJUDGED not in tracks.values() and StepTrack() == UNJUDGED
