"""The demo's timeline: which fault is injected when, and when it is repaired. Pure.

With the defaults (first fault after 60 s, a round every 5 s) the cycle is:

    60 s   shop's DNS answers NXDOMAIN        (dns_cluster should fail)
    95 s   repaired                            (7 rounds later)
    120 s  shop's HTTP answers 503            (5 rounds after the repair)
    155 s  repaired                            (7 rounds later)
    170 s  the demo ends                      (3 rounds to see the recovery)

`break_after` sets when the first fault comes; every later offset counts rounds, so a shorter
interval (the tests use 1 s) shrinks the rest of the cycle with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from egresswatch.model import Reason, Step

HOLD_ROUNDS = 7  # a fault lasts this many rounds: long enough to be seen, short enough to wait
GAP_ROUNDS = 5  # healthy rounds between one repair and the next fault
TAIL_ROUNDS = 3  # after the last repair: time for the next round to show the recovery
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
