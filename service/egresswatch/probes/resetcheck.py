"""A reset right after the accept, told apart: an endpoint that resets whatever is sent, or a
peer that reacted to what was sent (docs/diagnosis.md, "A reset after the accept").

A round makes one connection (probes/handover.py), so tcp_connect hands its socket on without
the TCP-only grace read, and a reset right after the accept shows at the step that talks on it
next: `tls_handshake` (a reset after the ClientHello reads `firewall_denied`) or, for plain
HTTP, `http_response` (`conn_reset`). An SNI filter looks exactly so; so does a load balancer
with no healthy backend, which resets every connection whatever the client sends. Only after
such a failure, one more connection to the same address sends nothing and reads for the grace
(`tcp.idle_check`), as a TCP-only target's connect does:

- reset too: the endpoint resets whatever is sent. The round reads as the grace read would
  have made it: `tcp_connect` `conn_reset` (the rule `endpoint_resets`), the later steps
  skipped as blocked by it;
- stayed up: the peer reacted to what was sent (the ClientHello's name, the request): the
  failing step keeps its result (`tls_handshake` `firewall_denied`: an SNI filter);
- closed too (a FIN): the endpoint closes every connection; the failing step stays the
  endpoint's (a reset is `conn_reset` then, never a filter's `firewall_denied`);
- the second connect failed: nothing told apart; the failing step keeps its result.

Each says so in the evidence (`ResetCheck`, on the step that carries the failure) and in its
detail. The happy path never pays for it: the check runs only after such a failure.
"""

from __future__ import annotations

from dataclasses import replace

from egresswatch.evidence import HttpEvidence, ResetCheck, TcpEvidence, TlsEvidence
from egresswatch.model import Reason, Status, Step, StepResult, evidence_of
from egresswatch.probes.base import blocked_by, ms
from egresswatch.probes.handover import Cut
from egresswatch.probes.tcp import RESET_GRACE_S, idle_check

MIN_CONNECT_S = 0.05  # less than this left for the second connect: not worth starting it

Steps = tuple[StepResult, StepResult, StepResult]  # tcp_connect, tls_handshake, http_response


async def tell_apart(
    cut: Cut, steps: Steps, *, timeout_s: float, grace_s: float = RESET_GRACE_S
) -> Steps:
    """`steps` as they read once the cut is told apart (see the module); unchanged when
    tcp_connect did not connect or the budget (`timeout_s`, grace included) is too short.
    Never raises (but for cancellation)."""
    tcp = steps[0]
    used = evidence_of(tcp, TcpEvidence)
    connect_s = timeout_s - grace_s
    if used is None or used.address is None or used.port is None or connect_s < MIN_CONNECT_S:
        return steps
    idle = await idle_check(used.address, used.port, timeout_s=connect_s, grace_s=grace_s)
    check = ResetCheck(cut.step.value, cut.how, idle.outcome, ms(grace_s), idle.ms)
    if check.unprompted_reset:
        tcp = _endpoint_resets(tcp, used, check)
        return tcp, _blocked(steps[1], tcp), _blocked(steps[2], tcp)
    found = list(steps)
    index = 1 if cut.step is Step.TLS_HANDSHAKE else 2
    found[index] = _annotated(found[index], check)
    return found[0], found[1], found[2]


def _endpoint_resets(tcp: StepResult, used: TcpEvidence, check: ResetCheck) -> StepResult:
    """tcp_connect as its grace read would have said it: accepted, then reset."""
    attempts = [
        replace(a, outcome=Reason.CONN_RESET.value) if a.address == used.address else a
        for a in used.attempts
    ]
    evidence = replace(used, address=None, attempts=tuple(attempts), reset_check=check)
    where = f"[{used.address}]" if ":" in str(used.address) else used.address
    detail = (
        f"{where}:{used.port} accepted the connection, then reset it: {check.seen_at} met the "
        f"{check.seen}, and {_idle_words(check)}: the endpoint resets whatever is sent "
        f"(from {used.ip_source})"
    )
    return StepResult(
        Step.TCP_CONNECT, Status.FAIL, Reason.CONN_RESET, tcp.duration_s, detail, evidence
    )


def _blocked(result: StepResult, tcp: StepResult) -> StepResult:
    """A later step, now blocked by tcp_connect's failure (a step that does not apply stays)."""
    if result.status is Status.SKIPPED and result.reason is Reason.NOT_APPLICABLE:
        return result
    return blocked_by(result.step, tcp)


def _annotated(failing: StepResult, check: ResetCheck) -> StepResult:
    """The failing step with the check in its evidence and its detail; a reset is no filter's
    answer to what was sent when the endpoint closes every connection anyway."""
    reason = failing.reason
    if check.idle == "closed" and reason is Reason.FIREWALL_DENIED:
        reason = Reason.CONN_RESET
    evidence = failing.evidence
    if isinstance(evidence, TlsEvidence | HttpEvidence):
        evidence = replace(evidence, reset_check=check)
    detail = f"{failing.detail}; {_idle_words(check)}{_meaning(check)}"
    return replace(failing, reason=reason, detail=detail, evidence=evidence)


def _idle_words(check: ResetCheck) -> str:
    """What the second connection, that sent nothing, got."""
    grace = f"{check.grace_ms:.0f} ms"
    match check.idle:
        case "conn_reset":
            return f"a second connection that sent nothing was reset too, after {check.ms:.1f} ms"
        case "closed":
            return f"a second connection that sent nothing was closed too, after {check.ms:.1f} ms"
        case "ok":
            return f"a second connection that sent nothing stayed up for {grace}"
        case _:
            return f"a second connection to tell it apart failed ({check.idle})"


def _meaning(check: ResetCheck) -> str:
    match check.idle:
        case "ok":
            return ": the peer reacted to what was sent"
        case "closed":
            return ": the endpoint closes every connection"
        case _:
            return ""
