"""A round as a person following the manual checklist reads it, as text or as JSON.

Also the next manual command for a failing step: what an engineer types to see the failure
with their own eyes (nslookup, nc, curl, traceroute), pure and reused by the diagnosis.
"""

from __future__ import annotations

import shlex
from typing import Any

from egresswatch.model import Endpoint, RoundResult, Scheme, Status, Step, StepResult

_ORDER = {step: index for index, step in enumerate(Step, start=1)}


def next_command(
    step: Step | None,
    endpoint: Endpoint,
    *,
    upstream: str | None = None,
    address: str | None = None,
    port: int | None = None,
    proxy: str | None = None,
) -> str | None:
    """The manual command that shows `step` failing for `endpoint`, or None when all is ok.

    `address` and `port` are where the round connected to (or tried: the proxy, when one is
    used), `upstream` the resolver asked directly, `proxy` the proxy URL in use.
    """
    host = endpoint.host
    port = port or endpoint.port
    ip = address or host
    curl_proxy = f" --proxy {shlex.quote(proxy)}" if proxy else ""
    match step:
        case None:
            return None
        case Step.DNS_CLUSTER:
            return f"nslookup {host}"
        case Step.DNS_UPSTREAM:
            return _nslookup(host, upstream)
        case Step.TCP_CONNECT:
            return f"nc -z -v -w 5 {ip} {port}"
        case Step.TLS_HANDSHAKE | Step.HTTP_RESPONSE if endpoint.scheme is not Scheme.TCP:
            return f"curl -Iv{curl_proxy} {shlex.quote(endpoint.url)}"
        case _:
            return f"traceroute -T -p {port} {ip}"


def _nslookup(host: str, upstream: str | None) -> str:
    """`nslookup host server`, with `-port=N` when the server is not on 53 (nslookup takes no
    host:port)."""
    if upstream is None:
        return f"nslookup {host} UPSTREAM_DNS_IP"
    server, port = upstream, "53"
    if upstream.startswith("["):
        server, _, rest = upstream[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif upstream.count(":") == 1:
        server, port = upstream.split(":")
    return f"nslookup {host} {server}" if port == "53" else f"nslookup -port={port} {host} {server}"


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
        "evidence": dict(step.evidence),
    }


def render_text(document: dict[str, Any]) -> str:
    """The document as lines a person reads: one per step, then the verdict and next command."""
    lines = [
        f"checklist for {document['url']} from {document['source']} at {document['started_at']}"
    ]
    for step in document["steps"]:
        number = _ORDER[Step(step["step"])]
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
    tcp = result.step(Step.TCP_CONNECT)
    port = tcp.evidence.get("port") if tcp is not None else None
    return port if isinstance(port, int) else None


def _address(result: RoundResult) -> str | None:
    tcp = result.step(Step.TCP_CONNECT)
    if tcp is None:
        return None
    address = tcp.evidence.get("address")
    if isinstance(address, str):
        return address
    attempts = tcp.evidence.get("attempts")
    if isinstance(attempts, list) and attempts and isinstance(attempts[0], dict):
        first = attempts[0].get("address")
        return first if isinstance(first, str) else None
    return None
