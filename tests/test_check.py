"""`egresswatch check` end to end: the real command against real DNS and HTTPS servers on loopback.

The command runs as a subprocess (as a person runs it) while this test's event loop serves it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.dnsserver import TestDNSServer, dns_server
from tests.support.https import HOST, NAME, LocalServers, Pki, Reply, local_servers, pki

__all__ = ["dns_server", "local_servers", "pki"]  # fixtures, imported explicitly

STEPS = [
    "dns_cluster",
    "dns_upstream",
    "tcp_connect",
    "tls_handshake",
    "http_response",
    "path_trace",
]


async def check(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "egresswatch.cli",
        "check",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
def resolv(tmp_path: Path, dns_server: TestDNSServer) -> Path:
    path = tmp_path / "resolv.conf"
    path.write_text(
        f"nameserver {dns_server.host}#{dns_server.port}\n"
        "search default.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5 timeout:1 attempts:1\n"
    )
    dns_server.answer(NAME, a=[HOST])
    return path


def common(resolv: Path, dns: TestDNSServer, pki: Pki) -> list[str]:
    return [
        "--resolv-conf",
        str(resolv),
        "--upstream",
        f"{dns.host}#{dns.port}",
        "--ca-file",
        str(pki.ca_file),
    ]


def by_step(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step"]: step for step in document["steps"]}


async def test_passing_target_text_and_json(
    resolv: Path, dns_server: TestDNSServer, local_servers: LocalServers, pki: Pki
) -> None:
    server = await local_servers.https(Reply(200))
    url = f"https://{NAME}:{server.port}/health"
    code, out, err = await check(url, *common(resolv, dns_server, pki))
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith(f"checklist for {url} from ")
    for number, (step, line) in enumerate(zip(STEPS, lines[1:7], strict=True), start=1):
        assert line.split()[:3] == [str(number), step, "ok"], line
    assert f"answered {NAME}. A {HOST}" in lines[1]
    assert f"{HOST}:{server.port}" in lines[3]
    assert "egresswatch test CA" in lines[4]
    assert "HTTP 200" in lines[5]
    assert f"reached {HOST}" in lines[6]
    assert lines[-1] == "all steps ok"

    code, out, _ = await check(url, "--json", *common(resolv, dns_server, pki))
    assert code == 0
    document = json.loads(out)
    assert document["ok"] is True and document["first_failing_step"] is None
    assert document["next_command"] is None
    steps = by_step(document)
    assert list(steps) == STEPS
    assert {s["status"] for s in document["steps"]} == {"ok"}
    assert steps["dns_cluster"]["evidence"]["addresses"] == [HOST]
    # ndots:5 and a short name: the search list first, then the name itself (glibc order).
    assert [t["name"] for t in steps["dns_cluster"]["evidence"]["tried"] if t["type"] == "A"] == [
        f"{NAME}.default.svc.cluster.local.",
        f"{NAME}.svc.cluster.local.",
        f"{NAME}.cluster.local.",
        f"{NAME}.",
    ]
    assert steps["tcp_connect"]["evidence"]["ip_source"] == "dns_cluster"
    assert steps["http_response"]["evidence"]["status"] == 200
    assert steps["path_trace"]["evidence"]["last_hop"] == HOST


async def test_failing_tls_names_the_step_and_the_next_command(
    resolv: Path, dns_server: TestDNSServer, local_servers: LocalServers, pki: Pki
) -> None:
    server = await local_servers.https(Reply(200), cert="foreign")
    url = f"https://{NAME}:{server.port}/"
    code, out, _ = await check(url, *common(resolv, dns_server, pki))
    assert code == 1, out
    assert "first failing step: tls_handshake (tls_untrusted)" in out
    assert f"next: curl -Iv {url}" in out
    assert "Corp TLS Inspection" in out  # the foreign issuer is shown

    code, out, _ = await check(url, "--json", *common(resolv, dns_server, pki))
    assert code == 1
    document = json.loads(out)
    assert document["first_failing_step"] == "tls_handshake"
    assert document["first_failing_reason"] == "tls_untrusted"
    steps = by_step(document)
    assert steps["tcp_connect"]["status"] == "ok"
    assert steps["http_response"]["status"] == "skipped"
    assert steps["http_response"]["reason"] == "dependency_failed"


async def test_http_status_failure(
    resolv: Path, dns_server: TestDNSServer, local_servers: LocalServers, pki: Pki
) -> None:
    server = await local_servers.https(Reply(503))
    code, out, _ = await check(f"https://{NAME}:{server.port}/", *common(resolv, dns_server, pki))
    assert code == 1
    assert "first failing step: http_response (http_status)" in out


async def test_dns_failure_still_tries_the_pinned_ip(
    tmp_path: Path,
    resolv: Path,
    dns_server: TestDNSServer,
    local_servers: LocalServers,
    pki: Pki,
) -> None:
    server = await local_servers.https(Reply(200))
    dns_server.nxdomain(NAME)
    config = tmp_path / "egresswatch.yaml"
    config.write_text(
        "targets:\n"
        "  - name: shop\n"
        f"    url: https://{NAME}:{server.port}/\n"
        f"    pinned_ips: [{HOST}]\n"
    )
    code, out, _ = await check(
        "shop", "--config", str(config), "--json", *common(resolv, dns_server, pki)
    )
    assert code == 1
    document = json.loads(out)
    steps = by_step(document)
    assert document["target"] == "shop"
    assert document["first_failing_step"] == "dns_cluster"
    assert steps["dns_cluster"]["reason"] == "nxdomain"
    assert steps["dns_upstream"]["reason"] == "nxdomain"
    # DNS failed, yet the network path was tested through the pinned IP.
    assert steps["tcp_connect"]["status"] == "ok"
    assert steps["tcp_connect"]["evidence"]["ip_source"] == "pinned"
    assert steps["http_response"]["status"] == "ok"
    assert document["next_command"] == f"nslookup {NAME}"


async def test_ip_literal_skips_dns_and_refused_port_fails_tcp(
    resolv: Path, dns_server: TestDNSServer
) -> None:
    with_closed = await asyncio.start_server(lambda r, w: None, HOST, 0)
    port = with_closed.sockets[0].getsockname()[1]
    with_closed.close()
    await with_closed.wait_closed()
    code, out, _ = await check(f"{HOST}:{port}", "--json", "--resolv-conf", str(resolv))
    assert code == 1
    document = json.loads(out)
    steps = by_step(document)
    assert steps["dns_cluster"]["status"] == steps["dns_upstream"]["status"] == "skipped"
    assert steps["dns_cluster"]["reason"] == "not_applicable"
    assert steps["tcp_connect"]["reason"] == "conn_refused"
    assert steps["tls_handshake"]["reason"] == "not_applicable"
    assert document["first_failing_step"] == "tcp_connect"
    assert document["next_command"] == f"nc -z -v -w 5 {HOST} {port}"
    assert dns_server.queries == []  # nothing was resolved


async def test_without_upstream_dns_upstream_is_skipped_not_guessed(
    resolv: Path, dns_server: TestDNSServer, local_servers: LocalServers, pki: Pki
) -> None:
    server = await local_servers.https(Reply(200))
    code, out, _ = await check(
        f"https://{NAME}:{server.port}/",
        "--resolv-conf",
        str(resolv),
        "--ca-file",
        str(pki.ca_file),
    )
    assert code == 0, out
    assert "dns_upstream   skipped  not_configured" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://x.test"], "TARGET: unsupported scheme 'ftp'"),
        (["no-port-here"], "neither a URL"),
        (["https://x.test", "--upstream", "nope"], "--upstream:"),
        (["https://x.test", "--config", "/nonexistent/egresswatch.yaml"], "cannot read"),
    ],
)
async def test_bad_usage_exits_2(args: list[str], message: str) -> None:
    code, out, err = await check(*args)
    assert code == 2
    assert message in err
    assert out == ""


async def test_a_controller_config_works_without_the_agents_token(
    tmp_path: Path, resolv: Path, dns_server: TestDNSServer, local_servers: LocalServers, pki: Pki
) -> None:
    """`check` takes no agents' results: the controller's token variable need not be set,
    while `config validate` (what the controller will load) still says it is missing."""
    server = await local_servers.https(Reply(200))
    config = tmp_path / "controller.yaml"
    config.write_text(
        "agent_token_env: EGRESSWATCH_TEST_UNSET_TOKEN\n"
        f"targets:\n  - name: shop\n    url: https://{NAME}:{server.port}/\n"
    )
    code, out, err = await check("shop", "--config", str(config), *common(resolv, dns_server, pki))
    assert code == 0, (out, err)
    validate = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "egresswatch.cli",
        "config",
        "validate",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, problems = await validate.communicate()
    assert validate.returncode == 2
    assert "agent_token_env: environment variable EGRESSWATCH_TEST_UNSET_TOKEN" in problems.decode()
