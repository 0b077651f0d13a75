"""The reflector (kube/watch.py) with the real `kubernetes.aio` client against the fake API
server (tests/support/kubeapi.py): list, watch, bookmarks, a 410 that forces a relist, a dropped
watch resumed from its resourceVersion, an API server away and back."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client

from egresswatch.kube.api_calls import NODES, PODS
from egresswatch.kube.client import KubeClientError, close_client, open_client
from egresswatch.kube.watch import Backoff, Reflector, WatchSpec
from tests.support.kubeapi import (
    FakeKubeApi,
    RunningKubeApi,
    kube_api,
    load_fixtures,
    start_kube_api,
    write_kubeconfig,
)
from tests.support.service import free_port, wait_for

__all__ = ["kube_api"]

AGENTS = "app.kubernetes.io/component=pod-agent"


def labels_of(raw: dict[str, Any]) -> dict[str, str]:
    return dict(raw["metadata"].get("labels") or {})


@pytest.fixture
async def api(kube_api: RunningKubeApi) -> AsyncIterator[client.ApiClient]:
    api = await open_client(kube_api.kubeconfig)
    try:
        yield api
    finally:
        await close_client(api)


async def _started(reflector: Reflector[Any]) -> asyncio.Task[None]:
    task = reflector.start()
    async with asyncio.timeout(10):
        await reflector.synced.wait()
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _pod(fake: FakeKubeApi, name: str) -> dict[str, Any]:
    found = fake.get("Pod", name, "payments")
    assert found is not None
    return copy.deepcopy(found)


async def test_list_then_watch_follows_adds_changes_and_deletes(
    kube_api: RunningKubeApi, api: client.ApiClient
) -> None:
    fake = kube_api.api
    spec = WatchSpec(PODS, namespace="payments", label_selector=AGENTS)
    reflector = Reflector(api, spec, labels_of, page_size=1)
    task = await _started(reflector)
    try:
        assert sorted(reflector.cache) == [
            "payments/egresswatch-probe-7d9f8b6c5d-bx9wq",
            "payments/egresswatch-probe-7d9f8b6c5d-t5vhn",
        ]
        assert reflector.stats.lists == 1
        # The list came in pages of one, and every request carried the selector.
        pages = [q for m, p, q in fake.requests if p.endswith("/pods") and "watch" not in q]
        assert len(pages) == 2 and all(q["labelSelector"] == AGENTS for q in pages)

        new = _pod(fake, "egresswatch-probe-7d9f8b6c5d-bx9wq")
        new["metadata"]["name"] = "egresswatch-probe-7d9f8b6c5d-zzzzz"
        fake.apply(new)
        fake.remove("Pod", "egresswatch-probe-7d9f8b6c5d-t5vhn", "payments")
        relabelled = _pod(fake, "egresswatch-probe-7d9f8b6c5d-bx9wq")
        relabelled["metadata"]["labels"]["release"] = "canary"
        fake.apply(relabelled)
        await wait_for(
            lambda: (
                sorted(reflector.cache)
                == [
                    "payments/egresswatch-probe-7d9f8b6c5d-bx9wq",
                    "payments/egresswatch-probe-7d9f8b6c5d-zzzzz",
                ]
                and reflector.cache["payments/egresswatch-probe-7d9f8b6c5d-bx9wq"].get("release")
                == "canary"
            )
        )
        # A pod that stops matching the selector leaves the cache (the server says DELETED).
        relabelled["metadata"]["labels"]["app.kubernetes.io/component"] = "something-else"
        fake.apply(relabelled)
        await wait_for(lambda: len(reflector.cache) == 1)
        # Bookmarks move the resourceVersion while nothing changes.
        await wait_for(lambda: reflector.stats.bookmarks >= 1)
        assert reflector.resource_version == str(fake.rv)
        assert reflector.stats.lists == 1 and reflector.stats.errors == 0
    finally:
        await _stop(task)


@pytest.fixture
async def agents(api: client.ApiClient) -> AsyncIterator[Reflector[dict[str, str]]]:
    """A reflector of the agent pods in payments, listed and watching; stopped after."""
    spec = WatchSpec(PODS, namespace="payments", label_selector=AGENTS)
    reflector = Reflector(api, spec, labels_of)
    task = await _started(reflector)
    await wait_for(lambda: reflector.stats.resumes >= 1)
    try:
        yield reflector
    finally:
        await _stop(task)


async def test_a_410_on_resume_forces_a_relist_that_catches_up(
    kube_api: RunningKubeApi, agents: Reflector[dict[str, str]]
) -> None:
    fake = kube_api.api
    # While the watch is down, a pod goes and the history is compacted: the resume from the
    # old resourceVersion gets the ERROR event with code 410, and only a new list sees the loss.
    fake.drop_watches()
    fake.remove("Pod", "egresswatch-probe-7d9f8b6c5d-t5vhn", "payments")
    fake.expire_history()
    await wait_for(lambda: agents.stats.gone >= 1 and agents.stats.lists >= 2)
    assert list(agents.cache) == ["payments/egresswatch-probe-7d9f8b6c5d-bx9wq"]
    assert agents.stats.errors == 0


async def test_a_dropped_watch_resumes_from_its_resource_version_without_a_relist(
    kube_api: RunningKubeApi, agents: Reflector[dict[str, str]]
) -> None:
    fake = kube_api.api
    fake.drop_watches()
    fake.remove("Pod", "egresswatch-probe-7d9f8b6c5d-t5vhn", "payments")
    await wait_for(lambda: len(agents.cache) == 1)
    assert agents.stats.lists == 1 and agents.stats.resumes >= 2
    resumed = [q for _, _, q in fake.requests if q.get("watch") == "true"][1:]
    assert resumed and all(q["resourceVersion"] != "0" for q in resumed)


async def test_metadata_only_nodes_by_label_selector(
    kube_api: RunningKubeApi, api: client.ApiClient
) -> None:
    fake = kube_api.api
    seen: list[dict[str, Any]] = []

    def project(raw: dict[str, Any]) -> dict[str, str]:
        seen.append(raw)
        return labels_of(raw)

    spec = WatchSpec(
        NODES, label_selector="kubernetes.azure.com/agentpool in (nodepool1)", metadata_only=True
    )
    reflector = Reflector(api, spec, project)
    task = await _started(reflector)
    try:
        assert len(reflector.cache) == 3
        assert all(raw["kind"] == "PartialObjectMetadata" and "status" not in raw for raw in seen)
        fake.remove("Node", "aks-nodepool1-12345678-vmss000002")  # a scale-down
        await wait_for(lambda: len(reflector.cache) == 2)
    finally:
        await _stop(task)


async def test_an_api_server_away_is_retried_with_backoff_and_nothing_raises(
    tmp_path: Path,
) -> None:
    """Nothing listens at first: the reflector waits and retries; once a server answers on
    that port it lists and is synced."""
    port = free_port()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    api = await open_client(kubeconfig)
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0.01)

    spec = WatchSpec(PODS, namespace="payments", label_selector=AGENTS)
    reflector = Reflector(api, spec, labels_of, backoff=Backoff(0.5, 4.0), sleep=sleep)
    task = reflector.start()
    runner = None
    try:
        await wait_for(lambda: reflector.stats.errors >= 4)
        assert not reflector.synced.is_set() and delays[-1] <= 4.0
        fake = FakeKubeApi(load_fixtures(), bookmark_every_s=0.2)
        runner, _ = await start_kube_api(fake, tmp_path, port=port)
        async with asyncio.timeout(10):
            await reflector.synced.wait()
        assert len(reflector.cache) == 2
    finally:
        await _stop(task)
        await close_client(api)
        if runner is not None:
            fake.drop_watches()
            await runner.cleanup()


async def test_a_bad_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KubeClientError, match=str(tmp_path / "missing")):
        await open_client(tmp_path / "missing")


async def test_the_cache_ends_equal_to_the_server_through_churn_and_drops(
    kube_api: RunningKubeApi, agents: Reflector[dict[str, str]]
) -> None:
    """Replacements written while watches are dropped and resumed (so some land while the
    server is catching a resumed watch up): the cache ends holding exactly the server's pods."""
    fake = kube_api.api
    template = _pod(fake, "egresswatch-probe-7d9f8b6c5d-bx9wq")
    for serial in range(300):
        pod = copy.deepcopy(template)
        pod["metadata"]["name"] = f"egresswatch-probe-7d9f8b6c5d-c{serial:04d}"
        fake.apply(pod)
        if serial >= 2:
            fake.remove("Pod", f"egresswatch-probe-7d9f8b6c5d-c{serial - 2:04d}", "payments")
        if serial % 10 == 0:
            fake.drop_watches()
        await asyncio.sleep(0)
    served = {
        f"payments/{name}"
        for (kind, _, name) in fake.objects
        if kind.kind == "Pod" and kind.namespaced and name.startswith("egresswatch-probe")
    }
    await wait_for(lambda: set(agents.cache) == served)
    assert agents.stats.gone == 0 and agents.stats.errors == 0
