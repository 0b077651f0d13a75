"""Each step described once (steps.py) and each step's evidence type (evidence.py): complete,
a JSON round trip for every type, strict at ingest, lenient for stored rows, and the JSON
shape the probes wrote before the types existed (stored rows, no migration) read unchanged.

What the real probes write is checked against the same decoding in the probe tests
(tests/support/evidence.py: `assert_round_trips`), on real servers on loopback.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest

from egresswatch.evidence import (
    DnsEvidence,
    DnsTry,
    Evidence,
    EvidenceError,
    HttpEvidence,
    NotRun,
    Record,
    ResetCheck,
    TcpAttempt,
    TcpEvidence,
    TlsEvidence,
    TraceEvidence,
    TraceHop,
)
from egresswatch.model import (
    PROBE_STEPS,
    Endpoint,
    Reason,
    Status,
    Step,
    StepResult,
    first_failing_step,
)
from egresswatch.report import next_command
from egresswatch.steps import (
    STEPS,
    StepDescription,
    checked,
    describe,
    evidence_from_json,
    evidence_schemas,
    stored_evidence,
)

WEB = Endpoint.parse("https://shop.example.test:8443/health")

# One of each type with every field away from its default, so a field the codec drops shows.
EXAMPLES: dict[type[Record], Record] = {
    NotRun: NotRun("tcp_connect", "KeyError", "/etc/ca.pem", "/etc/resolv.conf"),
    DnsTry: DnsTry("x.test.", "AAAA", "10.0.0.10:53", "SERVFAIL", 1.5, "tcp", True, "EOF"),
    DnsEvidence: DnsEvidence(
        "10.0.0.10:53",
        ("x.default.svc.cluster.local.", "x.test."),
        (DnsTry("x.test.", "A", "10.0.0.10:53", "NOERROR", 0.7),),
        ("203.0.113.7", "2001:db8::7"),
        "x.test.",
        ("edge.cdn.test.",),
    ),
    TcpAttempt: TcpAttempt("203.0.113.7", "firewall_denied", 0.3, "10.1.0.4"),
    TcpEvidence: TcpEvidence(
        "203.0.113.8",
        443,
        "pinned",
        (TcpAttempt("203.0.113.7", "conn_timeout", 2500.0), TcpAttempt("203.0.113.8", "ok")),
        ("203.0.113.9",),
        "dns_upstream",
        (TcpAttempt("203.0.113.10", "ok", 1.5),),
        ResetCheck("tls_handshake", "reset", "conn_reset", 150.0, 0.6),
    ),
    TlsEvidence: TlsEvidence(
        "203.0.113.7",
        443,
        "x.test",
        "proxy 10.1.1.1:3128 (config)",
        "TLSv1.3",
        "TLS_AES_256_GCM_SHA384",
        "O=Corp Proxy CA",
        "CN=x.test",
        "2027-01-01T00:00:00Z",
        -3,
        "certificate has expired",
        0.4,
        1.2,
        3.1,
        407,
        ResetCheck("tls_handshake", "reset", "ok", 150.0, 151.0),
    ),
    HttpEvidence: HttpEvidence(
        "https://x.test/",
        "203.0.113.7",
        "proxy 10.1.1.1:3128 (config)",
        "200-399",
        503,
        200,
        "nginx",
        "/elsewhere",
        0.4,
        1.2,
        3.1,
        12.5,
        17.0,
        ResetCheck("http_response", "closed", "closed", 150.0, 10.5),
    ),
    ResetCheck: ResetCheck("http_response", "closed", "conn_refused", 150.0, 0.2),
    TraceHop: TraceHop(3, "10.1.0.4", 0.9, "unreachable", True),
    TraceEvidence: TraceEvidence(
        "203.0.113.7",
        443,
        (TraceHop(1, "10.224.0.1", 0.2, "time_exceeded"), TraceHop(2)),
        "10.224.0.1",
        True,
        "silent",
    ),
}


# --- the descriptions --------------------------------------------------------------------------


def test_every_step_is_described_in_checklist_order() -> None:
    assert list(STEPS) == list(Step)
    assert [describe(step).number for step in Step] == list(range(1, len(Step) + 1))


def test_every_probe_step_has_an_evidence_type_and_a_next_command() -> None:
    for step in PROBE_STEPS:
        described = describe(step)
        assert described.probed and described.evidence is not None, step
        assert issubclass(described.evidence, Evidence) and described.evidence in EXAMPLES
        assert described.command is not None
        command = next_command(step, WEB, address="203.0.113.7", upstream="168.63.129.16")
        assert command is not None and command.split()[0] in {
            "nslookup",
            "nc",
            "curl",
            "traceroute",
        }


def test_derived_steps_have_no_evidence_type_and_no_command_of_their_own() -> None:
    for step in set(Step) - set(PROBE_STEPS):
        assert not describe(step).probed and describe(step).command is None
        assert next_command(step, WEB) is None


def test_a_step_left_undescribed_fails_at_import() -> None:
    """`checked` runs when steps.py is imported: a new Step without a line there fails at once."""
    described = tuple(STEPS.values())
    with pytest.raises(RuntimeError, match="missing: path_trace"):
        checked(tuple(d for d in described if d.step is not Step.PATH_TRACE))
    renumbered = (dataclasses.replace(described[0], number=7), *described[1:])
    with pytest.raises(RuntimeError, match="numbers"):
        checked(renumbered)
    wrong_fact = dataclasses.replace(described[2], facts=("nope",))
    with pytest.raises(RuntimeError, match="nope"):
        checked((*described[:2], wrong_fact, *described[3:]))


def test_facts_name_evidence_fields() -> None:
    for described in STEPS.values():
        fields = {f.name for f in dataclasses.fields(described.evidence or NotRun)}
        assert set(described.facts) <= fields, described.step


# --- the JSON round trip -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EXAMPLES), ids=lambda kind: kind.__name__)
def test_round_trip(kind: type[Record]) -> None:
    example = EXAMPLES[kind]
    for field in dataclasses.fields(example):
        assert getattr(example, field.name) != field.default, f"{field.name} is its default"
    required = (DnsTry, TcpAttempt, TraceHop, ResetCheck)  # records with required fields
    for value in (example, *([kind()] if kind not in required else [])):
        data = json.loads(json.dumps(value.to_json(), allow_nan=False))
        assert kind.from_json(data) == value
        assert kind.from_json(data, strict=False) == value


@pytest.mark.parametrize("step", PROBE_STEPS, ids=str)
def test_steps_round_trip_through_ingest_decoding(step: Step) -> None:
    kind = describe(step).evidence
    assert kind is not None
    for value in (EXAMPLES[kind], NotRun(), NotRun(blocked_by="tcp_connect")):
        assert isinstance(value, Evidence)
        assert evidence_from_json(step, json.loads(json.dumps(value.to_json()))) == value


def test_not_run_is_an_empty_object() -> None:
    assert NotRun().to_json() == {}
    assert NotRun(exception="KeyError").to_json() == {"exception": "KeyError"}


# --- strict, at ingest -------------------------------------------------------------------------

STRICT_REFUSALS: list[tuple[Step, Any, str, str]] = [
    (Step.DNS_CLUSTER, {"answers": []}, "answers", "unknown key"),
    (Step.DNS_CLUSTER, {"resolver": 53}, "resolver", "expected a string"),
    (Step.DNS_CLUSTER, {"addresses": "1.2.3.4"}, "addresses", "expected an array"),
    (Step.DNS_CLUSTER, {"addresses": ["1.2.3.4", None]}, "addresses[1]", "expected a string"),
    (Step.DNS_UPSTREAM, {"tried": [{"name": "x."}]}, "tried[0].type", "missing"),
    (Step.DNS_UPSTREAM, {"tried": [7]}, "tried[0]", "expected an object"),
    (Step.TCP_CONNECT, {"port": "443"}, "port", "expected an integer"),
    (Step.TCP_CONNECT, {"port": True}, "port", "expected an integer"),
    (Step.TCP_CONNECT, {"port": 443.0}, "port", "expected an integer"),
    (
        Step.TCP_CONNECT,
        {"attempts": [{"address": "a", "outcome": "ok", "ms": "1"}]},
        "attempts[0].ms",
        "expected a number",
    ),
    (
        Step.TCP_CONNECT,
        {"attempts": [{"address": "a", "outcome": "ok", "ms": math.inf}]},
        "attempts[0].ms",
        "finite",
    ),
    (Step.TLS_HANDSHAKE, {"days_left": None, "cert": "x"}, "cert", "unknown key"),
    (Step.HTTP_RESPONSE, {"resolver": "10.0.0.10"}, "resolver", "unknown key"),  # another's
    (Step.PATH_TRACE, {"reached": "yes"}, "reached", "expected true or false"),
    (Step.PATH_TRACE, {"hops": [{"ttl": 1, "rtt_s": 0.1}]}, "hops[0].rtt_s", "unknown key"),
    (Step.PATH_TRACE, {"blocked_by": 7}, "blocked_by", "expected a string"),
    (Step.PATH_TRACE, [], "", "expected an object"),
    (Step.SOURCE_COMPARE, {"address": "x"}, "address", "unknown key"),  # derived: NotRun only
]


@pytest.mark.parametrize(
    ("step", "data", "field", "problem"),
    STRICT_REFUSALS,
    ids=[r[2] or "top" for r in STRICT_REFUSALS],
)
def test_strict_decoding_names_the_field(step: Step, data: Any, field: str, problem: str) -> None:
    with pytest.raises(EvidenceError) as caught:
        evidence_from_json(step, data)
    assert (caught.value.field, problem in caught.value.problem) == (field, True), caught.value


# --- lenient, from storage ---------------------------------------------------------------------


def test_lenient_decoding_keeps_what_it_can() -> None:
    stored = {
        "address": 7,  # wrong type: the default
        "port": 443,
        "attempts": [{"address": "a", "outcome": "ok", "ms": "x"}, {"outcome": "ok"}, None],
        "written_by_a_newer_version": True,  # ignored
    }
    assert stored_evidence(Step.TCP_CONNECT, stored) == TcpEvidence(
        port=443, attempts=(TcpAttempt("a", "ok"),)
    )


@pytest.mark.parametrize("data", [None, [], "x", 5, {"tried": [{"name": 5}]}, {"hops": {}}])
def test_stored_evidence_never_raises(data: Any) -> None:
    for step in Step:
        assert isinstance(stored_evidence(step, data), Evidence)


# --- the JSON shape stored before the types (no migration) ---------------------------------------

# Literally what probes/*.py wrote as dicts before evidence.py existed.
OLD_ROWS: list[tuple[Step, dict[str, Any]]] = [
    (
        Step.DNS_CLUSTER,
        {
            "resolver": "10.0.0.10:53",
            "candidates": ["x.default.svc.cluster.local.", "x."],
            "tried": [
                {"name": "x.", "type": "A", "server": "10.0.0.10:53", "rcode": "NOERROR",
                 "ms": 0.8, "proto": "udp", "truncated": True},
                {"name": "x.", "type": "A", "server": "10.0.0.10:53", "rcode": "NOERROR",
                 "ms": 1.1, "proto": "tcp"},
                {"name": "x.", "type": "AAAA", "server": "10.0.0.11:53", "rcode": "CONN_REFUSED",
                 "ms": 0.1, "proto": "udp", "error": "Connection refused"},
            ],
            "addresses": ["203.0.113.7"],
            "name": "x.",
            "cname": [],
        },
    ),
    (
        Step.TCP_CONNECT,
        {
            "address": None,
            "port": 443,
            "ip_source": "dns_cluster",
            "attempts": [
                {"address": "203.0.113.7", "outcome": "conn_timeout", "ms": 5000.2,
                 "icmp_from": None}
            ],
            "untried": [],
        },
    ),
    (
        Step.TLS_HANDSHAKE,
        {
            "address": "x.test", "port": 443, "server_name": "x.test",
            "via_proxy": "proxy 10.1.1.1:3128 (config)", "version": None, "cipher": None,
            "issuer": None, "subject": None, "not_after": None, "days_left": None,
            "verify_error": None, "tcp_ms": 0.3, "proxy_connect_ms": 1.0, "tls_ms": None,
            "proxy_status": 407,
        },
    ),
    (
        Step.HTTP_RESPONSE,
        {
            "url": "https://x.test/", "address": "203.0.113.7", "via_proxy": None,
            "expected": "200-399", "status": 200, "proxy_status": None, "server": "nginx",
            "location": None, "connect_ms": 0.4, "proxy_connect_ms": None, "tls_ms": 3.0,
            "ttfb_ms": 10.0, "total_ms": 14.0,
        },
    ),
    (
        Step.PATH_TRACE,
        {
            "destination": "203.0.113.7", "port": 443,
            "hops": [{"ttl": 1, "address": "10.224.0.1", "rtt_ms": 0.2, "icmp": "time_exceeded",
                      "reached": False}],
            "last_hop": "10.224.0.1", "reached": False, "stopped": "silent",
        },
    ),
    (Step.HTTP_RESPONSE, {"blocked_by": "tls_handshake"}),
    (Step.PATH_TRACE, {"exception": "ZeroDivisionError"}),
    (Step.TLS_HANDSHAKE, {"ca_file": "/etc/ca.pem"}),
    (Step.DNS_CLUSTER, {"resolv_conf": "/etc/resolv.conf"}),
    (Step.DNS_UPSTREAM, {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("step", "row"), OLD_ROWS, ids=[f"{s}-{i}" for i, (s, _) in enumerate(OLD_ROWS)]
)
def test_rows_stored_before_the_types_read_and_write_back_the_same(
    step: Step, row: dict[str, Any]
) -> None:
    evidence = evidence_from_json(step, row)
    assert evidence == stored_evidence(step, row)
    assert evidence.to_json() == row  # same keys, same order, same values
    assert list(evidence.to_json()) == list(row)


# --- the OpenAPI schemas -------------------------------------------------------------------------


def test_schemas_are_generated_from_the_types() -> None:
    schemas = evidence_schemas()
    kinds = {d.evidence for d in STEPS.values() if d.evidence} | {NotRun}
    assert set(schemas) == {kind.__name__ for kind in kinds} | {"Evidence"}
    for kind in kinds:
        schema = schemas[kind.__name__]
        assert schema["additionalProperties"] is False
        assert list(schema["properties"]) == [f.name for f in dataclasses.fields(kind)]
    tcp = schemas["TcpEvidence"]["properties"]
    assert tcp["port"] == {"type": ["integer", "null"], "minimum": -(2**63), "maximum": 2**63 - 1}
    assert tcp["attempts"]["items"]["required"] == ["address", "outcome"]
    assert len(schemas["Evidence"]["anyOf"]) == len(kinds)


def test_descriptions_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        describe(Step.DNS_CLUSTER).number = 3  # type: ignore[misc]
    assert isinstance(describe(Step.TCP_CONNECT), StepDescription)


@pytest.mark.parametrize(
    ("failing", "first"),
    [
        ((), None),
        ((Step.PATH_TRACE,), Step.PATH_TRACE),
        ((Step.PATH_TRACE, Step.TCP_CONNECT, Step.DNS_UPSTREAM), Step.DNS_UPSTREAM),
        ((Step.HTTP_RESPONSE, Step.DNS_CLUSTER), Step.DNS_CLUSTER),
    ],
)
def test_the_first_failing_step_is_first_in_table_order(
    failing: tuple[Step, ...], first: Step | None
) -> None:
    """Whatever order the steps come in, and whatever else did not fail."""
    steps = [StepResult(step, Status.FAIL, Reason.TIMEOUT) for step in failing]
    steps += [
        StepResult(Step.TLS_HANDSHAKE, Status.OK),
        StepResult(Step.SOURCE_COMPARE, Status.SKIPPED),
    ]
    assert first_failing_step(steps) is first
    assert first_failing_step(list(reversed(steps))) is first
