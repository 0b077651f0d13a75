"""The path_trace step: TTL-limited TCP connects read back through IP_RECVERR.

On loopback the destination is one hop away. The lab (root only) is
client -- r1 -- r2 -- server, with an accepting server on 203.0.113.10:8443 and nothing on
8444 (a RST); faults are nftables rules on r1/r2 and routes in the client. Every reason
path_trace produces has a test here that fails when its classification breaks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from egresswatch.evidence import TraceEvidence
from egresswatch.model import Reason, Status, Step
from egresswatch.probes.traceroute import path_trace
from tests.support import netns, tcpservers
from tests.support.evidence import assert_round_trips, typed
from tests.support.netns import Lab, Node
from tests.support.tcpservers import ClosedPort, TcpServer

# Fixtures are imported explicitly (tests/conftest.py holds none for servers).
accept_server = tcpservers.accept_server
refused_port = tcpservers.refused_port

HOP_S = 0.3  # a silent hop costs this much: short, as the lab answers in microseconds


# --- loopback ------------------------------------------------------------------------------


async def test_loopback_is_one_hop(accept_server: TcpServer) -> None:
    result = await path_trace("127.0.0.1", accept_server.port, timeout_s=2.0)

    assert (result.step, result.status, result.reason) == (Step.PATH_TRACE, Status.OK, None)
    evidence = typed(result, TraceEvidence)
    assert [(h.ttl, h.address, h.icmp, h.reached) for h in evidence.hops] == [
        (1, "127.0.0.1", None, True)
    ]
    assert isinstance(evidence.hops[0].rtt_ms, float)
    assert (evidence.destination, evidence.port) == ("127.0.0.1", accept_server.port)
    assert (evidence.last_hop, evidence.reached, evidence.stopped) == (
        "127.0.0.1",
        True,
        "reached",
    )
    assert result.detail.startswith("reached 127.0.0.1 in 1 hop (")
    assert_round_trips(result)


async def test_a_rst_is_the_destination_answering_over_ipv6() -> None:
    closed = ClosedPort("::1")
    try:
        result = await path_trace("::1", closed.port, timeout_s=2.0)
    finally:
        closed.close()
    assert result.status is Status.OK, result.detail
    assert typed(result, TraceEvidence).hops[0].address == "::1"
    assert_round_trips(result)


async def test_not_an_ip_is_a_probe_error() -> None:
    result = await path_trace("web.example", 443, timeout_s=2.0)
    assert (result.status, result.reason) == (Status.ERROR, Reason.PROBE_ERROR)
    assert typed(result, TraceEvidence).hops == ()
    assert_round_trips(result)


# --- in a namespace lab ----------------------------------------------------------------------

R1, R2 = "198.51.100.2", "198.51.100.6"
SERVER = "203.0.113.10"
PORT, CLOSED_PORT = 8443, 8444


@dataclass
class TraceLab:
    """client (198.51.100.1) -- r1 (.2 | .5) -- r2 (.6 | 203.0.113.1) -- server (.10)."""

    lab: Lab
    client: Node
    r1: Node
    r2: Node
    routes: list[tuple[str, str]] = field(default_factory=list)  # (kind, destination) to undo

    def trace(self, **kwargs: Any) -> dict[str, Any]:
        arguments = {"address": SERVER, "port": PORT, "timeout_s": 5.0, "hop_timeout_s": HOP_S}
        result: dict[str, Any] = self.lab.call(
            self.client, "egresswatch.probes.traceroute:path_trace", {**arguments, **kwargs}
        )
        return result

    def on(self, router: Node, hook: str, rule: str) -> None:
        """One rule for traffic to the server in `router`'s `prerouting` or `forward` chain."""
        priority = "-150" if hook == "prerouting" else "0"  # before routing: no TTL handling
        self.lab.nft(
            router,
            f"table ip lab {{\n chain {hook} {{\n  type filter hook {hook} priority {priority}\n"
            f"  ip daddr {SERVER} {rule}\n }}\n}}\n",
        )


@pytest.fixture(scope="module")
def trace_lab_module() -> Iterator[TraceLab]:
    netns.require_lab()
    with Lab() as lab:
        client, r1, r2 = lab.node("client"), lab.router("r1"), lab.router("r2")
        server = lab.node("server")
        lab.link(client, "198.51.100.1/30", r1, f"{R1}/30")
        lab.link(r1, "198.51.100.5/30", r2, f"{R2}/30")
        lab.link(r2, "203.0.113.1/24", server, f"{SERVER}/24")
        lab.route(client, "default", via=R1)
        lab.route(r1, "default", via=R2)
        lab.route(r2, "198.51.100.0/24", via="198.51.100.5")
        lab.route(server, "default", via="203.0.113.1")
        lab.spawn_python(server, "tests.support.tcpservers", "accept", SERVER, str(PORT))
        yield TraceLab(lab, client, r1, r2)


@pytest.fixture
def trace_lab(trace_lab_module: TraceLab) -> Iterator[TraceLab]:
    """The module's lab, with this test's rules and routes undone afterwards."""
    lab = trace_lab_module
    try:
        yield lab
    finally:
        lab.lab.nft_flush(lab.r1)
        lab.lab.nft_flush(lab.r2)
        for kind, destination in lab.routes:
            lab.lab.unroute(lab.client, destination, kind=kind)
        lab.routes.clear()


def hops(result: dict[str, Any]) -> list[tuple[int, str | None, str | None, bool]]:
    return [(h["ttl"], h["address"], h["icmp"], h["reached"]) for h in result["evidence"]["hops"]]


def assert_fails(result: dict[str, Any], reason: Reason, last_hop: str | None) -> None:
    assert (result["step"], result["status"], result["reason"]) == (
        "path_trace",
        "fail",
        reason.value,
    ), result["detail"]
    assert result["evidence"]["last_hop"] == last_hop
    assert result["evidence"]["reached"] is False
    json.dumps(result["evidence"])


REACHED = [
    (1, R1, "time_exceeded", False),
    (2, R2, "time_exceeded", False),
    (3, SERVER, None, True),
]


@pytest.mark.parametrize("parallel", [1, 3])
@pytest.mark.root
def test_hops_in_order_to_the_destination(trace_lab: TraceLab, parallel: int) -> None:
    result = trace_lab.trace(parallel=parallel)

    assert (result["status"], result["reason"]) == ("ok", None), result["detail"]
    assert hops(result) == REACHED
    assert all(h["rtt_ms"] > 0 for h in result["evidence"]["hops"])
    evidence = result["evidence"]
    assert (evidence["last_hop"], evidence["reached"], evidence["stopped"]) == (
        SERVER,
        True,
        "reached",
    )
    assert result["detail"].startswith(f"reached {SERVER} in 3 hops (")
    assert result["duration_s"] < 0.2  # nothing waited for a hop timeout


@pytest.mark.root
def test_one_shot_run_in_netns_and_a_closed_port(trace_lab: TraceLab) -> None:
    # the fresh-interpreter path of the helper; a RST from the server is reaching it too
    result = netns.run_in_netns(
        trace_lab.client.name,
        "egresswatch.probes.traceroute:path_trace",
        {"address": SERVER, "port": CLOSED_PORT, "timeout_s": 5.0, "hop_timeout_s": HOP_S},
    )
    assert result["status"] == "ok", result["detail"]
    assert hops(result) == REACHED


@pytest.mark.root
def test_silent_drop_before_routing_at_r2(trace_lab: TraceLab) -> None:
    # dropped in prerouting, r2 neither forwards nor sends time-exceeded: r1 is the last hop
    trace_lab.on(trace_lab.r2, "prerouting", "drop")
    started = time.monotonic()
    result = trace_lab.trace(max_silent=3)

    assert_fails(result, Reason.CONN_TIMEOUT, R1)
    assert hops(result) == [
        (1, R1, "time_exceeded", False),
        (2, None, None, False),
        (3, None, None, False),
        (4, None, None, False),
    ]
    assert [h["rtt_ms"] for h in result["evidence"]["hops"][1:]] == [None, None, None]
    assert result["evidence"]["stopped"] == "silent"
    assert result["detail"] == f"no answer past hop 1 ({R1}); 3 silent hops"
    assert result["duration_s"] < 3 * HOP_S  # the silent hops were waited for together
    assert time.monotonic() - started < 2.0


@pytest.mark.root
def test_drop_in_the_forward_chain_of_r2(trace_lab: TraceLab) -> None:
    # the TTL is checked before the forward hook: r2 still answers time-exceeded at TTL 2
    trace_lab.on(trace_lab.r2, "forward", "drop")
    result = trace_lab.trace(max_silent=2)

    assert_fails(result, Reason.CONN_TIMEOUT, R2)
    assert hops(result) == [
        (1, R1, "time_exceeded", False),
        (2, R2, "time_exceeded", False),
        (3, None, None, False),
        (4, None, None, False),
    ]
    assert result["detail"] == f"no answer past hop 2 ({R2}); 2 silent hops"


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
def test_unreachable_from_r2(trace_lab: TraceLab, rule: str, reason: Reason, name: str) -> None:
    trace_lab.on(trace_lab.r2, "forward", rule)
    result = trace_lab.trace()

    assert_fails(result, reason, R2)
    # TTL 2 runs out at r2 before its forward chain; TTL 3 reaches the chain and the reject
    assert hops(result) == [*REACHED[:2], (3, R2, "unreachable", False)]
    assert result["evidence"]["stopped"] == "unreachable"
    assert result["detail"] == f"ICMP {name} from {R2} at hop 3"


@pytest.mark.root
def test_max_hops_runs_out_with_routers_answering(trace_lab: TraceLab) -> None:
    result = trace_lab.trace(max_hops=2)
    assert_fails(result, Reason.HOST_UNREACHABLE, R2)
    assert hops(result) == REACHED[:2]
    assert result["evidence"]["stopped"] == "max_hops"
    assert result["detail"] == f"not reached within 2 hops; last answer from hop 2 ({R2})"


@pytest.mark.root
def test_max_hops_runs_out_in_silence(trace_lab: TraceLab) -> None:
    trace_lab.on(trace_lab.r2, "forward", "drop")
    result = trace_lab.trace(max_hops=3, max_silent=5)
    assert_fails(result, Reason.CONN_TIMEOUT, R2)
    assert [h["address"] for h in result["evidence"]["hops"]] == [R1, R2, None]
    assert result["evidence"]["stopped"] == "max_hops"


@pytest.mark.root
def test_step_budget_bounds_a_silent_trace(trace_lab: TraceLab) -> None:
    trace_lab.on(trace_lab.r1, "prerouting", "drop")  # nobody answers at all
    result = trace_lab.trace(timeout_s=0.5, max_silent=30)

    assert_fails(result, Reason.CONN_TIMEOUT, None)
    assert result["evidence"]["stopped"] == "budget"
    assert 0.5 <= result["duration_s"] < 0.7
    assert all(h["address"] is None for h in result["evidence"]["hops"])
    assert result["detail"].startswith("no hop answered; step budget of 0.5 s spent after ")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("prohibit", Reason.FIREWALL_DENIED), ("unreachable", Reason.HOST_UNREACHABLE)],
)
@pytest.mark.root
def test_connect_fails_on_the_source(trace_lab: TraceLab, kind: str, reason: Reason) -> None:
    trace_lab.lab.route(trace_lab.client, "203.0.113.0/24", kind=kind)
    trace_lab.routes.append((kind, "203.0.113.0/24"))
    result = trace_lab.trace()

    assert_fails(result, reason, None)
    assert result["evidence"]["hops"] == []
    assert result["evidence"]["stopped"] == "local_error"
    assert result["detail"].startswith(f"connect to {SERVER}:{PORT} failed on this source: ")
