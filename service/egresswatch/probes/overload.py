"""A step whose timeout was the prober's own lateness is the prober's problem, not a `fail`.

When the process is saturated, the event loop runs every callback late: an answer can sit in
its socket until after the step's timer fired, and the target is blamed for our lateness.
:func:`judge_timeout` looks at a step that failed by timing out together with how long the
loop was stalled during that step (``egresswatch.looplag``, handed in as a plain callable,
:data:`Stalls`): when the stalls took at least :data:`OVERLOAD_SHARE` of the step's budget,
the step becomes ``error`` with reason ``prober_overloaded`` (``error`` means our probe broke,
not the target: detection, ``egresswatch_step_up`` and the first failing step ignore it, and
a round without a real failure is not traced). A timeout on a prober that was not stalled
stays what it was (``conn_timeout``, ``dns_timeout``, ``timeout``): a silent endpoint is still
a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from egresswatch.model import Reason, Status, StepResult

__all__ = ["OVERLOAD_SHARE", "TIMEOUT_REASONS", "Stalls", "judge_timeout"]

# (start, end) in loop.time() -> seconds of it during which the event loop was stalled.
Stalls = Callable[[float, float], float]

TIMEOUT_REASONS = frozenset({Reason.CONN_TIMEOUT, Reason.DNS_TIMEOUT, Reason.TIMEOUT})
# Half the budget: a loopback or in-cluster answer takes milliseconds, so a step that lost
# half its time to our own stalls timed out because of them; a target slower than half its
# budget on an idle prober still times out with the stalls near 0 and stays a `fail`.
OVERLOAD_SHARE = 0.5


def judge_timeout(result: StepResult, *, budget_s: float, stalled_s: float) -> StepResult:
    """`result` as it stands, or, when it timed out while the loop was stalled for at least
    OVERLOAD_SHARE of `budget_s`, the same step as `error`/`prober_overloaded` with the
    stall and the original reason in its detail (its evidence kept)."""
    if result.status is not Status.FAIL or result.reason not in TIMEOUT_REASONS:
        return result
    if budget_s <= 0 or stalled_s < OVERLOAD_SHARE * budget_s:
        return result
    was = result.reason.value if result.reason else "timeout"
    detail = (
        f"the prober was overloaded: its event loop was stalled {stalled_s:.3f} s of the"
        f" step's {budget_s:.3f} s budget, so its {was} says nothing about the target"
        f" ({result.detail})"
    )
    return replace(result, status=Status.ERROR, reason=Reason.PROBER_OVERLOADED, detail=detail)
