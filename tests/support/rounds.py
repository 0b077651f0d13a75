"""Rounds for the pure detection tests: round i starts INTERVAL_S after round i-1, from T0,
and its steps are ok unless a code says otherwise (`round_`, `step_result`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from egresswatch.model import Reason, RoundResult, Status, Step, StepResult

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
INTERVAL_S = 30.0
CHECKLIST = (
    Step.DNS_CLUSTER,
    Step.DNS_UPSTREAM,
    Step.TCP_CONNECT,
    Step.TLS_HANDSHAKE,
    Step.HTTP_RESPONSE,
)


def at(i: float) -> datetime:
    """The start of round i (rounds every 30 s from T0)."""
    return T0 + timedelta(seconds=INTERVAL_S * i)


def index(when: datetime) -> float:
    return (when - T0).total_seconds() / INTERVAL_S


def step_result(step: Step, code: str, duration_s: float = 0.020) -> StepResult:
    """`.` ok, `-` skipped, `!` error, otherwise a Reason value: failed for that reason."""
    if code == ".":
        return StepResult(step, Status.OK, duration_s=duration_s)
    if code == "-":
        return StepResult(step, Status.SKIPPED, Reason.DEPENDENCY_FAILED)
    if code == "!":
        return StepResult(step, Status.ERROR, Reason.PROBE_ERROR)
    return StepResult(step, Status.FAIL, Reason(code), detail=f"{code} (round detail)")


def round_(
    i: float,
    source: str = "pod-a",
    target: str = "shop",
    *,
    ms: float = 20.0,
    codes: Mapping[str, str] | None = None,
    **more: str,
) -> RoundResult:
    """Round i of the checklist: every step ok (taking `ms`) unless `codes`/`more` (step id ->
    code, see `step_result`) say otherwise."""
    codes = {**(codes or {}), **more}
    steps = tuple(step_result(s, codes.get(s.value, "."), ms / 1000) for s in CHECKLIST)
    return RoundResult(target=target, source=source, started_at=at(i), steps=steps)


def dns_outage(
    i: float, source: str = "pod-a", target: str = "shop", *, no_address: bool = False
) -> RoundResult:
    """Cluster DNS answers NXDOMAIN; tcp_connect carries on with the last good IP, or with
    `no_address` there is none and the later steps are skipped."""
    later = dict.fromkeys(("tcp_connect", "tls_handshake", "http_response"), "-")
    return round_(i, source, target, codes=later if no_address else {}, dns_cluster="nxdomain")
