"""When the agent's sink hurries a batch (agent/linger.py), on a clock of the test's own.

A failing round, and its target's rounds for `urgent_window_s` after its last failing one, ask
for their batch within `urgent_interval_s`; other rounds wait for theirs. The sink against a
real controller: tests/test_agent.py.
"""

from __future__ import annotations

from egresswatch.agent.linger import Linger

BATCH_S, URGENT_S, WINDOW_S = 5.0, 1.0, 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def linger(clock: Clock) -> Linger:
    return Linger(BATCH_S, URGENT_S, WINDOW_S, clock=clock)


def test_a_target_that_never_failed_does_not_hurry() -> None:
    lingering = linger(Clock())
    lingering.submitted("shop", failing=False)
    assert lingering.urgent_until() is None


def test_a_failing_round_and_its_targets_rounds_in_the_window_hurry() -> None:
    clock = Clock()
    lingering = linger(clock)
    lingering.submitted("shop", failing=True)
    assert lingering.urgent_until() == clock.now + URGENT_S
    lingering.taken(0)
    assert lingering.urgent_until() is None

    for _ in range(2):  # the recovery's rounds, the first and the later ones alike
        clock.now += (WINDOW_S - 1) / 2
        lingering.submitted("shop", failing=False)
        assert lingering.urgent_until() == clock.now + URGENT_S
        lingering.taken(0)

    lingering.submitted("cart", failing=False)  # another target: no window of its own
    assert lingering.urgent_until() is None


def test_the_window_ends_a_window_after_the_last_failing_round() -> None:
    clock = Clock()
    lingering = linger(clock)
    lingering.submitted("shop", failing=True)
    lingering.taken(0)
    clock.now += WINDOW_S - 10
    lingering.submitted("shop", failing=True)  # failing again: the window starts over
    lingering.taken(0)
    clock.now += WINDOW_S - 1
    lingering.submitted("shop", failing=False)
    assert lingering.urgent_until() is not None
    lingering.taken(0)

    clock.now += 1
    lingering.submitted("shop", failing=False)  # a window after the last failing round
    assert lingering.urgent_until() is None


def test_an_urgent_round_keeps_the_earliest_deadline_until_nothing_waits() -> None:
    clock = Clock()
    lingering = linger(clock)
    lingering.submitted("shop", failing=True)
    first = lingering.urgent_until()
    clock.now += 0.5
    lingering.submitted("cart", failing=True)
    assert lingering.urgent_until() == first
    lingering.taken(3)  # rounds still wait: their hurry stands
    assert lingering.urgent_until() == first
    lingering.taken(0)
    assert lingering.urgent_until() is None
