"""A reset right after the accept, told apart (probes/resetcheck.py): with one connection per
round, tcp_connect's grace read is skipped, so the step that talks next meets the reset; one
more connection that sends nothing then says whether the endpoint resets whatever is sent
(tcp_connect conn_reset, the verdict endpoint_resets) or the peer reacted to what was sent (an
SNI filter: tls_handshake firewall_denied). Real servers on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from egresswatch.evidence import HttpEvidence, NotRun, TcpEvidence, TlsEvidence
from egresswatch.model import Endpoint, Reason, RoundResult, Status, Step, StepResult
from egresswatch.probes.checklist import ChecklistPlan, TraceMode, run_checklist
from egresswatch.probes.tls import TlsContexts, TlsOptions
from tests.support.evidence import assert_round_trips, typed
from tests.support.https import HOST, LocalServer, LocalServers, Pki, local_servers, pki

__all__ = ["local_servers", "pki"]  # fixtures, imported explicitly


def plan(scheme: str, server: LocalServer, pki: Pki, tmp_path: Path) -> ChecklistPlan:
    return ChecklistPlan(
        target="shop",
        endpoint=Endpoint.parse(f"{scheme}://{HOST}:{server.port}/"),
        resolv_conf=tmp_path / "unused-resolv.conf",  # an IP literal: DNS is not asked
        step_timeout_s=2.0,
        tls=TlsOptions(ca_file=pki.ca_file, contexts=TlsContexts()),
        trace=TraceMode.NEVER,
    )


async def round_against(
    scheme: str, server: LocalServer, pki: Pki, tmp_path: Path, known: dict[str, str] | None = None
) -> dict[Step, StepResult]:
    found: RoundResult = await run_checklist(
        plan(scheme, server, pki, tmp_path), source="s", known_good=known
    )
    return {s.step: s for s in found.steps}


@pytest.mark.parametrize(
    ("scheme", "seen_at"), [("https", "tls_handshake"), ("http", "http_response")]
)
async def test_an_endpoint_that_resets_whatever_is_sent_fails_tcp_connect(
    local_servers: LocalServers, pki: Pki, tmp_path: Path, scheme: str, seen_at: str
) -> None:
    """A load balancer with no healthy backend: the round's connection is reset at the next
    step, and so is a second connection that sent nothing: tcp_connect conn_reset, as the
    TCP-only grace read says it, and the later steps blocked by it."""
    server = await local_servers.reset_unprompted()
    known: dict[str, str] = {}
    steps = await round_against(scheme, server, pki, tmp_path, known)
    tcp = steps[Step.TCP_CONNECT]
    assert (tcp.status, tcp.reason) == (Status.FAIL, Reason.CONN_RESET), tcp.detail
    evidence = typed(tcp, TcpEvidence)
    assert evidence.address is None and [a.outcome for a in evidence.attempts] == ["conn_reset"]
    check = evidence.reset_check
    assert check is not None and check.unprompted_reset
    assert (check.seen_at, check.seen, check.idle) == (seen_at, "reset", "conn_reset")
    assert "the endpoint resets whatever is sent" in tcp.detail
    assert_round_trips(tcp)  # ingest's strict decoding takes the check back unchanged
    for later in (Step.TLS_HANDSHAKE, Step.HTTP_RESPONSE):
        if scheme == "http" and later is Step.TLS_HANDSHAKE:
            assert steps[later].reason is Reason.NOT_APPLICABLE
            continue
        assert (steps[later].status, steps[later].reason) == (
            Status.SKIPPED,
            Reason.DEPENDENCY_FAILED,
        )
        assert typed(steps[later], NotRun).blocked_by == "tcp_connect"
    assert server.connections == 2  # the round's, and the one that sent nothing
    assert known == {}  # an address that resets whatever is sent is no last good one


@pytest.mark.parametrize(
    ("server_kind", "reason", "seen", "idle", "says"),
    [
        # An SNI filter resets only once it read the ClientHello: the connection that sent
        # nothing stays up, so tls_handshake keeps firewall_denied.
        (
            "reset_after_hello",
            Reason.FIREWALL_DENIED,
            "reset",
            "ok",
            "stayed up for 150 ms: the peer reacted to what was sent",
        ),
        # A FIN is not a reset: tls_handshake keeps tls_handshake_failed (the endpoint's).
        (
            "close_unprompted",
            Reason.TLS_HANDSHAKE_FAILED,
            "closed",
            "closed",
            "was closed too, after",
        ),
    ],
)
async def test_a_tls_handshake_cut_by_what_was_sent_or_by_a_close_keeps_its_step(
    local_servers: LocalServers,
    pki: Pki,
    tmp_path: Path,
    server_kind: str,
    reason: Reason,
    seen: str,
    idle: str,
    says: str,
) -> None:
    """tcp_connect stays ok; tls_handshake keeps its reason and says how it was told apart."""
    server = await getattr(local_servers, server_kind)()
    steps = await round_against("https", server, pki, tmp_path)
    assert steps[Step.TCP_CONNECT].status is Status.OK
    tls = steps[Step.TLS_HANDSHAKE]
    assert (tls.status, tls.reason) == (Status.FAIL, reason), tls.detail
    check = typed(tls, TlsEvidence).reset_check
    assert check is not None and (check.seen_at, check.seen, check.idle, check.grace_ms) == (
        "tls_handshake",
        seen,
        idle,
        150.0,
    )
    assert says in tls.detail
    assert server.connections == 2  # the round's, and the one that sent nothing


async def test_a_reset_after_the_request_stays_the_exchanges(
    local_servers: LocalServers, pki: Pki, tmp_path: Path
) -> None:
    server = await local_servers.reset_after_hello()
    steps = await round_against("http", server, pki, tmp_path)
    http = steps[Step.HTTP_RESPONSE]
    assert (http.status, http.reason) == (Status.FAIL, Reason.CONN_RESET), http.detail
    check = typed(http, HttpEvidence).reset_check
    assert check is not None and (check.seen_at, check.idle) == ("http_response", "ok")


async def test_a_good_round_makes_no_second_connection(
    local_servers: LocalServers, pki: Pki, tmp_path: Path
) -> None:
    server = await local_servers.https()
    steps = await round_against("https", server, pki, tmp_path)
    assert all(s.status is not Status.FAIL for s in steps.values())
    assert typed(steps[Step.TLS_HANDSHAKE], TlsEvidence).reset_check is None
    assert server.connections == 1


async def test_a_tls_failure_of_another_kind_makes_no_second_connection(
    local_servers: LocalServers, pki: Pki, tmp_path: Path
) -> None:
    """Only a reset or a close right after the connect is told apart, not a certificate."""
    server = await local_servers.https(cert="expired")
    steps = await round_against("https", server, pki, tmp_path)
    assert steps[Step.TLS_HANDSHAKE].reason is Reason.TLS_EXPIRED
    assert typed(steps[Step.TLS_HANDSHAKE], TlsEvidence).reset_check is None
