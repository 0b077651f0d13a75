"""The tcp_connect step against real TCP peers: on loopback, and in a namespace lab.

The lab (root only) is client -- r1 -- server, with an accepting server on 203.0.113.10 and
203.0.113.11 port 8443; faults are nftables rules on r1 and routes in the client. Every
reason tcp_connect produces has a test here that fails when its classification breaks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from egresswatch.evidence import TcpEvidence
from egresswatch.model import Reason, Status, Step, StepResult
from egresswatch.probes.icmp import parse_extended_err
from egresswatch.probes.tcp import MAX_ADDRESSES, tcp_connect
from tests.support import netns, tcpservers
from tests.support.evidence import assert_round_trips, typed
from tests.support.netns import Lab, Node
from tests.support.tcpservers import ClosedPort, MakeServer, TcpServer

# Fixtures are imported explicitly (tests/conftest.py holds none for servers).
accept_server = tcpservers.accept_server
reset_server = tcpservers.reset_server
refused_port = tcpservers.refused_port
make_tcp_server = tcpservers.make_tcp_server

BUDGET_S = 2.0


def assert_fails(result: StepResult, reason: Reason) -> None:
    assert (result.step, result.status, result.reason) == (Step.TCP_CONNECT, Status.FAIL, reason), (
        result.detail
    )
    assert_round_trips(result)  # evidence stays JSON on every path, as ingest takes it


def outcomes(result: StepResult) -> list[tuple[str, str]]:
    return [(a.address, a.outcome) for a in typed(result, TcpEvidence).attempts]


# --- loopback ------------------------------------------------------------------------------


async def test_connects_and_reports_evidence(accept_server: TcpServer) -> None:
    result = await tcp_connect(
        ["127.0.0.1"], accept_server.port, timeout_s=BUDGET_S, ip_source="dns_cluster"
    )

    assert (result.step, result.status, result.reason) == (Step.TCP_CONNECT, Status.OK, None)
    evidence = typed(result, TcpEvidence)
    assert evidence.address == "127.0.0.1"
    assert evidence.port == accept_server.port
    assert evidence.ip_source == "dns_cluster"
    assert evidence.untried == ()
    [attempt] = evidence.attempts
    assert attempt.address == "127.0.0.1"
    assert attempt.outcome == "ok"
    assert attempt.icmp_from is None
    assert isinstance(attempt.ms, float)
    assert 0.0 < result.duration_s < 0.15  # the connect only, not the reset grace read
    assert result.detail.startswith(f"connected to 127.0.0.1:{accept_server.port} in ")
    assert result.detail.endswith(" ms (from dns_cluster)")
    assert accept_server.wait_accepted(1)
    assert_round_trips(result)


async def test_ipv6_loopback(make_tcp_server: MakeServer) -> None:
    server = make_tcp_server("accept", "::1")
    result = await tcp_connect(["::1"], server.port, timeout_s=BUDGET_S, ip_source="pinned")
    assert result.status is Status.OK
    assert result.detail.startswith(f"connected to [::1]:{server.port} in ")


async def test_reset_right_after_accept(reset_server: TcpServer) -> None:
    result = await tcp_connect(
        ["127.0.0.1"], reset_server.port, timeout_s=BUDGET_S, ip_source="last_good"
    )
    assert_fails(result, Reason.CONN_RESET)
    assert outcomes(result) == [("127.0.0.1", "conn_reset")]
    assert typed(result, TcpEvidence).address is None
    assert result.detail.startswith(f"127.0.0.1:{reset_server.port} conn_reset after ")
    assert reset_server.accepted == 1


async def test_refused(refused_port: ClosedPort) -> None:
    result = await tcp_connect(
        ["127.0.0.1"], refused_port.port, timeout_s=BUDGET_S, ip_source="pinned"
    )
    assert_fails(result, Reason.CONN_REFUSED)
    assert outcomes(result) == [("127.0.0.1", "conn_refused")]
    assert typed(result, TcpEvidence).attempts[0].icmp_from is None  # a RST, not an ICMP
    assert result.detail.startswith(f"127.0.0.1:{refused_port.port} conn_refused after ")
    assert result.detail.endswith(" ms (from pinned)")


async def test_second_address_tried_when_the_first_refuses(make_tcp_server: MakeServer) -> None:
    # 127.0.0.2 listens; 127.0.0.1 holds the same port bound without listening: refused
    server = make_tcp_server("accept", "127.0.0.2")
    closed = ClosedPort("127.0.0.1", server.port)
    try:
        result = await tcp_connect(
            ["127.0.0.1", "127.0.0.2"], server.port, timeout_s=BUDGET_S, ip_source="dns_upstream"
        )
    finally:
        closed.close()
    assert result.status is Status.OK, result.detail
    assert typed(result, TcpEvidence).address == "127.0.0.2"
    assert outcomes(result) == [("127.0.0.1", "conn_refused"), ("127.0.0.2", "ok")]
    assert f"after 127.0.0.1:{server.port} conn_refused" in result.detail


async def test_at_most_four_addresses(refused_port: ClosedPort) -> None:
    addresses = [f"127.0.0.{n}" for n in range(1, 7)]
    held = [ClosedPort(address, refused_port.port) for address in addresses[1:]]
    try:
        result = await tcp_connect(
            addresses, refused_port.port, timeout_s=BUDGET_S, ip_source="dns_cluster"
        )
    finally:
        for port in held:
            port.close()
    assert_fails(result, Reason.CONN_REFUSED)
    assert [a for a, _ in outcomes(result)] == addresses[:MAX_ADDRESSES]
    assert list(typed(result, TcpEvidence).untried) == addresses[MAX_ADDRESSES:]
    assert result.detail.endswith("(from dns_cluster); 2 more not tried")


async def test_no_addresses_is_skipped() -> None:
    result = await tcp_connect([], 443, timeout_s=BUDGET_S, ip_source="dns_cluster")
    assert (result.status, result.reason) == (Status.SKIPPED, Reason.NO_ADDRESS)
    assert typed(result, TcpEvidence).attempts == ()
    assert_round_trips(result)


async def test_not_an_ip_is_a_probe_error() -> None:
    result = await tcp_connect(["web.example"], 443, timeout_s=BUDGET_S, ip_source="pinned")
    assert (result.status, result.reason) == (Status.ERROR, Reason.PROBE_ERROR)
    assert outcomes(result) == [("web.example", "probe_error")]
    assert_round_trips(result)


# --- the ICMP error queue, byte by byte ----------------------------------------------------


def test_parse_icmpv6_admin_prohibited() -> None:
    # struct sock_extended_err (EACCES, origin ICMP6, type 1, code 1) + sockaddr_in6 offender
    ee = bytes.fromhex("0d000000030101000000000000000000")
    offender = bytes.fromhex("0a0000000000000020010db800000000000000000000000100000000")
    icmp = parse_extended_err(ee + offender)
    assert icmp is not None
    assert (icmp.unreachable, icmp.time_exceeded, icmp.reason) == (
        True,
        False,
        Reason.FIREWALL_DENIED,
    )
    assert icmp.offender == "2001:db8::1"
    assert icmp.describe() == "ICMPv6 admin-prohibited from 2001:db8::1"


def test_parse_icmpv6_time_exceeded_and_local_errors() -> None:
    ee = bytes.fromhex("71000000030300000000000000000000")
    icmp = parse_extended_err(ee + bytes(28))  # AF_UNSPEC offender: sender unknown
    assert icmp is not None
    assert (icmp.time_exceeded, icmp.offender, icmp.reason) == (True, None, Reason.HOST_UNREACHABLE)
    local = bytes.fromhex("5a00000001000000dc05000000000000")  # EMSGSIZE
    assert parse_extended_err(local) is None
    assert parse_extended_err(b"short") is None


# --- in a namespace lab ----------------------------------------------------------------------

SERVER = "203.0.113.10"
SERVER_2 = "203.0.113.11"
R1 = "198.51.100.2"
PORT = 8443


@dataclass
class TcpLab:
    """client (198.51.100.1) -- r1 (198.51.100.2 | 203.0.113.1) -- server (.10 and .11)."""

    lab: Lab
    client: Node
    r1: Node
    routes: list[tuple[str, str]] = field(default_factory=list)  # (kind, destination) to undo

    def connect(self, addresses: list[str], timeout_s: float = 1.0) -> dict[str, Any]:
        kwargs = {"addresses": addresses, "port": PORT, "timeout_s": timeout_s}
        result: dict[str, Any] = self.lab.call(
            self.client, "egresswatch.probes.tcp:tcp_connect", {**kwargs, "ip_source": "pinned"}
        )
        return result

    def on_r1(self, rule: str) -> None:
        """One rule in r1's forward chain, for traffic to the servers."""
        self.lab.nft(
            self.r1,
            "table ip lab {\n chain forward {\n  type filter hook forward priority 0\n"
            f"  ip daddr 203.0.113.0/24 {rule}\n }}\n}}\n",
        )

    def client_route(self, kind: str, destination: str) -> None:
        self.lab.route(self.client, destination, kind=kind)
        self.routes.append((kind, destination))


@pytest.fixture(scope="module")
def tcp_lab_module() -> Iterator[TcpLab]:
    netns.require_lab()
    with Lab() as lab:
        client, r1, server = lab.node("client"), lab.router("r1"), lab.node("server")
        lab.link(client, "198.51.100.1/30", r1, "198.51.100.2/30")
        _, server_if = lab.link(r1, "203.0.113.1/24", server, f"{SERVER}/24")
        lab.address(server, f"{SERVER_2}/24", server_if)
        lab.route(client, "default", via=R1)
        lab.route(server, "default", via="203.0.113.1")
        lab.spawn_python(server, "tests.support.tcpservers", "accept", "0.0.0.0", str(PORT))
        yield TcpLab(lab, client, r1)


@pytest.fixture
def tcp_lab(tcp_lab_module: TcpLab) -> Iterator[TcpLab]:
    """The module's lab, with this test's rules and routes undone afterwards."""
    try:
        yield tcp_lab_module
    finally:
        tcp_lab_module.lab.nft_flush(tcp_lab_module.r1)
        for kind, destination in tcp_lab_module.routes:
            tcp_lab_module.lab.unroute(tcp_lab_module.client, destination, kind=kind)
        tcp_lab_module.routes.clear()


def assert_lab_fails(result: dict[str, Any], reason: Reason, icmp_from: str | None) -> None:
    assert (result["step"], result["status"], result["reason"]) == (
        "tcp_connect",
        "fail",
        reason.value,
    ), result["detail"]
    [attempt] = result["evidence"]["attempts"]
    assert (attempt["outcome"], attempt["icmp_from"]) == (reason.value, icmp_from)


@pytest.mark.root
def test_lab_path_works(tcp_lab: TcpLab) -> None:
    result = tcp_lab.connect([SERVER])
    assert result["status"] == "ok", result["detail"]
    assert result["evidence"]["address"] == SERVER


@pytest.mark.root
def test_silent_drop_is_a_timeout_within_budget(tcp_lab: TcpLab) -> None:
    tcp_lab.on_r1("drop")
    started = time.monotonic()
    result = tcp_lab.connect([SERVER], timeout_s=0.5)
    assert_lab_fails(result, Reason.CONN_TIMEOUT, None)
    assert 0.5 <= result["duration_s"] < 0.7
    assert time.monotonic() - started < 2.5  # the interpreter start included
    assert re.fullmatch(
        rf"{SERVER}:{PORT} conn_timeout after 5\d\d ms \(from pinned\)", result["detail"]
    ), result["detail"]


@pytest.mark.root
def test_a_silent_address_does_not_eat_the_whole_budget(tcp_lab: TcpLab) -> None:
    tcp_lab.on_r1(f"ip daddr {SERVER_2} drop")
    result = tcp_lab.connect([SERVER_2, SERVER], timeout_s=2.4)
    assert result["status"] == "ok", result["detail"]
    assert [(a["address"], a["outcome"]) for a in result["evidence"]["attempts"]] == [
        (SERVER_2, "conn_timeout"),
        (SERVER, "ok"),
    ]
    assert 1.1 < result["evidence"]["attempts"][0]["ms"] / 1000 < 1.4  # half of 2.4 s


@pytest.mark.parametrize(
    ("rule", "reason", "name"),
    [
        ("reject with icmp type host-unreachable", Reason.HOST_UNREACHABLE, "host-unreachable"),
        ("reject with icmp type net-unreachable", Reason.NET_UNREACHABLE, "net-unreachable"),
        ("reject with icmp type admin-prohibited", Reason.FIREWALL_DENIED, "admin-prohibited"),
        ("reject", Reason.FIREWALL_DENIED, "port-unreachable"),  # nft's default for `reject`
    ],
)
@pytest.mark.root
def test_icmp_from_a_router(tcp_lab: TcpLab, rule: str, reason: Reason, name: str) -> None:
    tcp_lab.on_r1(rule)
    result = tcp_lab.connect([SERVER])
    assert_lab_fails(result, reason, R1)
    assert result["duration_s"] < 0.5  # answered, not timed out
    assert result["detail"].endswith(f": ICMP {name} from {R1} (from pinned)")


@pytest.mark.root
def test_rst_from_a_router_reads_as_refused(tcp_lab: TcpLab) -> None:
    # a `reject with tcp reset` forges the endpoint's RST: indistinguishable, and so reported
    tcp_lab.on_r1("reject with tcp reset")
    assert_lab_fails(tcp_lab.connect([SERVER]), Reason.CONN_REFUSED, None)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("prohibit", Reason.FIREWALL_DENIED),  # EACCES
        ("unreachable", Reason.HOST_UNREACHABLE),  # EHOSTUNREACH
        ("blackhole", Reason.NET_UNREACHABLE),  # EINVAL
        ("throw", Reason.NET_UNREACHABLE),  # no route at all: ENETUNREACH
    ],
)
@pytest.mark.root
def test_route_on_the_source(tcp_lab: TcpLab, kind: str, reason: Reason) -> None:
    tcp_lab.client_route(kind, "203.0.113.0/24")
    result = tcp_lab.connect([SERVER])
    assert_lab_fails(result, reason, None)
    assert result["duration_s"] < 0.1


@pytest.mark.root
def test_an_address_family_this_source_cannot_use_fails_the_path_not_the_probe() -> None:
    """A source with IPv6 off: connecting to an IPv6 address is refused by its own stack
    ("Cannot assign requested address"). That is this source's path failing (net_unreachable),
    not `error`, which would hide an outage. No packet leaves: the namespace has no link."""
    netns.require_lab()
    with Lab() as lab:
        node = lab.node("v4only")
        lab.sysctl(node, "net.ipv6.conf.all.disable_ipv6", "1")
        kwargs = {"addresses": ["::1"], "port": PORT, "timeout_s": 1.0, "ip_source": "pinned"}
        result = lab.call(node, "egresswatch.probes.tcp:tcp_connect", kwargs)
    assert (result["status"], result["reason"]) == ("fail", "net_unreachable"), result["detail"]
    assert "Cannot assign requested address" in result["detail"]
