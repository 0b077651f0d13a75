"""A reset right after the accept, told apart (probes/resetcheck.py): with one connection per
round, tcp_connect's grace read is skipped, so the step that talks next meets the reset; one
more connection that sends nothing then says whether the endpoint resets whatever is sent
(tcp_connect conn_reset, the verdict endpoint_resets) or the peer reacted to what was sent (an
SNI filter: tls_handshake firewall_denied). Real servers on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from egresswatch.evidence import HttpEvidence, NotRun, ResetCheck, TcpEvidence, TlsEvidence
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
    scheme: str, server: LocalServer, pki: Pki, tmp_path: Path
) -> dict[Step, StepResult]:
    found: RoundResult = await run_checklist(plan(scheme, server, pki, tmp_path), source="s")
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
    steps = await round_against(scheme, server, pki, tmp_path)
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


async def test_a_reset_after_the_client_hello_stays_a_firewalls(
    local_servers: LocalServers, pki: Pki, tmp_path: Path
) -> None:
    """An SNI filter resets only once it read the ClientHello: the connection that sent
    nothing stays up, so tls_handshake keeps firewall_denied and says how it was told."""
    server = await local_servers.reset_after_hello()
    steps = await round_against("https", server, pki, tmp_path)
    assert steps[Step.TCP_CONNECT].status is Status.OK
    tls = steps[Step.TLS_HANDSHAKE]
    assert (tls.status, tls.reason) == (Status.FAIL, Reason.FIREWALL_DENIED), tls.detail
    check = typed(tls, TlsEvidence).reset_check
    assert check == ResetCheck("tls_handshake", "reset", "ok", 150.0, check.ms if check else 0)
    assert "stayed up for 150 ms: the peer reacted to what was sent" in tls.detail
    assert server.connections == 2


async def test_a_reset_after_the_request_stays_the_exchanges(
    local_servers: LocalServers, pki: Pki, tmp_path: Path
) -> None:
    server = await local_servers.reset_after_hello()
    steps = await round_against("http", server, pki, tmp_path)
    http = steps[Step.HTTP_RESPONSE]
    assert (http.status, http.reason) == (Status.FAIL, Reason.CONN_RESET), http.detail
    check = typed(http, HttpEvidence).reset_check
    assert check is not None and (check.seen_at, check.idle) == ("http_response", "ok")


async def test_an_endpoint_that_closes_every_connection_stays_the_endpoints(
    local_servers: LocalServers, pki: Pki, tmp_path: Path
) -> None:
    """A FIN is not a reset: tls_handshake keeps tls_handshake_failed (the endpoint's), and
    the evidence says a connection that sent nothing was closed too."""
    server = await local_servers.close_unprompted()
    steps = await round_against("https", server, pki, tmp_path)
    assert steps[Step.TCP_CONNECT].status is Status.OK
    tls = steps[Step.TLS_HANDSHAKE]
    assert (tls.status, tls.reason) == (Status.FAIL, Reason.TLS_HANDSHAKE_FAILED), tls.detail
    check = typed(tls, TlsEvidence).reset_check
    assert check is not None and (check.seen, check.idle) == ("closed", "closed")
    assert "the endpoint closes every connection" in tls.detail


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
