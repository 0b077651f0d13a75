"""A round as a person following the manual checklist reads it, as text or as JSON.

Also the next manual command for a failing step: what an engineer types to see the failure
with their own eyes (nslookup, nc, curl, traceroute; steps.py builds each), pure and reused by
the diagnosis.
"""

from __future__ import annotations

from typing import Any

from egresswatch.evidence import TcpEvidence
from egresswatch.model import Endpoint, RoundResult, Status, Step, StepResult, evidence_of
from egresswatch.steps import Aim, describe


def next_command(
    step: Step | None,
    endpoint: Endpoint,
    *,
    upstream: str | None = None,
    address: str | None = None,
    port: int | None = None,
    proxy: str | None = None,
) -> str | None:
    """The manual command that shows `step` failing for `endpoint` (steps.py builds it), or
    None when all is ok or the step has no command of its own (a derived step).

    `address` and `port` are where the round connected to (or tried: the proxy, when one is
    used), `upstream` the resolver asked directly, `proxy` the proxy URL in use.
    """
    if step is None:
        return None
    command = describe(step).command
    if command is None:
        return None
    return command(endpoint, Aim(address=address, port=port, upstream=upstream, proxy=proxy))


def round_document(
    result: RoundResult,
    endpoint: Endpoint,
    *,
    upstream: str | None = None,
    proxy: str | None = None,
) -> dict[str, Any]:
    """The round as one JSON-able document (`egresswatch check --json`)."""
    first = result.first_failing_step
    return {
        "target": result.target,
        "url": endpoint.url,
        "source": result.source,
        "started_at": result.started_at.isoformat().replace("+00:00", "Z"),
        "ok": first is None and not _broken(result),
        "first_failing_step": first.value if first else None,
        "first_failing_reason": _reason(result, first),
        "next_command": next_command(
            first,
            endpoint,
            upstream=upstream,
            address=_address(result),
            port=_port(result),
            proxy=proxy,
        ),
        "steps": [step_document(step) for step in result.steps],
    }


def step_document(step: StepResult) -> dict[str, Any]:
    return {
        "step": step.step.value,
        "status": step.status.value,
        "reason": step.reason.value if step.reason else None,
        "duration_ms": round(step.duration_s * 1000.0, 3),
        "detail": step.detail,
        "evidence": step.evidence.to_json(),
    }


def render_text(document: dict[str, Any]) -> str:
    """The document as lines a person reads: one per step, then the verdict and next command."""
    lines = [
        f"checklist for {document['url']} from {document['source']} at {document['started_at']}"
    ]
    for step in document["steps"]:
        number = describe(Step(step["step"])).number
        detail = step["detail"]
        if step["reason"] and step["status"] != Status.OK.value:
            detail = f"{step['reason']}: {detail}" if detail else step["reason"]
        lines.append(f"{number:>2}  {step['step']:<14} {step['status']:<8} {detail}")
    first = document["first_failing_step"]
    if first:
        lines.append(f"first failing step: {first} ({document['first_failing_reason']})")
        lines.append(f"next: {document['next_command']}")
    elif document["ok"]:
        lines.append("all steps ok")
    else:
        lines.append("no step failed, but a probe broke (status error): see above")
    return "\n".join(lines)


def _broken(result: RoundResult) -> bool:
    return any(step.status is Status.ERROR for step in result.steps)


def _reason(result: RoundResult, step: Step | None) -> str | None:
    found = result.step(step) if step else None
    return found.reason.value if found and found.reason else None


def _port(result: RoundResult) -> int | None:
    tcp = evidence_of(result.step(Step.TCP_CONNECT), TcpEvidence)
    return tcp.port if tcp is not None else None


def _address(result: RoundResult) -> str | None:
    tcp = evidence_of(result.step(Step.TCP_CONNECT), TcpEvidence)
    return tcp.aimed_at if tcp is not None else None
