"""A reload that fails for any reason keeps the running config and the file watcher; a shutdown
after it still flushes every round.

In this process (the service's own watcher, real files) and with a real `egresswatch run`
process whose rounds reach a real HTTP server on loopback.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from egresswatch.metrics import Metrics
from egresswatch.reload import ConfigReloader
from egresswatch.settings import Settings, load_settings
from egresswatch.storage import Store, make_engine
from egresswatch.wiring import Service
from tests.support.dnsserver import dns_server
from tests.support.https import HOST, NAME, LocalServers, Reply, local_servers, pki
from tests.support.service import free_port, poll, wait_for
from tests.test_agent import finish, spawn
from tests.test_service import Lab, lab, running

__all__ = ["dns_server", "lab", "local_servers", "pki", "running"]  # fixtures

# What a save caught half-way, an editor in the wrong encoding or a hand in a hurry leaves.
BAD_SAVES: list[tuple[str, bytes | None]] = [  # None: the file is replaced by a directory
    ("empty", b""),
    ("latin-1", b"source: {name: caf\xe9}\n"),
    ("binary", bytes(range(1, 256))),
    ("no targets", b"targets: []\n"),
    ("duplicate key", b"targets: [{name: a, address: '127.0.0.1:9'}]\ntargets: []\n"),
    ("interval 10^6 days", b"probes: {interval: 1000000d}\n"),
    ("an I/O error (a directory)", None),
]


async def _reloaded(service: Service, outcome: str, count: int) -> None:
    """Until the service has counted `count` reloads with this outcome."""

    def reached() -> bool:
        labels = {"outcome": outcome}
        found = service.registry.get_sample_value("egresswatch_config_reloads_total", labels)
        return found == count

    await wait_for(reached, timeout_s=10)


async def test_every_failed_reload_keeps_the_config_and_the_watcher(
    lab: Lab, local_servers: LocalServers, running: Callable[..., Any]
) -> None:
    server = await local_servers.https(Reply(200))
    path = lab.write([{"name": "one", "url": f"https://{NAME}:{server.port}/"}])
    service: Service = await running(path, migrate=True)
    jobs = service.scheduler.job_keys()
    for count, (what, content) in enumerate(BAD_SAVES, start=1):
        if path.is_dir():
            path.rmdir()
        if content is None:
            path.unlink()
            path.mkdir()
        else:
            path.write_bytes(content)
        await _reloaded(service, "rejected", count)
        assert service.scheduler.job_keys() == jobs, what
        assert [t.name for t in service.settings.targets] == ["one"], what
    path.rmdir()
    # The next good save is picked up: the watcher outlived every failure above.
    lab.write([{"name": "renamed", "url": f"https://{NAME}:{server.port}/"}])
    await wait_for(lambda: "node-1/renamed" in service.scheduler.job_keys(), timeout_s=10)


async def test_a_config_that_fails_while_applied_goes_back_to_the_running_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "egresswatch.yaml"
    path.write_text(yaml.safe_dump({"targets": [{"name": "one", "address": "127.0.0.1:9"}]}))
    running_settings = load_settings(path)
    applied: list[Settings] = []

    async def apply(new: Settings) -> None:
        applied.append(new)
        if new.targets[0].name == "two":
            raise RuntimeError("a part refused the new targets")

    reloader = ConfigReloader(
        path,
        {},
        current=lambda: running_settings,
        apply=apply,
        metrics=Metrics(CollectorRegistry(), version="test"),
    )
    path.write_text(yaml.safe_dump({"targets": [{"name": "two", "address": "127.0.0.1:9"}]}))
    assert await reloader.reload() is False
    assert [s.targets[0].name for s in applied] == ["two", "one"]  # the running one, again


# -- a real process --------------------------------------------------------------------------


class CountingEndpoint:
    """An HTTP endpoint on loopback that notes when each request came."""

    def __init__(self) -> None:
        self.requests: list[float] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests.append(time.monotonic())
        return web.Response(text="ok")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _reloads(session: aiohttp.ClientSession, listen: int, outcome: str) -> float:
    async with session.get(f"http://{HOST}:{listen}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(f'egresswatch_config_reloads_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
async def endpoint() -> AsyncIterator[CountingEndpoint]:
    server = CountingEndpoint()
    await server.start()
    yield server
    await server.stop()


async def test_sigterm_after_failed_reloads_still_flushes_every_round(
    lab: Lab, endpoint: CountingEndpoint
) -> None:
    listen = free_port()

    def configure(fail_after: int) -> None:
        lab.write(
            [{"name": "web", "url": f"http://{HOST}:{endpoint.port}/"}],
            listen=f"{HOST}:{listen}",
            detection={"fail_after": fail_after},
        )

    configure(fail_after=3)
    started = datetime.now(UTC)
    process = await spawn(
        ["run", "--config", str(lab.path), "--migrate"], {**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def reloads(outcome: str, count: int) -> bool:
                try:
                    return await _reloads(session, listen, outcome) >= count
                except aiohttp.ClientError:
                    return False

            await poll(lambda: reloads("ok", 0), 30)  # serving
            lab.path.write_bytes(b"source: {name: caf\xe9}\n")  # not UTF-8: killed the watcher
            await poll(lambda: reloads("rejected", 1), 10)
            lab.path.write_bytes(b"")  # a save caught half-way
            await poll(lambda: reloads("rejected", 2), 10)
            configure(fail_after=4)
            await poll(lambda: reloads("ok", 1), 10)
        await wait_for(lambda: len(endpoint.requests) >= 3, timeout_s=10)
        # Between two rounds (1 s apart, each a few ms): none is in flight at the signal, and
        # the writer still holds the last ones (it writes at most every second).
        await wait_for(lambda: time.monotonic() - endpoint.requests[-1] > 0.2, timeout_s=5)
        served = len(endpoint.requests)
    finally:
        code, said = await finish(process)  # SIGTERM
    assert code == 0, said
    assert "Traceback" not in said
    assert '"event": "egresswatch stopped"' in said
    store = Store(make_engine(lab.db))
    try:
        stored = await store.rounds_between(
            "web", started - timedelta(seconds=1), datetime.now(UTC) + timedelta(seconds=1)
        )
    finally:
        await store.engine.dispose()
    print(f"{served} rounds served, {len(stored)} stored")
    assert len(stored) == served
