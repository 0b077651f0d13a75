"""An agent loses nothing it can keep: real `egresswatch agent` and `egresswatch controller`
processes on loopback, a spill file, SIGKILL.

The agent runs six targets every second (a round every ~0.17 s) against a real DNS server and a
real HTTPS endpoint. Its controller is killed, then the agent itself (SIGKILL: no flush), then
a new agent starts on the same spill file and a new controller: every round the first agent
had made durable is stored once and in order, and what is lost is only what came after its
last fsync (at most one batch interval). A second test holds the agent to a tiny
`--buffer-mib` and `--spill-mib`: its own accounting stays under the first while the spill
grows to the second, and past it the drops are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from egresswatch.agent.flags import add_buffer_flags, buffer_options
from egresswatch.agent.identity import SourceIdentity
from egresswatch.agent.sink_types import MIB, SinkTuning
from egresswatch.agent.spill import SpillFile
from egresswatch.cli import main
from egresswatch.model import SourceKind
from tests.support.dnsserver import TestDNSServer, dns_server
from tests.support.https import HOST, NAME, LocalServers, Reply, local_servers, pki
from tests.support.service import free_port, poll
from tests.test_agent import TOKEN, TOKEN_ENV, World, world

__all__ = ["dns_server", "local_servers", "pki", "world"]  # fixtures, imported explicitly

SOURCE = "node-s"
TARGETS = [f"t{i}" for i in range(6)]
Key = tuple[str, datetime]  # (target, started_at): a round


@dataclass
class Running:
    process: asyncio.subprocess.Process
    log: Path
    port: int = 0


class Processes:
    """The processes of one test, their logs in files (a full pipe would stall them)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.environ = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: TOKEN}
        self.started: list[Running] = []

    async def spawn(self, args: list[str], name: str, environ: dict[str, str]) -> Running:
        log = self.world.dir / f"{name}-{len(self.started)}.log"
        with log.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "egresswatch.cli", *args),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=err,
                env=environ,
            )
        running = Running(process, log)
        self.started.append(running)
        return running

    async def controller(self) -> Running:
        running = await self.spawn(
            ["controller", "--config", str(self.world.config), "--migrate"],
            "controller",
            self.environ,
        )
        await poll(lambda: ready(f"{self.world.url}/readyz"), 20)
        return running

    async def agent(self, *flags: str) -> Running:
        port = free_port()
        running = await self.spawn(
            [*self.world.agent_args(f"{HOST}:{port}"), "--log-level", "debug", *flags],
            "agent",
            {**self.environ, "NODE_NAME": SOURCE, "EGRESSWATCH_SOURCE_KIND": "node"},
        )
        running.port = port
        await poll(lambda: ready(f"http://{HOST}:{port}/healthz"), 20)
        return running

    async def close(self) -> None:
        for running in self.started:
            process = running.process
            if process.returncode is None:
                process.terminate()
            try:
                async with asyncio.timeout(20):
                    await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


@pytest.fixture(name="processes")
async def processes_fixture(world: World) -> AsyncIterator[Processes]:
    running = Processes(world)
    yield running
    await running.close()
    for started in running.started:
        assert "Traceback" not in started.log.read_text(), started.log


async def ready(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def agent_metrics(agent: Running) -> dict[str, float]:
    """The agent's /metrics as {series: value} (series with their labels, as exposed)."""
    url = f"http://{HOST}:{agent.port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            found[series] = float(value)
    return found


def when(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def stored(world: World) -> list[tuple[int, str, datetime]]:
    """(row id, target, started_at) of every round of SOURCE in the controller's database."""
    with sqlite3.connect(world.db.removeprefix("sqlite+aiosqlite:///")) as db:
        rows = db.execute(
            "SELECT r.id, t.name, r.started_at FROM rounds r JOIN targets t ON t.id = r.target_id"
            " JOIN sources s ON s.id = r.source_id WHERE s.name = ? ORDER BY r.id",
            (SOURCE,),
        ).fetchall()
    return [(row_id, target, when(started)) for row_id, target, started in rows]


def events(log: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def spilled(path: Path) -> list[Key]:
    """The rounds in a spill file, in order (opening it cuts a torn tail, as the agent would)."""
    spill = SpillFile(path, source=SOURCE, source_kind="node", max_bytes=1 << 30)
    spill.open()
    keys = []
    try:
        while (batch := spill.first()) is not None:
            for target, document in batch.rounds:
                keys.append((target, when(json.loads(document)["started_at"])))
            spill.ack(batch.batch_id)  # only in this reading: the file is read again below
    finally:
        spill.close()
    return keys


async def test_a_sigkilled_agent_delivers_its_spilled_rounds_once_and_in_order_after_a_restart(
    world: World, processes: Processes, dns_server: TestDNSServer, local_servers: LocalServers
) -> None:
    endpoint = await local_servers.https(Reply(200))
    world.write([{"name": t, "url": f"https://{NAME}:{endpoint.port}/"} for t in TARGETS])
    spill_file = world.dir / "agent.spill"
    controller = await processes.controller()
    first = await processes.agent("--spill-file", str(spill_file))

    await poll(lambda: _delivered(first), 20)
    controller.process.kill()
    await controller.process.wait()

    async def spilling() -> dict[str, float]:
        metrics = await agent_metrics(first)
        return metrics if metrics["egresswatch_agent_spill_rounds"] >= 20 else {}

    reported = await poll(spilling, 20)
    first.process.kill()  # SIGKILL: no flush, no goodbye
    await first.process.wait()
    # A copy read now: opening the file below cuts a torn tail, as the agent would.
    copy = world.dir / "copy.spill"
    copy.write_bytes(spill_file.read_bytes())
    size = copy.stat().st_size
    in_file = spilled(copy)
    print(f"\nspill file: {size} B for {len(in_file)} rounds ({size / len(in_file):.0f} B each)")
    assert len(in_file) >= reported["egresswatch_agent_spill_rounds"]

    second = await processes.agent("--spill-file", str(spill_file))
    await asyncio.sleep(0.5)  # it retries a controller that is not there yet
    await processes.controller()

    async def all_in() -> list[tuple[int, str, datetime]]:
        rows = await asyncio.to_thread(stored, world)
        have = {(target, started) for _, target, started in rows}
        return rows if have.issuperset(in_file) else []

    rows = await poll(all_in, 40)
    # Acknowledged: the file is cut back to its header.
    await poll(lambda: _spill_empty(second), 20)

    keys = [(target, started) for _, target, started in rows]
    assert len(keys) == len(set(keys)), "a round was stored twice"
    for target in TARGETS:
        times = [started for _, t, started in rows if t == target]
        assert times == sorted(times), f"{target}: stored out of order"

    # What the first agent ran, in order, and the last point it made durable.
    ran = [(e["target"], when(e["started_at"])) for e in events(first.log, "round buffered")]
    synced = max(e["through"] for e in events(first.log, "spill file synced"))
    have = set(keys)
    lost = [key for key in ran if key not in have]
    print(
        f"\nran {len(ran)} rounds before the SIGKILL; {len(in_file)} were in the spill file "
        f"(the agent reported {reported['egresswatch_agent_spill_rounds']:.0f}); durable through "
        f"round {synced}; lost {len(lost)} (came after the last fsync)"
    )
    assert all(key in have for key in ran[:synced]), "a round made durable was lost"
    assert set(lost) <= set(ran[synced:])
    assert len(lost) <= 200  # a batch: the sink spills when a whole batch is waiting
    assert spill_file.stat().st_size < 200  # the header alone


async def _spill_empty(agent: Running) -> bool:
    return (await agent_metrics(agent))["egresswatch_agent_spill_rounds"] == 0


async def test_the_memory_bound_holds_and_a_full_spill_file_drops_the_oldest_counted(
    world: World, processes: Processes, local_servers: LocalServers
) -> None:
    endpoint = await local_servers.https(Reply(200))
    world.write([{"name": t, "url": f"https://{NAME}:{endpoint.port}/"} for t in TARGETS])
    await processes.controller()
    spill_dir = world.dir / "spill"
    spill_dir.mkdir()
    buffer_mib, spill_mib = 0.0625, 0.0625  # 64 KiB each: about 25 rounds
    agent = await processes.agent(
        "--spill-dir",
        str(spill_dir),
        "--buffer-mib",
        str(buffer_mib),
        "--spill-mib",
        str(spill_mib),
    )
    await poll(lambda: _delivered(agent), 20)
    for running in processes.started[:1]:  # the controller goes away for good
        running.process.kill()
        await running.process.wait()

    samples: list[dict[str, float]] = []

    async def spill_dropped() -> bool:
        metrics = await agent_metrics(agent)
        samples.append(metrics)
        return metrics['egresswatch_agent_rounds_dropped_total{why="spill_full"}'] > 0

    await poll(spill_dropped, 30, every_s=0.1)
    assert all(s["egresswatch_agent_buffer_bytes"] <= buffer_mib * MIB for s in samples)
    assert all(s["egresswatch_agent_spill_bytes"] <= spill_mib * MIB for s in samples)
    assert max(s["egresswatch_agent_spill_rounds"] for s in samples) > 0
    assert (spill_dir / f"{SOURCE}.spill").is_file()
    assert samples[-1]['egresswatch_agent_rounds_dropped_total{why="buffer_full"}'] == 0
    errors = events(
        agent.log,
        "spill file full: the oldest rounds in it are dropped while the controller is away",
    )
    assert len(errors) == 1  # one line for the episode, not one per round
    agent.process.kill()  # a graceful stop would wait for the controller: not the subject here


async def _delivered(agent: Running) -> bool:
    metrics = await agent_metrics(agent)
    return metrics.get('egresswatch_ingest_batches_total{outcome="ok"}', 0) > 0


def test_the_batch_interval_flag_sets_the_sinks_linger() -> None:
    parser = argparse.ArgumentParser()
    add_buffer_flags(parser)
    identity = SourceIdentity(SOURCE, SourceKind.NODE)
    default = buffer_options(parser.parse_args([]), identity)["sink"]
    assert default.batch_interval_s == SinkTuning().batch_interval_s == 5.0
    given = buffer_options(parser.parse_args(["--batch-interval", "0.5"]), identity)["sink"]
    assert given.batch_interval_s == 0.5 and given.spill_interval_s == 1.0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--buffer-mib", "0.01"], "--buffer-mib: 0.01 is too small"),
        (["--spill-mib", "0"], "--spill-mib: 0.0 is too small"),
        (["--spill-dir", "/nonexistent-dir"], "--spill-dir: /nonexistent-dir is not a directory"),
        (["--spill-file", "{other}"], "belongs to another source"),
        (["--spill-file", "{notes}"], "is not an egresswatch spill file"),
        (["--batch-interval", "0"], "--batch-interval: 0 is out of range"),
        (["--batch-interval", "nan"], "--batch-interval: nan is out of range"),
        (["--batch-interval", "301"], "--batch-interval: 301 is out of range"),
    ],
)
def test_bad_buffer_flags_and_another_sources_spill_file_exit_2_naming_the_flag(
    flags: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.spill"
    written = SpillFile(other, source="node-b", source_kind="node", max_bytes=MIB)
    written.open()
    written.close()
    notes = tmp_path / "notes"
    notes.write_text("not a spill file")
    token = tmp_path / "token"
    token.write_text("t")
    flags = [f.format(other=other, notes=notes) for f in flags]
    identity = ["--source", SOURCE, "--source-kind", "node"]
    code = main(
        [
            "agent",
            "--controller",
            "http://127.0.0.1:9",
            "--token-file",
            str(token),
            *identity,
            *flags,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert named in err
    assert flags[0] in err
