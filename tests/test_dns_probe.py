"""The dns_cluster and dns_upstream steps against real DNS servers on loopback.

Every resolver here is explicit (a ResolvConf or a file we write): the machine's own resolver
is never asked, and no query leaves 127.0.0.0/8.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from egresswatch.addresses import Nameserver
from egresswatch.evidence import DnsEvidence
from egresswatch.model import Reason, Status, Step, StepResult
from egresswatch.probes.dns import dns_cluster, dns_upstream
from egresswatch.probes.resolvconf import ResolvConf, load_resolv_conf
from tests.support import dnsserver
from tests.support.dnsserver import TestDNSServer, closed_port
from tests.support.evidence import assert_round_trips, typed

# Fixtures are imported explicitly (tests/conftest.py holds none for servers).
dns_server = dnsserver.dns_server
make_dns_server = dnsserver.make_dns_server

MakeServer = Callable[[], TestDNSServer]
AKS_SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")
TRY_S = 0.2  # per-try timeout: short, so silence costs little
BUDGET_S = 2.0


def pod_resolv(*servers: TestDNSServer, ndots: int = 5, attempts: int = 2) -> ResolvConf:
    """An AKS pod's resolv.conf pointed at our loopback servers."""
    return ResolvConf(
        nameservers=tuple(s.nameserver for s in servers),
        search=AKS_SEARCH,
        ndots=ndots,
        timeout_s=TRY_S,
        attempts=attempts,
    )


def dns_of(result: StepResult) -> DnsEvidence:
    return typed(result, DnsEvidence)


def tried(result: StepResult) -> list[tuple[str, str, str]]:
    """(name, type, rcode) of every try, in the order sent."""
    return [(t.name, t.type, t.rcode) for t in dns_of(result).tried]


def assert_fails(result: StepResult, step: Step, reason: Reason) -> None:
    assert (result.step, result.status, result.reason) == (step, Status.FAIL, reason), result.detail
    assert_round_trips(result)  # evidence stays JSON on every path, as ingest takes it


# --- answers -------------------------------------------------------------------------------


async def test_a_and_aaaa_answer(dns_server: TestDNSServer) -> None:
    dns_server.answer("web.example.", a=["192.0.2.1", "192.0.2.2"], aaaa=["2001:db8::1"])
    result = await dns_cluster("web.example.", pod_resolv(dns_server), timeout_s=BUDGET_S)

    assert (result.step, result.status, result.reason) == (Step.DNS_CLUSTER, Status.OK, None)
    server = str(dns_server.nameserver)
    assert list(dns_of(result).addresses) == ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
    assert dns_of(result).name == "web.example."
    assert dns_of(result).resolver == server
    assert list(dns_of(result).cname) == []
    assert sorted(tried(result)) == [
        ("web.example.", "A", "NOERROR"),
        ("web.example.", "AAAA", "NOERROR"),
    ]
    first = dns_of(result).tried[0]
    assert set(first.to_json()) >= {"name", "type", "server", "rcode", "ms"}
    assert first.server == server
    assert result.detail.startswith(
        f"{server} answered web.example. A 192.0.2.1, 192.0.2.2 AAAA 2001:db8::1 ("
    )
    assert_round_trips(result)


async def test_aaaa_only_is_enough(dns_server: TestDNSServer) -> None:
    dns_server.answer("v6.example.", aaaa=["2001:db8::6"])
    result = await dns_cluster("v6.example.", pod_resolv(dns_server), timeout_s=BUDGET_S)
    assert result.status is Status.OK
    assert list(dns_of(result).addresses) == ["2001:db8::6"]


async def test_cname_chain_is_followed_and_recorded(dns_server: TestDNSServer) -> None:
    dns_server.cname("www.example.", "edge.cdn.example.")
    dns_server.cname("edge.cdn.example.", "web.example.")
    dns_server.answer("web.example.", a=["192.0.2.7"])
    result = await dns_cluster("www.example.", pod_resolv(dns_server), timeout_s=BUDGET_S)

    assert result.status is Status.OK
    assert list(dns_of(result).cname) == ["edge.cdn.example.", "web.example."]
    assert list(dns_of(result).addresses) == ["192.0.2.7"]
    assert "CNAME edge.cdn.example. -> web.example. A 192.0.2.7" in result.detail


async def test_short_name_found_through_the_search_list(dns_server: TestDNSServer) -> None:
    dns_server.answer("api.svc.cluster.local.", a=["10.0.0.42"])
    result = await dns_cluster("api", pod_resolv(dns_server), timeout_s=BUDGET_S)

    assert result.status is Status.OK
    assert dns_of(result).name == "api.svc.cluster.local."
    # The search stops at the first name with an address.
    assert dns_server.names_asked("A") == [
        "api.default.svc.cluster.local.",
        "api.svc.cluster.local.",
    ]


async def test_truncated_udp_answer_is_asked_again_over_tcp(dns_server: TestDNSServer) -> None:
    dns_server.truncate_udp("big.example.", a=["192.0.2.9"])
    result = await dns_cluster("big.example.", pod_resolv(dns_server), timeout_s=BUDGET_S)

    assert result.status is Status.OK
    assert list(dns_of(result).addresses) == ["192.0.2.9"]
    a_tries = [t for t in dns_of(result).tried if t.type == "A"]
    assert [(t.proto, t.truncated) for t in a_tries] == [
        ("udp", True),
        ("tcp", False),
    ]
    assert [(q.qtype, q.proto) for q in dns_server.queries if q.qtype == "A"] == [
        ("A", "udp"),
        ("A", "tcp"),
    ]


# --- the search order, as the server saw it ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "web",
            [
                "web.default.svc.cluster.local.",
                "web.svc.cluster.local.",
                "web.cluster.local.",
                "web.",
            ],
        ),
        (
            "a.b.c.d.e.example",
            [
                "a.b.c.d.e.example.",
                "a.b.c.d.e.example.default.svc.cluster.local.",
                "a.b.c.d.e.example.svc.cluster.local.",
                "a.b.c.d.e.example.cluster.local.",
            ],
        ),
        ("web.example.", ["web.example."]),
    ],
)
async def test_server_sees_the_res_search_order(
    dns_server: TestDNSServer, name: str, expected: list[str]
) -> None:
    resolv = pod_resolv(dns_server)
    assert resolv.candidates(name) == expected

    result = await dns_cluster(name, resolv, timeout_s=BUDGET_S)  # every name: NXDOMAIN

    assert_fails(result, Step.DNS_CLUSTER, Reason.NXDOMAIN)
    assert dns_server.names_asked("A") == expected
    assert dns_server.names_asked("AAAA") == expected
    assert list(dns_of(result).candidates) == expected
    assert [t.name for t in dns_of(result).tried if t.type == "A"] == expected


async def test_search_order_through_a_resolv_conf_file(
    dns_server: TestDNSServer, tmp_path: Path
) -> None:
    """The `#port` form points a real resolv.conf at the loopback server."""
    path = tmp_path / "resolv.conf"
    path.write_text(
        f"nameserver 127.0.0.1#{dns_server.port}\n"
        "search default.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5 timeout:1 attempts:1\n"
    )
    dns_server.answer("web.", a=["192.0.2.3"])
    result = await dns_cluster("web", load_resolv_conf(path), timeout_s=BUDGET_S)

    assert result.status is Status.OK
    assert dns_server.names_asked("A") == load_resolv_conf(path).candidates("web")


# --- every reason --------------------------------------------------------------------------


async def test_nxdomain_everywhere(dns_server: TestDNSServer) -> None:
    result = await dns_cluster("foo", pod_resolv(dns_server), timeout_s=BUDGET_S)

    assert_fails(result, Step.DNS_CLUSTER, Reason.NXDOMAIN)
    assert list(dns_of(result).addresses) == []
    assert dns_of(result).name is None
    assert result.detail.startswith(
        f"{dns_server.nameserver}: NXDOMAIN for foo.default.svc.cluster.local., "
        "foo.svc.cluster.local., foo.cluster.local., foo. (tried 4 names"
    )


async def test_nodata_on_some_name_is_no_data(dns_server: TestDNSServer) -> None:
    dns_server.nodata("foo.svc.cluster.local.")  # the name exists, without an address
    result = await dns_cluster("foo", pod_resolv(dns_server), timeout_s=BUDGET_S)

    assert_fails(result, Step.DNS_CLUSTER, Reason.NO_DATA)
    assert len(dns_server.names_asked("A")) == 4  # NODATA moves on, like NXDOMAIN
    assert "foo.svc.cluster.local." in result.detail


async def test_servfail_is_reported_even_when_other_names_are_nxdomain(
    dns_server: TestDNSServer,
) -> None:
    dns_server.rcode("foo.default.svc.cluster.local.", "SERVFAIL")
    result = await dns_cluster("foo", pod_resolv(dns_server), timeout_s=BUDGET_S)

    assert_fails(result, Step.DNS_CLUSTER, Reason.SERVFAIL)
    # SERVFAIL is retried (attempts) and then the search moves on to the next name.
    assert dns_server.names_asked("A") == [
        "foo.default.svc.cluster.local.",
        "foo.default.svc.cluster.local.",
        "foo.svc.cluster.local.",
        "foo.cluster.local.",
        "foo.",
    ]
    assert "SERVFAIL for foo.default.svc.cluster.local." in result.detail


async def test_servfail_from_one_server_goes_to_the_next(make_dns_server: MakeServer) -> None:
    broken, good = make_dns_server(), make_dns_server()
    broken.rcode("web.example.", "SERVFAIL")
    good.answer("web.example.", a=["192.0.2.1"])
    result = await dns_cluster("web.example.", pod_resolv(broken, good), timeout_s=BUDGET_S)

    assert result.status is Status.OK
    assert ("web.example.", "A", "SERVFAIL") in tried(result)
    assert result.detail.startswith(f"{good.nameserver} answered")


async def test_refused(dns_server: TestDNSServer) -> None:
    dns_server.set_default(dnsserver.Rule(rcode="REFUSED"))
    result = await dns_cluster("foo", pod_resolv(dns_server), timeout_s=BUDGET_S)

    assert_fails(result, Step.DNS_CLUSTER, Reason.REFUSED)
    # Refused by every server (both attempts): glibc stops the search there.
    assert dns_server.names_asked("A") == ["foo.default.svc.cluster.local."] * 2
    assert {rcode for _, _, rcode in tried(result)} == {"REFUSED"}


async def test_refused_by_the_first_server_asks_the_second(make_dns_server: MakeServer) -> None:
    refusing, good = make_dns_server(), make_dns_server()
    refusing.set_default(dnsserver.Rule(rcode="REFUSED"))
    good.answer("web.example.", a=["192.0.2.1"])
    result = await dns_cluster("web.example.", pod_resolv(refusing, good), timeout_s=BUDGET_S)

    assert result.status is Status.OK
    assert dns_of(result).resolver == str(refusing.nameserver)
    assert [(t.server, t.rcode) for t in dns_of(result).tried if t.type == "A"] == [
        (str(refusing.nameserver), "REFUSED"),
        (str(good.nameserver), "NOERROR"),
    ]


async def test_silence_is_dns_timeout_within_the_budget(dns_server: TestDNSServer) -> None:
    dns_server.set_default(dnsserver.Rule(silent=True))
    # One try alone (1 s) would exceed the step's budget: the budget must cut it short.
    resolv = replace(pod_resolv(dns_server), timeout_s=1.0, attempts=5)
    budget = 0.3
    started = time.monotonic()
    result = await dns_cluster("foo", resolv, timeout_s=budget)
    elapsed = time.monotonic() - started

    assert_fails(result, Step.DNS_CLUSTER, Reason.DNS_TIMEOUT)
    assert elapsed < budget + 0.2
    assert result.duration_s <= elapsed
    assert {rcode for _, _, rcode in tried(result)} == {"TIMEOUT"}
    # Silence from every server stops the search: the later names are never asked.
    assert set(dns_server.names_asked("A")) == {"foo.default.svc.cluster.local."}
    assert "no answer for foo.default.svc.cluster.local. (tried 1 of 4 names" in result.detail


async def test_second_nameserver_is_used_when_the_first_is_silent(
    make_dns_server: MakeServer,
) -> None:
    silent, good = make_dns_server(), make_dns_server()
    silent.set_default(dnsserver.Rule(silent=True))
    good.answer("web.example.", a=["192.0.2.1"])
    result = await dns_cluster("web.example.", pod_resolv(silent, good), timeout_s=BUDGET_S)

    assert result.status is Status.OK
    assert dns_of(result).resolver == str(silent.nameserver)
    assert [(t.server, t.rcode) for t in dns_of(result).tried if t.type == "A"] == [
        (str(silent.nameserver), "TIMEOUT"),
        (str(good.nameserver), "NOERROR"),
    ]
    assert result.detail.startswith(f"{good.nameserver} answered web.example. A 192.0.2.1")


async def test_stray_reply_with_another_id_is_ignored(dns_server: TestDNSServer) -> None:
    dns_server.wrong_id("web.example.", a=["192.0.2.66"])
    result = await dns_cluster("web.example.", pod_resolv(dns_server), timeout_s=BUDGET_S)

    assert_fails(result, Step.DNS_CLUSTER, Reason.DNS_TIMEOUT)
    assert list(dns_of(result).addresses) == []


async def test_malformed_reply_is_dns_error(dns_server: TestDNSServer) -> None:
    dns_server.malformed("web.example.")
    result = await dns_cluster("web.example.", pod_resolv(dns_server), timeout_s=BUDGET_S)

    assert_fails(result, Step.DNS_CLUSTER, Reason.DNS_ERROR)
    assert {rcode for _, _, rcode in tried(result)} == {"MALFORMED"}


@pytest.mark.parametrize("rcode", ["NOTIMP", "FORMERR"])
async def test_other_rcodes_are_dns_error(dns_server: TestDNSServer, rcode: str) -> None:
    dns_server.rcode("web.example.", rcode)
    result = await dns_cluster("web.example.", pod_resolv(dns_server), timeout_s=BUDGET_S)

    assert_fails(result, Step.DNS_CLUSTER, Reason.DNS_ERROR)
    assert {r for _, _, r in tried(result)} == {rcode}


async def test_nothing_listening_is_conn_refused() -> None:
    """ICMP port unreachable, read back on the connected UDP socket: fast, and telling."""
    resolv = ResolvConf(nameservers=(Nameserver("127.0.0.1", closed_port()),), timeout_s=TRY_S)
    result = await dns_cluster("web.example.", resolv, timeout_s=BUDGET_S)

    assert_fails(result, Step.DNS_CLUSTER, Reason.CONN_REFUSED)
    assert result.duration_s < TRY_S  # answered by the kernel, not by a timeout
    assert {r for _, _, r in tried(result)} == {"CONN_REFUSED"}


async def test_ip_literal_is_not_resolved(dns_server: TestDNSServer) -> None:
    result = await dns_cluster("192.0.2.1", pod_resolv(dns_server), timeout_s=BUDGET_S)
    assert (result.status, result.reason) == (Status.SKIPPED, Reason.NOT_APPLICABLE)
    assert dns_server.queries == []


async def test_a_name_that_cannot_be_sent_is_a_probe_error(dns_server: TestDNSServer) -> None:
    result = await dns_cluster("x" * 64, pod_resolv(dns_server), timeout_s=BUDGET_S)
    assert (result.status, result.reason) == (Status.ERROR, Reason.PROBE_ERROR)
    assert dns_server.queries == []


# --- dns_upstream --------------------------------------------------------------------------


async def test_upstream_asks_the_absolute_name_only(dns_server: TestDNSServer) -> None:
    dns_server.answer("web.example.", a=["192.0.2.1"])
    dns_server.answer("web.example.default.svc.cluster.local.", a=["10.9.9.9"])  # a trap
    result = await dns_upstream("web.example", dns_server.nameserver, timeout_s=BUDGET_S)

    assert (result.step, result.status) == (Step.DNS_UPSTREAM, Status.OK)
    assert list(dns_of(result).addresses) == ["192.0.2.1"]
    assert dns_of(result).resolver == str(dns_server.nameserver)
    assert dns_server.names_asked("A") == ["web.example."]
    assert dns_server.names_asked("AAAA") == ["web.example."]


async def test_upstream_nxdomain(dns_server: TestDNSServer) -> None:
    result = await dns_upstream("gone.example", dns_server.nameserver, timeout_s=BUDGET_S)

    assert_fails(result, Step.DNS_UPSTREAM, Reason.NXDOMAIN)
    assert dns_server.names_asked("A") == ["gone.example."]
    assert result.detail.startswith(f"{dns_server.nameserver}: NXDOMAIN for gone.example. (")


async def test_upstream_silence_is_dns_timeout_within_the_budget(
    dns_server: TestDNSServer,
) -> None:
    dns_server.silence("web.example.")
    budget = 0.4
    started = time.monotonic()
    result = await dns_upstream("web.example", dns_server.nameserver, timeout_s=budget)

    assert_fails(result, Step.DNS_UPSTREAM, Reason.DNS_TIMEOUT)
    assert time.monotonic() - started < budget + 0.25
    assert len(dns_server.names_asked("A")) == 2  # one retransmission
