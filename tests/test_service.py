"""`egresswatch run` as a whole: rounds on their timers, stored, exported, reloaded.

Against real servers on loopback: a DNS server, HTTPS endpoints with a test CA, a closed port
and an endpoint that never answers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from egresswatch.heaptrim import TASK_NAME as HEAP_TRIM
from egresswatch.heaptrim import find_trim
from egresswatch.looplag import period_for
from egresswatch.model import Reason, Status, Step
from egresswatch.settings import load_settings
from egresswatch.storage import upgrade
from egresswatch.wiring import Service, StartupError
from tests.support.dnsserver import TestDNSServer, dns_server
from tests.support.https import HOST, NAME, LocalServers, Pki, Reply, local_servers, pki
from tests.support.service import free_port, wait_for

__all__ = ["dns_server", "local_servers", "pki"]  # fixtures, imported explicitly

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Lab:
    """A config file for the service, pointed at this test's servers."""

    def __init__(self, tmp_path: Path, dns: TestDNSServer, pki: Pki) -> None:
        self.dir = tmp_path
        self.resolv = tmp_path / "resolv.conf"
        self.resolv.write_text(f"nameserver {dns.host}#{dns.port}\noptions timeout:1 attempts:1\n")
        dns.answer(NAME, a=[HOST])
        self.pki = pki
        self.path = tmp_path / "egresswatch.yaml"
        self.db = f"sqlite+aiosqlite:///{tmp_path / 'egresswatch.db'}"

    def write(self, targets: list[dict[str, Any]], **extra: Any) -> Path:
        config = {
            "source": {"name": "node-1", "kind": "node"},
            "listen": f"{HOST}:0",
            "database": self.db,
            "dns": {"resolv_conf": str(self.resolv)},
            "proxy_from_environment": False,
            "probes": {
                "interval": "1s",
                "timeout": "900ms",
                "step_timeout": "400ms",
                "trace_every": "1h",
                "trace_hop_timeout": "100ms",
                "trace_max_hops": 2,
                "ca_file": str(self.pki.ca_file),
            },
            "targets": targets,
            **extra,
        }
        text = yaml.safe_dump(config)
        # The file watcher compares mtime and size: make sure a rewrite is always seen.
        old = self.path.read_text() if self.path.exists() else ""
        if len(text) == len(old):
            text += "# rewritten\n"
        self.path.write_text(text)
        return self.path


@pytest.fixture
def lab(tmp_path: Path, dns_server: TestDNSServer, pki: Pki) -> Lab:
    return Lab(tmp_path, dns_server, pki)


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., Any]]:
    services: list[Service] = []

    async def start(path: Path, **kwargs: Any) -> Service:
        service = Service(load_settings(path), config_path=path, **kwargs)
        services.append(service)
        await service.start()
        return service

    yield start
    for service in services:
        await service.stop()


async def scrape(service: Service, path: str = "/metrics") -> tuple[int, str]:
    assert service.listening is not None
    host, port = service.listening
    async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}{path}") as r:
        return r.status, await r.text()


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def series(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


async def test_rounds_on_their_timers_stored_and_exported_while_one_target_hangs(
    lab: Lab, local_servers: LocalServers, running: Callable[..., Any]
) -> None:
    good = await local_servers.https(Reply(200))
    hang = await local_servers.silent()
    closed = free_port()
    path = lab.write(
        [
            {"name": "good", "url": f"https://{NAME}:{good.port}/"},
            {"name": "hang", "url": f"http://{HOST}:{hang.port}/"},
            {"name": "closed", "address": f"{HOST}:{closed}"},
        ]
    )
    started = datetime.now(UTC)
    service: Service = await running(path, migrate=True)
    status, body = await scrape(service, "/readyz")
    assert status == 200 and '"ready"' in body
    await asyncio.sleep(4.2)
    await service.ingest.close()  # flush: everything run so far reaches the database
    end = datetime.now(UTC) + timedelta(seconds=1)

    rounds = {
        name: await service.store.rounds_between(name, started - timedelta(seconds=1), end)
        for name in ("good", "hang", "closed")
    }
    # One round per second each, phases spread: 4.2 s gives 3 to 5 rounds, the hanging
    # target's included, and its rounds never delayed the others.
    for name, stored in rounds.items():
        assert 3 <= len(stored) <= 5, (name, len(stored))
    for result in rounds["good"]:
        assert result.first_failing_step is None
        assert result.source == "node-1"
        assert [s.step for s in result.steps][:5] == list(Step)[:5]
    for result in rounds["hang"]:
        http = result.step(Step.HTTP_RESPONSE)
        assert http is not None and http.status is Status.FAIL and http.reason is Reason.TIMEOUT
    for result in rounds["closed"]:
        tcp = result.step(Step.TCP_CONNECT)
        assert tcp is not None and tcp.reason is Reason.CONN_REFUSED
        assert result.first_failing_step is Step.TCP_CONNECT

    _, text = await scrape(service)
    found = samples(text)
    up = "egresswatch_step_up"
    assert found[series(up, source="node-1", target="good", step="http_response")] == 1
    assert found[series(up, source="node-1", target="closed", step="tcp_connect")] == 0
    assert found[series(up, source="node-1", target="hang", step="http_response")] == 0
    first = "egresswatch_first_failing_step"
    assert found[series(first, source="node-1", target="closed", step="tcp_connect")] == 1
    total = sum(
        v
        for (name, labels), v in found.items()
        if name == "egresswatch_step_results_total"
        and dict(labels)["target"] == "good"
        and dict(labels)["step"] == "dns_cluster"
    )
    assert total == len(rounds["good"])
    assert found[series("egresswatch_scheduler_lateness_seconds_count")] >= 9
    assert found[series("egresswatch_ingest_batches_total", outcome="ok")] >= 1


async def test_reload_good_and_bad_configs(
    lab: Lab, local_servers: LocalServers, running: Callable[..., Any]
) -> None:
    one = await local_servers.https(Reply(200))
    two = await local_servers.https(Reply(200))
    path = lab.write(
        [
            {"name": "one", "url": f"https://{NAME}:{one.port}/"},
            {"name": "two", "url": f"https://{NAME}:{two.port}/"},
        ]
    )
    # Reloads by hand only here: the file watcher would race the assertions on counts.
    service: Service = await running(path, migrate=True, watch_config=False)
    assert service.scheduler.job_keys() == {"node-1/one", "node-1/two", "retention", "controller"}
    await asyncio.sleep(1.5)
    _, text = await scrape(service)
    assert 'target="two"' in text

    # A bad file is refused with its field path; the running config goes on.
    path.write_text(path.read_text().replace("interval: 1s", "interval: soon"))
    assert await service.reload() is False
    assert service.scheduler.job_keys() == {"node-1/one", "node-1/two", "retention", "controller"}
    _, text = await scrape(service)
    found = samples(text)
    assert found[series("egresswatch_config_reloads_total", outcome="rejected")] == 1

    # A good one replaces the targets in place: `two` leaves (its series with it), `three`
    # arrives, `one` keeps going.
    three = await local_servers.https(Reply(200))
    lab.write(
        [
            {"name": "one", "url": f"https://{NAME}:{one.port}/"},
            {"name": "three", "url": f"https://{NAME}:{three.port}/"},
        ]
    )
    assert await service.reload() is True
    assert service.scheduler.job_keys() == {"node-1/one", "node-1/three", "retention", "controller"}
    await asyncio.sleep(1.5)
    _, text = await scrape(service)
    assert 'target="two"' not in text
    assert 'target="three"' in text
    assert samples(text)[series("egresswatch_config_reloads_total", outcome="ok")] == 1
    targets = {t.name: t.active for t in await service.store.targets()}
    assert targets == {"one": True, "two": False, "three": True}


async def test_metrics_per_source_kind(
    lab: Lab, local_servers: LocalServers, running: Callable[..., Any]
) -> None:
    """`metrics.detail: source_kind` reaches /metrics: durations and results per kind of
    source, the per-pair gauges per source; a reload cannot change it in place."""
    good = await local_servers.https(Reply(200))
    path = lab.write(
        [{"name": "good", "url": f"https://{NAME}:{good.port}/"}],
        metrics={"detail": "source_kind"},
    )
    service: Service = await running(path, migrate=True, watch_config=False)
    await asyncio.sleep(1.5)
    found = samples((await scrape(service))[1])
    pair = {"target": "good", "step": "tcp_connect"}
    assert found[series("egresswatch_step_up", source="node-1", **pair)] == 1
    key = series("egresswatch_step_duration_seconds_count", source_kind="node", **pair)
    assert found[key] >= 1
    assert not any(name.startswith("egresswatch_step_duration") and "source" in dict(labels)
                   for name, labels in found)  # fmt: skip
    lab.write([{"name": "good", "url": f"https://{NAME}:{good.port}/"}])  # detail: source
    assert await service.reload() is True
    assert service.settings.metrics.detail == "source_kind"  # kept until a restart


async def test_a_changed_file_is_reloaded_by_itself(
    lab: Lab, local_servers: LocalServers, running: Callable[..., Any]
) -> None:
    server = await local_servers.https(Reply(200))
    path = lab.write([{"name": "one", "url": f"https://{NAME}:{server.port}/"}])
    service: Service = await running(path, migrate=True)
    lab.write([{"name": "renamed", "url": f"https://{NAME}:{server.port}/"}])
    await wait_for(lambda: "node-1/renamed" in service.scheduler.job_keys(), timeout_s=5)
    assert "node-1/one" not in service.scheduler.job_keys()


async def test_refuses_an_unmigrated_database_unless_told_to_migrate(
    lab: Lab, running: Callable[..., Any]
) -> None:
    path = lab.write([{"name": "one", "url": f"https://{NAME}/"}])
    with pytest.raises(
        StartupError, match=r"egresswatch db upgrade --db .*or start with --migrate"
    ):
        await running(path)
    await asyncio.to_thread(upgrade, lab.db)
    service: Service = await running(path)
    assert service.readiness() == {"database_schema": True, "scheduler": True}


async def test_the_command_line_overrides_the_file_and_stops_cleanly(
    lab: Lab, local_servers: LocalServers, tmp_path: Path
) -> None:
    server = await local_servers.https(Reply(200))
    path = lab.write([{"name": "one", "url": f"https://{NAME}:{server.port}/"}])
    port = free_port()
    other_db = tmp_path / "elsewhere" / "override.db"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "egresswatch.cli",
        "run",
        "--config",
        str(path),
        "--listen",
        f"{HOST}:{port}",
        "--db",
        f"sqlite+aiosqlite:///{other_db}",
        "--migrate",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                try:
                    async with session.get(f"http://{HOST}:{port}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            async with asyncio.timeout(20):
                while not await healthy():
                    await asyncio.sleep(0.1)
            assert other_db.exists()
            assert not (tmp_path / "egresswatch.db").exists()
            process.send_signal(signal.SIGHUP)  # reload, file unchanged: logged, nothing stops
            await asyncio.sleep(1.0)
            assert await healthy()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    lines = err.decode().splitlines()
    assert any('"event": "egresswatch stopped"' in line for line in lines)
    assert any('"event": "config reloaded"' in line for line in lines)
    assert "Traceback" not in err.decode()


@pytest.mark.parametrize("local_agent", [True, False], ids=["run", "controller"])
async def test_the_loop_lag_sampler_follows_the_shortest_step_budget_across_reloads(
    lab: Lab, local_servers: LocalServers, running: Callable[..., Any], local_agent: bool
) -> None:
    """As the agent's (tests/test_agent.py): its wake-ups cost CPU, so it samples as rarely
    as the settings' step budgets allow (looplag.period_for), not every 50 ms."""
    server = await local_servers.https(Reply(200))
    url = f"https://{NAME}:{server.port}/"
    slow = {"interval": "30s", "timeout": "10s", "step_timeout": "4s"}
    path = lab.write([{"name": "one", "url": url, **slow}, {"name": "two", "url": url, **slow}])
    service: Service = await running(
        path, migrate=True, watch_config=False, local_agent=local_agent
    )
    assert service.loop_lag.period_s == period_for(4.0) == 0.2
    lab.write(
        [
            {"name": "one", "url": url, **slow},
            {"name": "two", "url": url, "interval": "30s", "timeout": "10s", "step_timeout": "2s"},
        ]
    )
    assert await service.reload() is True
    assert service.loop_lag.period_s == period_for(2.0) == 0.1


async def test_the_c_heap_is_trimmed_by_a_named_task_that_stops_with_the_service(
    lab: Lab, local_servers: LocalServers, running: Callable[..., Any]
) -> None:
    """What glibc keeps of freed memory goes back to the system from the start on
    (heaptrim.py); the task is the service's and ends with it."""
    server = await local_servers.https(Reply(200))
    path = lab.write([{"name": "one", "url": f"https://{NAME}:{server.port}/"}])
    service: Service = await running(path, migrate=True, watch_config=False)
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert (HEAP_TRIM in names) is (find_trim() is not None)
    if find_trim() is not None:
        for _ in range(500):  # bounded: the first trim runs at start, in a worker thread
            if service.heap_trim.trims:
                break
            await asyncio.sleep(0.01)
        assert service.heap_trim.trims >= 1
        trims = service.heap_trim.trims
        assert (await scrape(service, "/api/v1/status"))[0] == 200  # a large answer: trimmed
        for _ in range(500):  # bounded: a second after the answer, not at the 30 s period
            if service.heap_trim.trims > trims:
                break
            await asyncio.sleep(0.01)
        assert service.heap_trim.trims == trims + 1
    await service.stop()
    assert HEAP_TRIM not in {t.get_name() for t in asyncio.all_tasks()}
