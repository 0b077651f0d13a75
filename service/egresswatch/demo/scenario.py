"""The demo's timeline: which fault is injected when, and when it is repaired. Pure.

The service's hysteresis decides when an incident opens and closes, so the demo's config sets
it (`detection: {fail_after: FAIL_AFTER, recover_after: RECOVER_AFTER}`) and the timeline is
built around it. With the defaults (first fault after 60 s, a round every 5 s) the cycle is:

    60 s   shop's DNS answers NXDOMAIN    (an incident opens at the 3rd failed round, by 80 s)
    95 s   repaired                        (it closes at the 2nd good round, by 110 s)
    120 s  shop's HTTP answers 503        (another incident opens by 140 s)
    155 s  repaired                        (it closes by 170 s)
    175 s  the demo ends

"by" is the worst case: a round's phase against the break (up to one interval), the rounds
the hysteresis needs, the round's own timeout and the service's next write of its incidents
(once a second). `settle_s` says it; the tests check each fault and gap holds it.

`break_after` sets when the first fault comes; every later offset counts rounds, so a shorter
interval (the tests use 1 s) shrinks the rest of the cycle with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from egresswatch.model import Reason, Step
from egresswatch.wiring import CONTROLLER_TICK_S

FAIL_AFTER = 3  # the demo config's detection.fail_after: failed rounds that open an incident
RECOVER_AFTER = 2  # its detection.recover_after: good rounds that close it
HOLD_ROUNDS = 7  # a fault lasts this many rounds: the incident opens with rounds to spare
GAP_ROUNDS = 5  # healthy rounds between one repair and the next fault: it closes in between
TAIL_ROUNDS = 4  # after the last repair: enough for the last incident to close and be written
BROKEN_STATUS = 503


class FaultKind(StrEnum):
    DNS = "dns"  # the endpoint's name answers NXDOMAIN
    HTTP = "http"  # the endpoint answers BROKEN_STATUS


@dataclass(frozen=True)
class Fault:
    """One fault of the scenario: what breaks, what egresswatch should see, and when."""

    kind: FaultKind
    target: str  # the configured target it breaks
    title: str  # what a person reads: "shop's DNS answers NXDOMAIN"
    expect_step: Step  # the first failing step egresswatch should report
    expect_reason: Reason
    break_at_s: float  # seconds after the service started
    repair_at_s: float


@dataclass(frozen=True)
class Timeline:
    """The faults in order, and when the whole cycle has been seen (the default duration)."""

    faults: tuple[Fault, ...]
    end_s: float
    interval_s: float

    def actions(self) -> list[tuple[float, Fault, bool]]:
        """(seconds after start, fault, True to break / False to repair), in time order."""
        found = [(f.break_at_s, f, True) for f in self.faults]
        found += [(f.repair_at_s, f, False) for f in self.faults]
        return sorted(found, key=lambda action: action[0])


def round_timeout_s(interval_s: float) -> float:
    """The probes' timeout the demo config sets: a round ends before the next is due."""
    return round(min(4.0, interval_s * 0.8), 3)


def settle_s(rounds: int, interval_s: float) -> float:
    """At most how long after a break (or repair) the incident that `rounds` rounds in a row
    open (or close) is opened (or closed) and written: the next round starts within one
    interval, the last of them `rounds - 1` intervals later, then it takes its timeout at most,
    and the service writes incidents at its next controller tick."""
    return rounds * interval_s + round_timeout_s(interval_s) + CONTROLLER_TICK_S


def timeline(*, break_after_s: float, interval_s: float, target: str = "shop") -> Timeline:
    """The scenario for a first fault at `break_after_s` and rounds every `interval_s`."""
    hold, gap = HOLD_ROUNDS * interval_s, GAP_ROUNDS * interval_s
    dns_at = break_after_s
    http_at = dns_at + hold + gap
    faults = (
        Fault(
            FaultKind.DNS,
            target,
            f"{target}'s DNS answers NXDOMAIN",
            Step.DNS_CLUSTER,
            Reason.NXDOMAIN,
            dns_at,
            dns_at + hold,
        ),
        Fault(
            FaultKind.HTTP,
            target,
            f"{target}'s HTTP answers {BROKEN_STATUS}",
            Step.HTTP_RESPONSE,
            Reason.HTTP_STATUS,
            http_at,
            http_at + hold,
        ),
    )
    return Timeline(faults, http_at + hold + TAIL_ROUNDS * interval_s, interval_s)
