"""One connection per round (issue 14): a direct HTTP(S) target's tcp_connect, tls_handshake
and http_response share one connection, each phase timed apart, as curl does; a reset right
after the accept is then judged by the step that sees it."""

from __future__ import annotations

from pathlib import Path

from egresswatch.evidence import HttpEvidence, TlsEvidence
from egresswatch.model import Endpoint, Reason, RoundResult, Status, Step, StepResult
from egresswatch.probes.checklist import ChecklistPlan, TraceMode, run_checklist
from egresswatch.probes.tls import TlsContexts, TlsOptions
from tests.support import tcpservers
from tests.support.evidence import typed
from tests.support.https import HOST, LocalServers, Pki, local_servers, pki
from tests.support.tcpservers import TcpServer

__all__ = ["local_servers", "pki"]  # fixtures, imported explicitly
reset_server = tcpservers.reset_server


def plan(url: str, pki: Pki, tmp_path: Path) -> ChecklistPlan:
    return ChecklistPlan(
        target="shop",
        endpoint=Endpoint.parse(url),
        resolv_conf=tmp_path / "unused-resolv.conf",  # IP literals: DNS is not asked
        step_timeout_s=2.0,
        tls=TlsOptions(ca_file=pki.ca_file, contexts=TlsContexts()),
        trace=TraceMode.NEVER,
    )


def step(round_: RoundResult, which: Step) -> StepResult:
    return next(s for s in round_.steps if s.step is which)


async def test_an_https_round_makes_one_connection(
    local_servers: LocalServers, pki: Pki, tmp_path: Path
) -> None:
    server = await local_servers.https()
    round_ = await run_checklist(plan(f"https://{HOST}:{server.port}/", pki, tmp_path), source="s")
    assert round_.first_failing_step is None
    assert server.connections == 1  # was 2 handshakes (3 connections with tcp_connect's)
    assert len(server.requests) == 1
    tls = typed(step(round_, Step.TLS_HANDSHAKE), TlsEvidence)
    http_step = step(round_, Step.HTTP_RESPONSE)
    http = typed(http_step, HttpEvidence)
    # Each phase timed apart, like curl's time_connect, time_appconnect, time_starttransfer;
    # the earlier steps' phases are the same connection's.
    assert http.connect_ms is not None and http.tls_ms is not None and http.ttfb_ms is not None
    assert (http.connect_ms, http.tls_ms) == (tls.tcp_ms, tls.tls_ms)
    assert http.total_ms is not None and http.total_ms >= http.tls_ms + http.ttfb_ms
    assert http_step.duration_s >= step(round_, Step.TLS_HANDSHAKE).duration_s


async def test_an_http_round_makes_one_connection(
    local_servers: LocalServers, pki: Pki, tmp_path: Path
) -> None:
    server = await local_servers.http()
    round_ = await run_checklist(plan(f"http://{HOST}:{server.port}/", pki, tmp_path), source="s")
    assert round_.first_failing_step is None
    assert server.connections == 1  # was 2: tcp_connect's and http_response's
    http = typed(step(round_, Step.HTTP_RESPONSE), HttpEvidence)
    assert http.connect_ms is not None and http.tls_ms is None and http.ttfb_ms is not None


async def test_a_reset_after_the_accept_is_never_lost(
    reset_server: TcpServer, pki: Pki, tmp_path: Path
) -> None:
    """A listener that accepts and resets at once: without the grace read the TLS handshake on
    the same connection meets the reset (or the connect itself does, when the RST is in before
    it completes: on loopback, often); either way the round reads tcp_connect conn_reset, as
    the endpoint's (tests/test_reset_check.py tells it from a firewall's)."""
    url = f"https://{HOST}:{reset_server.port}/"
    round_ = await run_checklist(plan(url, pki, tmp_path), source="s")
    tcp = step(round_, Step.TCP_CONNECT)
    assert (tcp.status, tcp.reason) == (Status.FAIL, Reason.CONN_RESET), tcp.detail
    assert step(round_, Step.TLS_HANDSHAKE).reason is Reason.DEPENDENCY_FAILED
    assert step(round_, Step.HTTP_RESPONSE).reason is Reason.DEPENDENCY_FAILED
    assert reset_server.wait_accepted(1)


async def test_a_tcp_target_keeps_the_grace_read(
    reset_server: TcpServer, pki: Pki, tmp_path: Path
) -> None:
    """Nothing follows a TCP-only target's connect: the reset is its tcp_connect's."""
    round_ = await run_checklist(plan(f"{HOST}:{reset_server.port}", pki, tmp_path), source="s")
    tcp = step(round_, Step.TCP_CONNECT)
    assert (tcp.status, tcp.reason) == (Status.FAIL, Reason.CONN_RESET)
