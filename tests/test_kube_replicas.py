"""Two controller replicas on one PostgreSQL, a Lease on the fake API server: real processes.

Both replicas accept ingest and serve the API; exactly one leads (`egresswatch_leader`), and
only the leader judges, from the rounds table, what either replica stored. The agent posts to
the replica that does not lead. The leader is SIGKILLed while an incident is open: the other
takes the Lease over within the lease duration (+ the retry period), and the incident stays the
same one (id, start), open, never duplicated, closed or reopened; after the repair it closes
once.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.databases import create_pg_database, drop_pg_database, pg_server_url
from tests.support.dnsserver import TestDNSServer, dns_server
from tests.support.https import HOST, NAME, LocalServers, Reply, local_servers, pki
from tests.support.kubeapi import RunningKubeApi, kube_api
from tests.support.service import free_port, poll
from tests.test_agent import TOKEN, TOKEN_ENV, World, finish, get_json, spawn, world

__all__ = ["dns_server", "kube_api", "local_servers", "pki", "world"]

SOURCE = "node-a"
LEASE_S, RENEW_S, RETRY_S = 3.0, 2.0, 0.5
CLOSED = "127.0.0.2"  # the target's name points here in the fault: nothing listens (refused)


class Replica:
    """One `egresswatch controller` process, its identity and its listen address."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.url = f"http://{HOST}:{free_port()}"
        self.process: asyncio.subprocess.Process | None = None


class Replicas:
    """The controllers and the agent of one test; stopped (or killed) at the end."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.environ = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: TOKEN}
        self.a, self.b = Replica("controller-a"), Replica("controller-b")
        self.agent: asyncio.subprocess.Process | None = None
        self.errors: list[str] = []

    async def start(self, replica: Replica) -> None:
        replica.process = await spawn(
            [
                "controller",
                "--config",
                str(self.world.config),
                "--migrate",
                "--listen",
                replica.url.removeprefix("http://"),
            ],
            {**self.environ, "POD_NAME": replica.identity, "POD_NAMESPACE": "egresswatch"},
        )

        async def ready() -> bool:
            try:
                status, _ = await get_json(f"{replica.url}/readyz")
            except OSError:
                return False
            return status == 200

        await poll(ready, 30)

    async def start_agent(self, controller: Replica) -> None:
        args = self.world.agent_args(f"{HOST}:{free_port()}")
        args[args.index("--controller") + 1] = controller.url
        self.agent = await spawn(
            args, {**self.environ, "NODE_NAME": SOURCE, "EGRESSWATCH_SOURCE_KIND": "node"}
        )

    async def kill(self, replica: Replica) -> None:
        assert replica.process is not None
        replica.process.kill()  # SIGKILL: no flush, no release of the Lease
        await replica.process.communicate()
        replica.process = None

    async def close(self) -> None:
        for process in (self.agent, self.a.process, self.b.process):
            if process is not None:
                _, err = await finish(process)
                self.errors.append(err)


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    server = pg_server_url()
    url = await create_pg_database(server)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        await drop_pg_database(server, str(url.database))


@pytest.fixture
async def replicas(
    world: World, kube_api: RunningKubeApi, pg_database: str
) -> AsyncIterator[Replicas]:
    """Stopped before the API server and the database go (they are its dependencies)."""
    running = Replicas(world)
    yield running
    await running.close()
    for err in running.errors:
        assert "Traceback" not in err, err


def configure(world: World, kube: RunningKubeApi, database: str, port: int) -> None:
    world.db = database
    world.write([{"name": "shop", "url": f"https://{NAME}:{port}/"}])
    config = yaml.safe_load(world.config.read_text())
    config["detection"] = {"fail_after": 2, "recover_after": 2}
    config["kubernetes"] = {
        "enabled": True,
        "kubeconfig": str(kube.kubeconfig),
        "node_selector": "kubernetes.azure.com/agentpool=nodepool1",
        "pod_namespaces": ["payments"],
        "leader_election": {
            "lease_duration": f"{LEASE_S}s",
            "renew_deadline": f"{RENEW_S}s",
            "retry_period": f"{RETRY_S}s",
        },
    }
    world.config.write_text(yaml.safe_dump(config))


async def leaders(replicas: Replicas) -> dict[str, float]:
    """identity -> egresswatch_leader, as each running replica exports it."""
    found: dict[str, float] = {}
    for replica in (replicas.a, replicas.b):
        if replica.process is None:
            continue
        async with asyncio.timeout(5):
            status, text = await _text(f"{replica.url}/metrics")
        assert status == 200
        for line in text.splitlines():
            if line.startswith(f'egresswatch_leader{{identity="{replica.identity}"}}'):
                found[replica.identity] = float(line.split()[-1])
    return found


async def _text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def api(replica: Replica, path: str) -> Any:
    status, document = await get_json(f"{replica.url}{path}")
    assert status == 200, document
    return document


async def incidents(replica: Replica) -> list[dict[str, Any]]:
    return list((await api(replica, "/api/v1/incidents?target=shop"))["items"])


async def test_the_lease_holder_judges_and_a_sigkilled_leader_is_replaced_without_a_new_incident(
    world: World,
    replicas: Replicas,
    kube_api: RunningKubeApi,
    pg_database: str,
    dns_server: TestDNSServer,
    local_servers: LocalServers,
) -> None:
    endpoint = await local_servers.https(Reply(200))
    configure(world, kube_api, pg_database, endpoint.port)
    a, b = replicas.a, replicas.b
    await replicas.start(a)

    async def a_leads() -> bool:
        return (await leaders(replicas)) == {a.identity: 1.0}

    await poll(a_leads, 10)
    await replicas.start(b)
    assert await leaders(replicas) == {a.identity: 1.0, b.identity: 0.0}  # exactly one leads
    await replicas.start_agent(b)  # the follower stores; the leader judges from the table

    async def healthy() -> bool:
        status = await api(b, "/api/v1/status")
        shop = [t for t in status["targets"] if t["target"] == "shop"]
        return bool(shop) and shop[0]["healthy"] is True and bool(shop[0]["sources"])

    await poll(healthy, 20)
    dns_server.answer(NAME, a=[CLOSED])  # the name now points at a closed port
    [opened] = await poll(lambda: incidents(b), 15)
    assert opened["open"] is True and opened["first_failing_step"] == "tcp_connect"
    lease = kube_api.api.get("Lease", "egresswatch-controller", "egresswatch")
    assert lease is not None and lease["spec"]["holderIdentity"] == a.identity

    killed = time.monotonic()
    await replicas.kill(a)

    async def b_leads() -> bool:
        return (await leaders(replicas)) == {b.identity: 1.0}

    await poll(b_leads, LEASE_S + RETRY_S + 5, every_s=0.1)
    took = time.monotonic() - killed
    print(f"hand-over after SIGKILL: {took:.2f} s (lease {LEASE_S} s, retry {RETRY_S} s)")
    lease = kube_api.api.get("Lease", "egresswatch-controller", "egresswatch")
    assert lease is not None
    assert (lease["spec"]["holderIdentity"], lease["spec"]["leaseTransitions"]) == (b.identity, 1)

    await asyncio.sleep(2.5)  # failing rounds keep coming to b, judged by b now
    [same] = await incidents(b)
    assert (same["id"], same["started_at"], same["open"]) == (
        opened["id"],
        opened["started_at"],
        True,
    )

    dns_server.answer(NAME, a=[HOST])  # repaired

    async def closed() -> dict[str, Any]:
        found = await incidents(b)
        return found[0] if len(found) == 1 and not found[0]["open"] else {}

    ended = await poll(closed, 20)
    assert (ended["id"], ended["started_at"]) == (opened["id"], opened["started_at"])
    notes = [entry["note"] for entry in ended["history"]]
    assert sum(note.startswith("closed") for note in notes) == 1, notes
    await asyncio.sleep(1.5)  # good rounds keep coming: nothing reopens, nothing closes again
    assert [i["id"] for i in await incidents(b)] == [opened["id"]]
    changes = await api(b, "/api/v1/changes?target=shop&step=tcp_connect")
    flips = [(c["previous"], c["current"]) for c in reversed(changes["items"])]
    assert flips == [("ok", "failing"), ("failing", "ok")], flips
