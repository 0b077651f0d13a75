"""5,000 clients that send half a request head cannot stop a controller or an agent.

Real `egresswatch controller` and `egresswatch agent` processes, each limited to 4,096 file
descriptors (so the connection cap, derived from the limit, is what protects them), against
a real HTTPS endpoint on loopback. 5,000 connections to each, spread over ten 127.0.0.x
addresses (half from one: the per-peer cap refuses some, the total cap evicts others), each
send half a request head. While they are held, the API, /metrics and ingest answer and the agent's
rounds keep arriving; then the head deadline cuts them, and the logs stay small and hold no
traceback. The numbers are printed (pytest -s) for docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from egresswatch.agent.encode import batch_body, batch_head, encode_round
from egresswatch.http_limits import AGENT_LIMITS, CONTROLLER_LIMITS
from egresswatch.model import SourceKind
from tests.support.dnsserver import dns_server
from tests.support.https import HOST, NAME, LocalServers, Reply, local_servers, pki
from tests.support.service import free_port, poll
from tests.test_agent import TOKEN, TOKEN_ENV, World, a_round, world

__all__ = ["dns_server", "local_servers", "pki", "world"]  # fixtures, imported explicitly

SERVICE_NOFILE = 4096  # the processes' descriptor limit: the cap must keep them under it
SLOW_CLIENTS = 5000  # per process
PEERS = [f"127.0.0.{i}" for i in range(2, 12)]  # ten attacking addresses; we ask from .1


def peer(i: int) -> str:
    """Half the slow clients from one address (over the per-peer cap), half from nine."""
    return PEERS[0] if i % 2 == 0 else PEERS[1 + (i // 2) % (len(PEERS) - 1)]


OPEN_AT_ONCE = 100  # connects in flight together (the listen backlog is 100)
LOG_MAX_BYTES = 64 * 1024  # per process, for the whole test
HALF_A_HEAD = b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: "


def _limit_descriptors() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVICE_NOFILE, SERVICE_NOFILE))


class Process:
    """A service process whose log goes to a file (a pipe nobody reads would block it)."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, args: list[str], environ: dict[str, str]) -> None:
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "egresswatch.cli",
                *args,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                env=environ,
                preexec_fn=_limit_descriptors,
            )

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL after 20 s; the exit code."""
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                return await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.fixture(name="descriptors")
def descriptors_fixture() -> Iterator[None]:
    """This test process opens 10,000 sockets: its soft limit goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * SLOW_CLIENTS + 1000
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _slow_client(port: int, source: str, held: list[socket.socket]) -> None:
    sock = socket.socket()
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        async with asyncio.timeout(10):
            await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        sock.send(HALF_A_HEAD)
    except OSError:  # refused by a cap may show as a reset here: still a client that tried
        pass
    held.append(sock)


async def open_slow_clients(port: int, held: list[socket.socket]) -> None:
    for start in range(0, SLOW_CLIENTS, OPEN_AT_ONCE):
        await asyncio.gather(
            *(
                _slow_client(port, peer(i), held)
                for i in range(start, min(start + OPEN_AT_ONCE, SLOW_CLIENTS))
            )
        )


def still_open(held: list[socket.socket]) -> int:
    """The client sockets the server has not closed (a read would block, not return EOF)."""
    count = 0
    for sock in held:
        try:
            if sock.recv(1, socket.MSG_PEEK) == b"":
                continue
        except BlockingIOError:
            count += 1
        except OSError:
            continue
    return count


async def metric(session: aiohttp.ClientSession, url: str, name: str, **labels: str) -> float:
    """The sum of the series of `name` at `url` whose labels include `labels`."""
    async with session.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


async def timed_get(session: aiohttp.ClientSession, url: str) -> float:
    started = time.monotonic()
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        await response.read()
    return time.monotonic() - started


async def ingest(session: aiohttp.ClientSession, url: str, batch_id: str) -> int:
    result = a_round("shop", "node-outside", datetime.now(UTC))
    body = batch_body(batch_head("node-outside", SourceKind.NODE), batch_id, [encode_round(result)])
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with session.post(f"{url}/api/v1/results", data=body, headers=headers) as response:
        return response.status


async def test_5000_slow_clients_against_a_controller_and_an_agent(
    world: World, local_servers: LocalServers, tmp_path: Path, descriptors: None
) -> None:
    endpoint = await local_servers.https(Reply(200))
    world.write([{"name": "shop", "url": f"https://{NAME}:{endpoint.port}/"}])
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: TOKEN}
    controller = Process("controller", tmp_path / "controller.log")
    agent = Process("agent", tmp_path / "agent.log")
    agent_port = free_port()
    agent_url = f"http://{HOST}:{agent_port}"
    held: list[socket.socket] = []
    # A new connection per request: each must get past the caps, as a new client would.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=10),
    )
    try:
        await controller.start(["controller", "--config", str(world.config), "--migrate"], environ)
        await agent.start(
            [
                *("agent", "--controller", world.url, "--token-file", str(world.token_file)),
                *("--listen", f"{HOST}:{agent_port}", "--resolv-conf", str(world.resolv)),
                *("--ca-file", str(world.pki.ca_file)),
            ],
            {**environ, "NODE_NAME": "node-a", "EGRESSWATCH_SOURCE_KIND": "node"},
        )

        async def rounds_ok() -> float:
            try:
                return await metric(
                    session, world.url, "egresswatch_step_results_total", status="ok"
                )
            except aiohttp.ClientError:
                return 0.0

        await poll(rounds_ok, 30)

        # -- the attack ----------------------------------------------------------------------
        started = time.monotonic()
        await asyncio.gather(
            open_slow_clients(world.port, held), open_slow_clients(agent_port, held)
        )
        opened_s = time.monotonic() - started
        ok_before = await rounds_ok()
        held_now = still_open(held)
        status_s = [await timed_get(session, f"{world.url}/api/v1/status") for _ in range(5)]
        metrics_s = await timed_get(session, f"{world.url}/metrics")
        agent_metrics_s = await timed_get(session, f"{agent_url}/metrics")
        assert await ingest(session, world.url, "slow-clients-1") == 200
        controller_open = await metric(session, world.url, "egresswatch_http_connections_open")
        agent_open = await metric(session, agent_url, "egresswatch_http_connections_open")
        # Rounds keep arriving: the agent probes, posts, the controller stores and counts.
        await poll(lambda: _grew(rounds_ok, ok_before), 10)
        assert controller_open <= CONTROLLER_LIMITS.connection_cap(SERVICE_NOFILE) + 10
        assert agent_open <= AGENT_LIMITS.max_connections
        refused = {
            reason: await metric(
                session, world.url, "egresswatch_http_connections_refused_total", reason=reason
            )
            for reason in ("peer_limit", "evicted", "total_limit")
        }
        assert refused["peer_limit"] > 0 and refused["evicted"] > 0, refused

        # -- the head deadline cuts them -------------------------------------------------------
        async def all_cut() -> bool:
            return still_open(held) == 0

        await poll(all_cut, CONTROLLER_LIMITS.head_timeout_s + 10, every_s=0.5)
        cut_s = time.monotonic() - started
        head_timeouts = await metric(
            session, world.url, "egresswatch_http_connections_refused_total", reason="head_timeout"
        )
        assert head_timeouts > 0
        assert await ingest(session, world.url, "slow-clients-2") == 200
    finally:
        await session.close()
        for sock in held:
            sock.close()
        codes = {p.name: await p.stop() for p in (agent, controller)}
    assert codes == {"agent": 0, "controller": 0}
    logs = {p.name: p.log.read_bytes() for p in (controller, agent)}
    print(
        f"\nslow clients: {2 * SLOW_CLIENTS} opened in {opened_s:.1f} s, {held_now} held by "
        f"the servers (controller {controller_open:.0f}, agent {agent_open:.0f}); refused by "
        f"the controller {refused}; all cut {cut_s:.1f} s after the attack began "
        f"({head_timeouts:.0f} head timeouts at the controller); /api/v1/status under attack "
        f"{min(status_s) * 1000:.0f}-{max(status_s) * 1000:.0f} ms, /metrics "
        f"{metrics_s * 1000:.0f} ms, agent /metrics {agent_metrics_s * 1000:.0f} ms; logs "
        + ", ".join(f"{k} {len(v)} bytes / {len(v.splitlines())} lines" for k, v in logs.items())
    )
    for name, text in logs.items():
        assert len(text) < LOG_MAX_BYTES, f"{name} logged {len(text)} bytes"
        assert b"Traceback" not in text, text.decode()[-4000:]
        assert b"Too many open files" not in text
        assert b"refusing connections" in text  # one line when it began, counts, no flood


async def _grew(read: Callable[[], Awaitable[float]], before: float) -> bool:
    return await read() > before
