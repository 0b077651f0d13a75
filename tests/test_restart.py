"""A controller restart forgets nothing: real processes, SIGKILL, the same database.

`egresswatch controller` and `egresswatch agent` run as processes on loopback against a real
DNS server and a real HTTPS endpoint. The controller is killed with SIGKILL (no flush, no
goodbye) at the moments that matter: while an incident is open, while it recovers, and while
the fault begins, so that the agent's buffered rounds reach a new controller late.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from tests.support.dnsserver import TestDNSServer, dns_server
from tests.support.https import HOST, NAME, LocalServers, Reply, local_servers, pki
from tests.support.service import free_port, poll
from tests.test_agent import TOKEN, TOKEN_ENV, World, finish, get_json, spawn, world

__all__ = ["dns_server", "local_servers", "pki", "world"]  # fixtures, imported explicitly

SOURCE = "node-a"
Spawn = Callable[[], Awaitable[asyncio.subprocess.Process]]


class Processes:
    """The controller and agent processes of one test, killed or stopped at the end."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.environ = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: TOKEN}
        self.controller: asyncio.subprocess.Process | None = None
        self.agent: asyncio.subprocess.Process | None = None
        self.errors: list[str] = []

    async def start_controller(self) -> None:
        self.controller = await spawn(
            ["controller", "--config", str(self.world.config), "--migrate"], self.environ
        )
        await poll(self._ready, 20)

    async def _ready(self) -> bool:
        try:
            status, _ = await get_json(f"{self.world.url}/readyz")
        except OSError:
            return False
        return status == 200

    async def kill_controller(self) -> None:
        assert self.controller is not None
        self.controller.kill()  # SIGKILL: nothing is flushed
        _, err = await self.controller.communicate()
        self.errors.append(err.decode())
        self.controller = None

    async def start_agent(self) -> None:
        self.agent = await spawn(
            self.world.agent_args(f"{HOST}:{free_port()}"),
            {**self.environ, "NODE_NAME": SOURCE, "EGRESSWATCH_SOURCE_KIND": "node"},
        )

    async def close(self) -> None:
        for process in (self.agent, self.controller):
            if process is not None:
                _, err = await finish(process)
                self.errors.append(err)


@pytest.fixture(name="processes")
async def processes_fixture(world: World) -> AsyncIterator[Processes]:
    running = Processes(world)
    yield running
    await running.close()
    for err in running.errors:
        assert "Traceback" not in err, err


def configure(world: World, port: int, *, recover_after: int) -> None:
    world.write([{"name": "shop", "url": f"https://{NAME}:{port}/"}])
    config = yaml.safe_load(world.config.read_text())
    config["detection"] = {"fail_after": 2, "recover_after": recover_after}
    world.config.write_text(yaml.safe_dump(config))


async def api(world: World, path: str) -> Any:
    status, document = await get_json(f"{world.url}{path}")
    assert status == 200, document
    return document


async def incidents(world: World) -> list[dict[str, Any]]:
    return list((await api(world, "/api/v1/incidents?target=shop"))["items"])


async def healthy(world: World) -> bool:
    status = await api(world, "/api/v1/status")
    shop = [t for t in status["targets"] if t["target"] == "shop"]
    return bool(shop) and shop[0]["healthy"] is True and bool(shop[0]["sources"])


async def test_an_incident_survives_sigkill_while_open_and_while_recovering(
    world: World, processes: Processes, dns_server: TestDNSServer, local_servers: LocalServers
) -> None:
    endpoint = await local_servers.https(Reply(200))
    configure(world, endpoint.port, recover_after=4)
    await processes.start_controller()
    await processes.start_agent()
    await poll(lambda: healthy(world), 20)

    dns_server.nxdomain(NAME)
    [opened] = await poll(lambda: incidents(world), 15)
    assert opened["open"] is True and opened["first_failing_step"] == "dns_cluster"

    await processes.kill_controller()
    await asyncio.sleep(1.5)  # the agent buffers failing rounds meanwhile
    await processes.start_controller()
    await asyncio.sleep(2.5)  # failing rounds keep coming: the same incident, not a new one
    [same] = await incidents(world)
    assert (same["id"], same["started_at"], same["open"]) == (
        opened["id"],
        opened["started_at"],
        True,
    )

    dns_server.answer(NAME, a=[HOST])

    async def recovering() -> bool:
        timeline = await api(
            world, f"/api/v1/targets/shop/timeline?source={SOURCE}&step=dns_cluster"
        )
        points = timeline["points"]
        return bool(points) and points[-1]["status"] == "ok"

    await poll(recovering, 10)  # a good round stored; 4 are needed to recover
    [still] = await incidents(world)
    assert still["open"] is True
    await processes.kill_controller()
    await processes.start_controller()

    async def closed() -> dict[str, Any]:
        found = await incidents(world)
        return found[0] if len(found) == 1 and not found[0]["open"] else {}

    ended = await poll(closed, 20)
    assert (ended["id"], ended["started_at"]) == (opened["id"], opened["started_at"])
    notes = [entry["note"] for entry in ended["history"]]
    assert sum(note.startswith("closed") for note in notes) == 1, notes
    await asyncio.sleep(2)  # good rounds keep coming: nothing reopens, nothing closes again
    assert [i["id"] for i in await incidents(world)] == [opened["id"]]
    changes = await api(world, "/api/v1/changes?target=shop&step=dns_cluster")
    flips = [(c["previous"], c["current"]) for c in reversed(changes["items"])]
    assert flips == [("ok", "failing"), ("failing", "ok")], flips
    # It ended at the first good round, which came before the second restart.
    recovered = next(c for c in changes["items"] if c["current"] == "ok")
    assert ended["ended_at"] == recovered["started_at"]


async def test_rounds_buffered_by_the_agent_while_the_controller_is_down_are_judged_in_order(
    world: World, processes: Processes, dns_server: TestDNSServer, local_servers: LocalServers
) -> None:
    endpoint = await local_servers.https(Reply(200))
    configure(world, endpoint.port, recover_after=2)
    await processes.start_controller()
    await processes.start_agent()
    await poll(lambda: healthy(world), 20)

    await processes.kill_controller()
    broken_at = datetime.now(UTC)
    dns_server.nxdomain(NAME)
    await asyncio.sleep(4)  # about 4 failing rounds, buffered by the agent
    restarted_at = datetime.now(UTC)
    await processes.start_controller()

    [incident] = await poll(lambda: incidents(world), 15)
    started = datetime.fromisoformat(incident["started_at"])
    # The failure began while the controller was away: its start is the first failed round
    # the agent buffered, not the restart, nor the first round after it.
    assert broken_at < started < restarted_at
    changes = await api(world, "/api/v1/changes?target=shop")
    kinds = {(c["step"], c["current"]) for c in changes["items"]}
    assert ("dns_cluster", "failing") in kinds
    assert all(c["step"] is not None for c in changes["items"]), "nobody went silent"
