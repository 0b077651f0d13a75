"""The controller with `kubernetes.enabled`, as real processes: `egresswatch controller`
watching the fake API server through a kubeconfig, and real agents on loopback.

A designated source with no agent is `missing` in /api/v1/status and in
`egresswatch_sources{state}`, never a failing source and never an incident; a Node that leaves
retires its source, which then stops going stale and leaves the status.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from egresswatch.controller.api.query import ApiError
from egresswatch.controller.ingest.batch_body import parse_batch
from egresswatch.storage import Store, make_engine
from tests.support.dnsserver import dns_server
from tests.support.https import HOST, NAME, LocalServers, Reply, local_servers, pki
from tests.support.kubeapi import RunningKubeApi, kube_api
from tests.support.service import free_port, poll
from tests.test_agent import TOKEN, TOKEN_ENV, World, finish, get_json, spawn, world

__all__ = ["dns_server", "kube_api", "local_servers", "pki", "world"]

NODE = "aks-nodepool1-12345678-vmss00000{}".format
POD_SOURCE = f"payments/egresswatch-probe@{NODE(0)}"


def configure(world: World, kube_api: RunningKubeApi, port: int) -> None:
    world.write([{"name": "shop", "url": f"https://{NAME}:{port}/"}])
    config = yaml.safe_load(world.config.read_text())
    config["detection"] = {"fail_after": 2, "recover_after": 1, "stale_after": 2}
    config["kubernetes"] = kube_api.settings()
    world.config.write_text(yaml.safe_dump(config))


class Cluster:
    """The controller and agent processes of one test, stopped at the end."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.environ = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: TOKEN}
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.errors: list[str] = []

    async def controller(self) -> None:
        self.processes["controller"] = await spawn(
            ["controller", "--config", str(self.world.config), "--migrate"], self.environ
        )

        async def ready() -> bool:
            try:
                status, _ = await get_json(f"{self.world.url}/readyz")
            except OSError:
                return False
            return status == 200

        await poll(ready, 20)

    async def agent(
        self, key: str, downward_api: dict[str, str], token_file: Path | None = None
    ) -> None:
        """An agent with the Downward API's environment and `token_file` (default: the
        world's, holding the agents' shared token)."""
        world = self.world
        self.processes[key] = await spawn(
            [
                "agent",
                "--controller",
                world.url,
                "--token-file",
                str(token_file or world.token_file),
                "--listen",
                f"{HOST}:{free_port()}",
                "--resolv-conf",
                str(world.resolv),
                "--ca-file",
                str(world.pki.ca_file),
            ],
            {**self.environ, **downward_api},
        )

    async def stop(self, key: str) -> None:
        _, err = await finish(self.processes.pop(key))
        self.errors.append(err)


@pytest.fixture
async def cluster(world: World) -> AsyncIterator[Cluster]:
    running = Cluster(world)
    yield running
    for key in list(running.processes):
        await running.stop(key)
    for err in running.errors:
        assert "Traceback" not in err, err


async def api(world: World, path: str) -> Any:
    status, document = await get_json(f"{world.url}{path}")
    assert status == 200, document
    return document


async def reporting(world: World, *sources: str) -> dict[str, Any]:
    """The status once every one of `sources` is designated and reporting (30 s at most)."""

    async def all_report() -> dict[str, Any]:
        status = await api(world, "/api/v1/status")
        states = _states(status)
        return dict(status) if all(states.get(s) == "reporting" for s in sources) else {}

    return await poll(all_report, 30)


def _states(status: dict[str, Any]) -> dict[str, str]:
    return {s["source"]: s["state"] for s in status["designated"]["sources"]}


async def _metric(world: World, state: str) -> float | None:
    async with asyncio.timeout(5):
        text = await _metrics_text(world)
    for line in text.splitlines():
        if line.startswith(f'egresswatch_sources{{state="{state}"}}'):
            return float(line.split()[-1])
    return None


async def _metrics_text(world: World) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{world.url}/metrics") as response:
        return await response.text()


async def test_missing_and_retired_sources_through_the_real_controller(
    world: World,
    kube_api: RunningKubeApi,
    local_servers: LocalServers,
    cluster: Cluster,
) -> None:
    port = (await local_servers.https(Reply(200))).port
    configure(world, kube_api, port)
    await cluster.controller()
    # The pod agent of node 0, as the chart runs it, and the node agent of node 2.
    await cluster.agent(
        "pod",
        {
            "POD_NAME": "egresswatch-probe-7d9f8b6c5d-bx9wq",
            "POD_NAMESPACE": "payments",
            "NODE_NAME": NODE(0),
            "EGRESSWATCH_SOURCE_KIND": "pod",
            "EGRESSWATCH_WORKLOAD": "egresswatch-probe",
        },
    )
    await cluster.agent("node2", {"NODE_NAME": NODE(2), "EGRESSWATCH_SOURCE_KIND": "node"})

    status = await reporting(world, POD_SOURCE, NODE(2))
    assert status["designated"]["synced"] is True
    assert _states(status) == {
        NODE(0): "missing",
        NODE(1): "missing",
        NODE(2): "reporting",
        POD_SOURCE: "reporting",
        f"payments/egresswatch-probe@{NODE(1)}": "missing",
    }
    pod = next(s for s in status["designated"]["sources"] if s["source"] == POD_SOURCE)
    assert pod["pods"] == [{"name": "egresswatch-probe-7d9f8b6c5d-bx9wq", "ip": "10.244.0.21"}]
    assert pod["workload"] == {
        "namespace": "payments",
        "kind": "Deployment",
        "name": "egresswatch-probe",
    }
    # Each source's node came with its batches (NODE_NAME) and is stored with it.
    store = Store(make_engine(world.db))
    try:
        nodes = {s.name: s.node for s in await store.sources()}
    finally:
        await store.engine.dispose()
    assert nodes[POD_SOURCE] == NODE(0) and nodes[NODE(2)] == NODE(2)
    # Missing sources are no connectivity failure: the target is healthy, and the sources it
    # lists are the ones that report.
    shop = status["targets"][0]
    assert shop["healthy"] is True
    assert {s["source"] for s in shop["sources"]} == {POD_SOURCE, NODE(2)}

    async def counted() -> bool:
        return await _metric(world, "missing") == 3 and await _metric(world, "reporting") == 2

    await poll(counted, 15)

    # Node 2 is scaled down: its agent dies with it, the Node leaves.
    await cluster.stop("node2")
    kube_api.api.remove("Pod", "egresswatch-node-c2mfl", "egresswatch")
    kube_api.api.remove("Node", NODE(2))

    async def retired_and_gone() -> dict[str, Any]:
        status = await api(world, "/api/v1/status")
        listed = {s["source"] for s in status["targets"][0]["sources"]}
        if NODE(2) in status["designated"]["retired"] and NODE(2) not in listed:
            return dict(status)
        return {}

    status = await poll(retired_and_gone, 30)
    assert NODE(2) not in _states(status)
    assert await _metric(world, "retired") == 1
    # It never went stale: no unknown change, and no incident at all.
    changes = await api(world, f"/api/v1/changes?source={NODE(2)}")
    assert [c for c in changes["items"] if c["to"] == "unknown"] == []
    incidents = await api(world, "/api/v1/incidents")
    assert incidents["items"] == []


def test_a_bad_source_node_is_a_400_naming_the_field() -> None:
    body = b'{"source": "s", "source_node": "", "batch_id": "b", "rounds": []}'
    with pytest.raises(ApiError) as caught:
        parse_batch(body)
    assert "source_node" in str(caught.value.fields())
