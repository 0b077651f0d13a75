"""A name's AAAA lookup runs in a task of its own (probes/dns.py `_Search.name`): whatever ends
the A lookup early, a crash or the step being cancelled, must not leave that task behind.

An orphaned AAAA task would keep asking a silent server after its round ended, and one a round
would pile up under a broken resolver. Real loopback DNS server (tests/support/dnsserver.py).
"""

from __future__ import annotations

import asyncio

import pytest

from egresswatch.probes import dns
from egresswatch.probes.dns import dns_cluster
from egresswatch.probes.resolvconf import ResolvConf
from tests.support import dnsserver
from tests.support.dnsserver import TestDNSServer

dns_server = dnsserver.dns_server

LONG_S = 30.0  # far longer than any test here waits: only a cancel ends a pending lookup
POLL_S = 0.01
POLLS = 300  # 3 s at most


def silent_resolv(server: TestDNSServer) -> ResolvConf:
    server.set_default(dnsserver.Rule(silent=True))
    return ResolvConf(nameservers=(server.nameserver,), timeout_s=LONG_S, attempts=1)


def aaaa_tasks() -> list[asyncio.Task[object]]:
    """The AAAA lookups still running in this loop."""
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("dns-aaaa-") and not task.done()
    ]


async def wait_for_aaaa_question(server: TestDNSServer) -> None:
    for _ in range(POLLS):
        if server.names_asked("AAAA"):
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError("the AAAA question never reached the server")


async def test_a_cancelled_step_leaves_no_aaaa_task(dns_server: TestDNSServer) -> None:
    step = asyncio.create_task(
        dns_cluster("web.example.test.", silent_resolv(dns_server), timeout_s=LONG_S)
    )
    await wait_for_aaaa_question(dns_server)
    assert len(aaaa_tasks()) == 1  # the lookup under test is running

    step.cancel()
    with pytest.raises(asyncio.CancelledError):
        await step
    assert aaaa_tasks() == []


async def test_a_crash_in_the_a_lookup_cancels_its_aaaa_task(
    dns_server: TestDNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug in the A half (our own seam, _Search.lookup) while AAAA waits on a silent server.
    real_lookup = dns._Search.lookup

    async def lookup(self: dns._Search, name: str, qtype: str, first: object = None) -> object:
        if qtype == "A":
            await wait_for_aaaa_question(dns_server)
            raise RuntimeError("a bug in the A lookup")
        return await real_lookup(self, name, qtype, first)  # type: ignore[arg-type]

    monkeypatch.setattr(dns._Search, "lookup", lookup)
    resolv = silent_resolv(dns_server)
    # The bug leaves the step; probes/base.py `guarded` makes it the step's probe_error.
    with pytest.raises(RuntimeError, match="a bug in the A lookup"):
        await dns_cluster("web.example.test.", resolv, timeout_s=LONG_S)
    assert aaaa_tasks() == []
