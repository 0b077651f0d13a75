"""`egresswatch demo`: the real command end to end, its endpoints, and its pure parts.

The end-to-end tests run the command as a subprocess, as a newcomer runs it, on a shortened
schedule (first fault after 3 s, a round every second: about 25 s in all), with TMPDIR pointed
at the test's directory so the files it keeps land there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from egresswatch.demo.dns import DemoDns
from egresswatch.demo.endpoints import CONTROL, SHOP, DemoEndpoints
from egresswatch.demo.files import demo_config
from egresswatch.demo.printer import seconds
from egresswatch.demo.scenario import FaultKind, timeline
from egresswatch.demo.watch import Scoreboard, SeenKind, View, observe
from egresswatch.model import Reason, RoundResult, Status, Step, StepResult
from egresswatch.probes.dnsclient import ask_tcp, ask_udp, make_query
from egresswatch.probes.resolvconf import Nameserver
from egresswatch.settings import settings_from_dict

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--break-after", "3", "--interval", "1", "--listen", "127.0.0.1:0"]


async def start_demo(tmp_path: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "egresswatch.cli",
        "demo",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"},
    )


async def finish(process: asyncio.subprocess.Process, timeout_s: float) -> tuple[str, str]:
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return out.decode(), err.decode()


def index_of(lines: list[str], text: str, start: int = 0) -> int:
    """The first line at or after `start` containing `text`; fails the test if none."""
    for number in range(start, len(lines)):
        if text in lines[number]:
            return number
    raise AssertionError(f"no line with {text!r} after line {start}:\n" + "\n".join(lines))


async def test_the_demo_shows_each_fault_injected_seen_and_recovered(tmp_path: Path) -> None:
    process = await start_demo(tmp_path, *SHORT)
    out, err = await finish(process, timeout_s=60)
    assert process.returncode == 0, out + err
    assert "Traceback" not in err
    lines = out.splitlines()
    # In this order: the DNS fault, seen at dns_cluster, repaired, recovered; then the 503.
    at = index_of(lines, "breaking: shop.demo.test now answers NXDOMAIN")
    at = index_of(lines, "shop: checklist fails at dns_cluster (nxdomain) since", at)
    index_of(lines, "note: tcp_connect still reached the IP it knew", at)
    at = index_of(lines, "repairing: shop.demo.test answers 127.0.0.1 again", at)
    at = index_of(lines, "shop: all steps ok again, after", at)
    at = index_of(lines, "/health now answers 503 Service Unavailable", at)
    at = index_of(lines, "shop: checklist fails at http_response (http_status) since", at)
    at = index_of(lines, "/health answers 200 OK again", at)
    at = index_of(lines, "shop: all steps ok again, after", at)
    at = index_of(lines, "the demo's time is up", at)
    index_of(lines, "egresswatch saw every break and recovery as expected.", at)
    assert not any(line.split("  ", 1)[-1].startswith("control: checklist") for line in lines)
    check_kept_files(tmp_path, out)


def check_kept_files(tmp_path: Path, out: str) -> None:
    """The files the demo keeps: a config that validates, and a database holding the rounds."""
    (directory,) = tmp_path.glob("egresswatch-demo-*")
    settings = settings_from_dict(yaml.safe_load((directory / "egresswatch.yaml").read_text()))
    assert settings.proxy_from_environment is False
    assert settings.dns.upstream is not None and settings.dns.upstream.startswith("127.0.0.1#")
    with sqlite3.connect(directory / "egresswatch.db") as db:
        (rounds,) = db.execute("select count(*) from rounds").fetchone()
    assert rounds >= 20
    assert f"files kept in {directory}" in out


@pytest.mark.parametrize(
    ("sig", "code", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
async def test_a_signal_stops_it_cleanly(
    tmp_path: Path, sig: signal.Signals, code: int, name: str
) -> None:
    process = await start_demo(tmp_path, *SHORT, "--duration", "60")
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            while b"shop: first round" not in await process.stdout.readline():
                pass
    except BaseException:
        process.kill()
        await process.wait()
        raise
    process.send_signal(sig)
    out, err = await finish(process, timeout_s=20)
    assert process.returncode == code, out + err
    assert "Traceback" not in err
    assert f"{name}: stopping" in out
    assert "stopped: egresswatch (its results are written), then the endpoints" in out
    assert f"{name} ended the demo before the whole cycle was seen." in out


async def test_a_busy_listen_address_is_said_clearly_and_exits_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = await start_demo(tmp_path, "--listen", f"127.0.0.1:{port}")
        _, err = await finish(process, timeout_s=30)
    assert process.returncode == 2
    assert f"egresswatch demo: 127.0.0.1:{port} is already in use" in err
    assert "--listen 127.0.0.1:0" in err
    assert "Traceback" not in err
    assert not written(tmp_path)  # nothing was started or written


def written(tmp_path: Path) -> list[Path]:
    return list(tmp_path.glob("egresswatch-demo-*"))


# -- the endpoints ----------------------------------------------------------------------------


async def test_the_dns_server_switches_answers_over_udp_and_tcp() -> None:
    dns = await DemoDns("demo.test").start()
    server = Nameserver("127.0.0.1", dns.port)
    try:
        dns.answer("shop.demo.test", "127.0.0.1")
        for ask in (ask_udp, ask_tcp):
            answer = await ask(make_query("shop.demo.test.", "A"), server, 2.0)
            assert (answer.rcode, answer.addresses) == ("NOERROR", ("127.0.0.1",))
            nodata = await ask(make_query("shop.demo.test.", "AAAA"), server, 2.0)
            assert (nodata.rcode, nodata.addresses) == ("NOERROR", ())
            elsewhere = await ask(make_query("example.com.", "A"), server, 2.0)
            assert elsewhere.rcode == "REFUSED"
        dns.nxdomain("shop.demo.test")
        for ask in (ask_udp, ask_tcp):
            gone = await ask(make_query("shop.demo.test.", "A"), server, 2.0)
            assert gone.rcode == "NXDOMAIN"
    finally:
        await dns.stop()


async def test_the_endpoints_serve_tls_from_the_demo_ca_and_switch_status(tmp_path: Path) -> None:
    import ssl

    endpoints = await DemoEndpoints.start()
    try:
        (tmp_path / "ca.pem").write_bytes(endpoints.ca_pem)
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))

        async def status(port: int, name: str) -> int:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=name
            )
            writer.write(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
            line = await reader.readline()
            writer.close()
            return int(line.split()[1])

        assert await status(endpoints.shop.port, SHOP) == 200
        endpoints.break_http(503)
        assert await status(endpoints.shop.port, SHOP) == 503
        assert await status(endpoints.control.port, CONTROL) == 200
        endpoints.repair_http()
        assert await status(endpoints.shop.port, SHOP) == 200
    finally:
        await endpoints.stop()


# -- the pure parts ---------------------------------------------------------------------------

T0 = datetime(2026, 11, 27, 7, 0, tzinfo=UTC)


def round_at(seconds: int, failing: dict[Step, Reason] | None = None) -> RoundResult:
    failing = failing or {}
    steps = tuple(
        StepResult(step, Status.FAIL, failing[step])
        if step in failing
        else StepResult(step, Status.OK)
        for step in (Step.DNS_CLUSTER, Step.TCP_CONNECT, Step.HTTP_RESPONSE)
    )
    return RoundResult("shop", "demo-node", T0 + timedelta(seconds=seconds), steps)


DNS = {Step.DNS_CLUSTER: Reason.NXDOMAIN}
HTTP = {Step.HTTP_RESPONSE: Reason.HTTP_STATUS}


@pytest.mark.parametrize(
    ("rounds", "expected"),
    [
        ([round_at(0)], [(SeenKind.FIRST, None, None)]),
        ([round_at(0, DNS)], [(SeenKind.FIRST, Step.DNS_CLUSTER, 0)]),
        ([round_at(0), round_at(5)], [(SeenKind.FIRST, None, None), None]),
        (
            [round_at(0), round_at(5, DNS), round_at(10, DNS), round_at(15)],
            [
                (SeenKind.FIRST, None, None),
                (SeenKind.FAILING, Step.DNS_CLUSTER, 5),
                None,
                (SeenKind.RECOVERED, None, 5),
            ],
        ),
        (
            # The first failing step moves: still failing since the first failed round.
            [round_at(0), round_at(5, HTTP), round_at(10, DNS)],
            [
                (SeenKind.FIRST, None, None),
                (SeenKind.FAILING, Step.HTTP_RESPONSE, 5),
                (SeenKind.MOVED, Step.DNS_CLUSTER, 5),
            ],
        ),
    ],
)
def test_observe_reports_each_flip_without_hysteresis(
    rounds: list[RoundResult], expected: list[tuple[SeenKind, Step | None, int | None] | None]
) -> None:
    view, got = View(), []
    for result in rounds:
        view, seen = observe(view, result)
        got.append(
            None
            if seen is None
            else (
                seen.kind,
                seen.step,
                None if seen.since is None else int((seen.since - T0).total_seconds()),
            )
        )
    assert got == expected
    assert view.rounds == len(rounds)


def test_recovery_says_how_long_it_failed() -> None:
    view, _ = observe(View(), round_at(0))
    view, _ = observe(view, round_at(5, DNS))
    view, seen = observe(view, round_at(40))
    assert seen is not None and seen.kind is SeenKind.RECOVERED and seen.failed_for_s == 35


def test_the_scoreboard_wants_the_expected_step_and_a_recovery_after_the_repair() -> None:
    plan = timeline(break_after_s=60, interval_s=5)
    dns, http = plan.faults
    board = Scoreboard(plan.faults)
    view, _ = observe(View(), round_at(0))
    board.injected(dns, T0 + timedelta(seconds=1))
    view, seen = observe(view, round_at(5, DNS))
    assert seen is not None and board.saw(seen) is board.records[0]
    board.repaired(dns, T0 + timedelta(seconds=8))
    view, seen = observe(view, round_at(10))
    assert seen is not None
    board.saw(seen)
    assert board.records[0].as_expected and not board.complete  # the HTTP fault is to come
    board.injected(http, T0 + timedelta(seconds=11))
    view, seen = observe(view, round_at(15, DNS))  # the wrong step
    assert seen is not None
    board.saw(seen)
    board.repaired(http, T0 + timedelta(seconds=18))
    view, seen = observe(view, round_at(20))
    assert seen is not None
    board.saw(seen)
    assert board.records[1].wrong and board.wrong and not board.complete


def test_a_failure_with_no_fault_injected_is_unexpected() -> None:
    board = Scoreboard(timeline(break_after_s=60, interval_s=5).faults)
    _, seen = observe(View(), round_at(0, HTTP))
    assert seen is not None
    board.saw(seen)
    assert board.unexpected == ["shop failed at http_response with no fault injected"]
    assert board.wrong


def test_the_default_cycle_fits_in_three_minutes() -> None:
    plan = timeline(break_after_s=60, interval_s=5)
    dns, http = plan.faults
    assert (dns.kind, dns.break_at_s, dns.repair_at_s) == (FaultKind.DNS, 60, 95)
    assert (http.kind, http.break_at_s, http.repair_at_s) == (FaultKind.HTTP, 120, 155)
    assert http.repair_at_s + 2 * plan.interval_s <= plan.end_s <= 180


def shape(value: Any) -> Any:
    """Keys all the way down; lists by their first element."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def test_config_demo_yaml_has_the_shape_the_demo_writes(tmp_path: Path) -> None:
    shipped = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    written = demo_config(
        tmp_path,
        dns_port=53530,
        shop_url="https://shop.demo.test:18443/health",
        control_url="https://control.demo.test:18444/",
        listen="127.0.0.1:9108",
        interval_s=5,
    )
    assert shape(written) == shape(shipped)
    for section in ("source", "listen", "proxy_from_environment", "targets"):
        assert written[section] == shipped[section]
    assert {k: v for k, v in written["probes"].items() if k != "ca_file"} == {
        k: v for k, v in shipped["probes"].items() if k != "ca_file"
    }
    assert written["dns"]["upstream"] == shipped["dns"]["upstream"]
    settings_from_dict(written)  # and it is a valid config
    short = demo_config(
        tmp_path,
        dns_port=53530,
        shop_url="https://shop.demo.test:18443/health",
        control_url="https://control.demo.test:18444/",
        listen="127.0.0.1:0",
        interval_s=1,
    )
    assert settings_from_dict(short).probes.timeout < 1.0  # a round ends before the next


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.04, "0 s"), (0.43, "0.4 s"), (5.0, "5 s"), (9.96, "10 s"), (35.2, "35 s"), (-1, "0 s")],
)
def test_durations_read_well(value: float, text: str) -> None:
    assert seconds(value) == text
