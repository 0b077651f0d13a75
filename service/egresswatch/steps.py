"""Each step of the checklist described once (DESIGN.md §1): its place, the manual form a
person types, the evidence type its probe writes, the next manual command, and the evidence
fields the diagnosis quotes.

Readers ask here instead of keeping their own tables: `report` for the numbers and the next
command, `storage` for the order, ingest and storage for the evidence type, the OpenAPI
document for its schema, the diagnosis for its facts. Every `Step` must be described, in
`Step`'s order: this module refuses to import otherwise, so a step added to the model without
a description fails every test at once instead of getting someone else's command.

A new probe step is its probe module, its line here (and its evidence type in evidence.py),
and its tests. Pure: imports only the model and the evidence types.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from egresswatch.evidence import (
    DnsEvidence,
    Evidence,
    EvidenceError,
    HttpEvidence,
    NotRun,
    TcpEvidence,
    TlsEvidence,
    TraceEvidence,
    json_schema,
)
from egresswatch.model import PROBE_STEPS, Endpoint, Scheme, Step

__all__ = [
    "STEPS",
    "Aim",
    "StepDescription",
    "checked",
    "describe",
    "evidence_from_json",
    "evidence_schemas",
    "stored_evidence",
]


@dataclass(frozen=True)
class Aim:
    """Where a manual command aims: `address` and `port` are where the round connected (or
    tried: the proxy, when one is used; the endpoint's port when None), `upstream` the resolver
    asked directly, `proxy` the proxy URL in use."""

    address: str | None = None
    port: int | None = None
    upstream: str | None = None
    proxy: str | None = None


Command = Callable[[Endpoint, Aim], str]


@dataclass(frozen=True)
class StepDescription:
    """One step: `number` is its place in the checklist (1-based), `manual` the form a person
    follows by hand, `evidence` the type its probe writes (None: derived by the controller
    from many results), `command` the next manual command when it fails (None: no command of
    its own), `facts` the evidence fields the diagnosis quotes in a verdict's facts."""

    step: Step
    number: int
    manual: str
    evidence: type[Evidence] | None
    command: Command | None
    facts: tuple[str, ...] = ()

    @property
    def probed(self) -> bool:
        """An agent's probe runs it (the others are derived by the controller)."""
        return self.evidence is not None


# --- the next manual commands ----------------------------------------------------------------


def _nslookup(endpoint: Endpoint, aim: Aim) -> str:
    return f"nslookup {endpoint.host}"


def _nslookup_upstream(endpoint: Endpoint, aim: Aim) -> str:
    """`nslookup host server`, with `-port=N` when the server is not on 53 (nslookup takes no
    host:port)."""
    host, upstream = endpoint.host, aim.upstream
    if upstream is None:
        return f"nslookup {host} UPSTREAM_DNS_IP"
    server, port = upstream, "53"
    if upstream.startswith("["):
        server, _, rest = upstream[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif upstream.count(":") == 1:
        server, port = upstream.split(":")
    return f"nslookup {host} {server}" if port == "53" else f"nslookup -port={port} {host} {server}"


def _nc(endpoint: Endpoint, aim: Aim) -> str:
    return f"nc -z -v -w 5 {aim.address or endpoint.host} {aim.port or endpoint.port}"


def _curl(endpoint: Endpoint, aim: Aim) -> str:
    if endpoint.scheme is Scheme.TCP:
        # no TLS or HTTP to show for a plain TCP target: the connect is what there is to see
        return _nc(endpoint, aim)
    proxy = f" --proxy {shlex.quote(aim.proxy)}" if aim.proxy else ""
    return f"curl -Iv{proxy} {shlex.quote(endpoint.url)}"


def _traceroute(endpoint: Endpoint, aim: Aim) -> str:
    return f"traceroute -T -p {aim.port or endpoint.port} {aim.address or endpoint.host}"


# --- the checklist ---------------------------------------------------------------------------

_DESCRIPTIONS = (
    StepDescription(
        Step.DNS_CLUSTER,
        1,
        "nslookup host, in the pod",
        DnsEvidence,
        _nslookup,
        ("resolver", "addresses"),
    ),
    StepDescription(
        Step.DNS_UPSTREAM,
        2,
        "nslookup host 168.63.129.16",
        DnsEvidence,
        _nslookup_upstream,
        ("resolver", "addresses"),
    ),
    StepDescription(
        Step.TCP_CONNECT,
        3,
        "nc -z -v host 443",
        TcpEvidence,
        _nc,
        ("address", "port", "ip_source", "reset_check"),
    ),
    StepDescription(
        Step.TLS_HANDSHAKE,
        4,
        "curl -Iv https://host",
        TlsEvidence,
        _curl,
        ("address", "server_name", "issuer", "subject", "verify_error", "reset_check"),
    ),
    StepDescription(
        Step.HTTP_RESPONSE,
        5,
        "curl -Iv https://host",
        HttpEvidence,
        _curl,
        ("url", "status", "proxy_status", "via_proxy", "server", "reset_check"),
    ),
    StepDescription(
        Step.PATH_TRACE,
        6,
        "traceroute -T -p 443 host",
        TraceEvidence,
        _traceroute,
        ("destination", "port", "last_hop", "reached"),
    ),
    StepDescription(Step.SOURCE_COMPARE, 7, "reach the endpoint from another source", None, None),
    StepDescription(Step.CONTROL_EXTERNAL, 8, "curl -Iv https://kubernetes.io", None, None),
    StepDescription(Step.NETWORK_POLICY, 9, "is a network policy blocking?", None, None),
    StepDescription(Step.EGRESS_DEVICE, 10, "is an NSG / firewall / proxy blocking?", None, None),
)


def checked(descriptions: tuple[StepDescription, ...]) -> Mapping[Step, StepDescription]:
    """The descriptions by step, after checking they describe the model's checklist exactly
    (RuntimeError saying what is wrong otherwise). Runs at import, on `_DESCRIPTIONS`."""
    described = [d.step for d in descriptions]
    if described != list(Step):
        missing = ", ".join(s.value for s in Step if s not in described) or "none"
        raise RuntimeError(f"steps.py must describe every Step in order; missing: {missing}")
    if [d.number for d in descriptions] != list(range(1, len(descriptions) + 1)):
        raise RuntimeError("steps.py: step numbers must count 1, 2, 3 ... in Step order")
    if tuple(d.step for d in descriptions if d.probed) != PROBE_STEPS:
        raise RuntimeError("steps.py: the steps with an evidence type must be model.PROBE_STEPS")
    for d in descriptions:
        known = {f.name for f in dataclasses.fields(d.evidence)} if d.evidence else set()
        if unknown := [name for name in d.facts if name not in known]:
            raise RuntimeError(f"steps.py: {d.step.value} facts {unknown} are not evidence fields")
        if d.probed and d.command is None:
            raise RuntimeError(f"steps.py: probe step {d.step.value} has no next command")
    return {d.step: d for d in descriptions}


STEPS: Mapping[Step, StepDescription] = checked(_DESCRIPTIONS)
_NOT_RUN_KEYS = frozenset(f.name for f in dataclasses.fields(NotRun))


def describe(step: Step) -> StepDescription:
    """The description of `step` (every Step has one: checked at import)."""
    return STEPS[step]


def evidence_from_json(step: Step, data: object, *, strict: bool = True) -> Evidence:
    """The evidence of a `step` result from its JSON object: `NotRun` when it holds only what
    stopped the step (or nothing), else the step's own type. Raises `EvidenceError` naming
    the field when it fits neither (strictly: any unknown key or wrong type)."""
    kind = STEPS[step].evidence
    if kind is None or (isinstance(data, Mapping) and _NOT_RUN_KEYS.issuperset(data)):
        return NotRun.from_json(data, strict=strict)
    return kind.from_json(data, strict=strict)


def stored_evidence(step: Step, data: object) -> Evidence:
    """Evidence as stored, read leniently (see evidence.py); never raises: what cannot be read
    at all is `NotRun()`, so one odd row never costs a diagnosis."""
    try:
        return evidence_from_json(step, data, strict=False)
    except EvidenceError:
        return NotRun()


def evidence_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each evidence type, by class name, and `Evidence`: any one of them.

    Which type belongs to which step is not said in the schema: ingest checks it, and a
    step's evidence may always be `NotRun` (what stopped it).
    """
    kinds: list[type[Evidence]] = [NotRun]
    for described in _DESCRIPTIONS:
        if described.evidence is not None and described.evidence not in kinds:
            kinds.append(described.evidence)
    schemas = {kind.__name__: json_schema(kind) for kind in kinds}
    schemas["Evidence"] = {
        "anyOf": [{"$ref": f"#/components/schemas/{name}"} for name in schemas],
        "description": "a step's evidence: its step's type (steps.py), or NotRun",
    }
    return schemas
