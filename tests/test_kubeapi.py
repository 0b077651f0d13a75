"""The fake API server (tests/support/kubeapi.py) is worth testing against: its fixtures are
valid Kubernetes objects, and the real `kubernetes.aio` client, through a kubeconfig, gets from
it what the API server would give (selectors, resourceVersion, 409, 410, watch streams)."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import kubernetes_validate
import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes.aio.leaderelection.resourcelock.leaselock import LeaseLock
from pydantic import ValidationError

from egresswatch.kube.client import close_client, open_client
from tests.support.kubeapi import FIXTURES, RunningKubeApi, kube_api, load_fixtures

__all__ = ["kube_api"]

# The fixtures are shaped like an AKS cluster of this minor version (nodeInfo.kubeletVersion).
KUBERNETES_VERSION = "1.33"


@pytest.mark.parametrize(
    "obj",
    load_fixtures(),
    ids=lambda o: f"{o['kind']}/{o['metadata'].get('namespace', '-')}/{o['metadata']['name']}",
)
def test_every_fixture_is_a_valid_object(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_validation_would_catch_a_misshapen_fixture() -> None:
    node = copy.deepcopy(next(o for o in load_fixtures() if o["kind"] == "Node"))
    node["status"]["nodeInfo"]["kubeletVersoin"] = "v1.33.2"  # a typo: strict rejects it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(node, KUBERNETES_VERSION, strict=True)


def test_the_fixtures_look_like_aks() -> None:
    objects = load_fixtures()
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "Node", "Pod", "ConfigMap", "NetworkPolicy"} <= kinds
    node = next(o for o in objects if o["kind"] == "Node")
    assert "kubernetes.azure.com/agentpool" in node["metadata"]["labels"]
    assert "node.kubernetes.io/instance-type" in node["metadata"]["labels"]
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    assert names == {"coredns", "coredns-custom"}
    assert len(list(FIXTURES.glob("*.yaml"))) >= 5


def _meta(obj: Any) -> client.V1ObjectMeta:
    meta = obj.metadata
    assert isinstance(meta, client.V1ObjectMeta)
    return meta


def _version(listed: Any) -> int:
    meta = listed.metadata
    assert isinstance(meta, client.V1ListMeta) and meta.resource_version
    return int(meta.resource_version)


def _names(listed: Any) -> set[str]:
    return {str(_meta(item).name) for item in listed.items}


@pytest.fixture
async def core(kube_api: RunningKubeApi) -> AsyncIterator[client.CoreV1Api]:
    api = await open_client(kube_api.kubeconfig)
    try:
        yield client.CoreV1Api(api)
    finally:
        await close_client(api)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app.kubernetes.io/component=pod-agent", {"bx9wq", "t5vhn"}),
        ("app.kubernetes.io/component==pod-agent", {"bx9wq", "t5vhn"}),
        ("app.kubernetes.io/component!=pod-agent", {"qrs7t"}),
        ("app.kubernetes.io/component in (pod-agent, nothing)", {"bx9wq", "t5vhn"}),
        ("app.kubernetes.io/component notin (pod-agent)", {"qrs7t"}),
        ("app", {"qrs7t"}),
        ("!app", {"bx9wq", "t5vhn"}),
        ("pod-template-hash,app.kubernetes.io/name=egresswatch", {"bx9wq", "t5vhn"}),
    ],
)
async def test_label_selectors(core: client.CoreV1Api, selector: str, expected: set[str]) -> None:
    pods = await core.list_namespaced_pod("payments", label_selector=selector)
    assert {name.rsplit("-", 1)[1] for name in _names(pods)} == expected


async def test_field_selector_and_a_bad_selector(core: client.CoreV1Api) -> None:
    pods = await core.list_pod_for_all_namespaces(
        field_selector="spec.nodeName=aks-nodepool1-12345678-vmss000002"
    )
    assert _names(pods) == {
        "egresswatch-node-c2mfl",
        "payments-api-5b8c9d7f6-qrs7t",
    }
    with pytest.raises(ApiException) as caught:
        await core.list_namespaced_pod("payments", field_selector="status.phase=Running")
    assert caught.value.status == 400


async def test_writes_bump_the_resource_version_and_a_stale_update_is_a_409(
    core: client.CoreV1Api, kube_api: RunningKubeApi
) -> None:
    before = _version(await core.list_namespace())
    body = client.V1Namespace(metadata=client.V1ObjectMeta(name="new"))
    created = await core.create_namespace(body)
    assert int(str(_meta(created).resource_version)) == before + 1
    _meta(created).labels = {"team": "x"}
    updated = await core.replace_namespace("new", created)
    assert _meta(updated).labels == {"team": "x"}
    with pytest.raises(ApiException) as caught:
        await core.replace_namespace("new", created)  # still holds the old resourceVersion
    assert caught.value.status == 409
    patched = await core.patch_namespace("new", {"metadata": {"labels": {"team": "y"}}})
    assert _meta(patched).labels == {"team": "y"}
    await core.delete_namespace("new")
    with pytest.raises(ApiException) as caught:
        await core.read_namespace("new")
    assert caught.value.status == 404
    assert kube_api.api.rv == before + 4


async def test_a_resume_from_a_compacted_version_gets_the_api_servers_410_event(
    core: client.CoreV1Api, kube_api: RunningKubeApi
) -> None:
    """The API server answers 200 and one ERROR event holding a Status (code 410, reason
    Expired), then ends the stream."""
    old = str(_version(await core.list_namespace()))
    kube_api.api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    kube_api.api.expire_history()
    response = await core.list_namespace_without_preload_content(watch=True, resource_version=old)
    assert response.status == 200
    lines = (await response.read()).splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"


async def test_no_token_is_a_401(kube_api: RunningKubeApi) -> None:
    configuration = client.Configuration(host=kube_api.url)
    async with client.ApiClient(configuration) as api:
        with pytest.raises(ApiException) as caught:
            await client.CoreV1Api(api).list_node()
    assert caught.value.status == 401


async def test_the_known_lease_lock_create_fault_of_kubernetes_aio_37(
    kube_api: RunningKubeApi,
) -> None:
    """Issue 9 names it: LeaseLock.create passes pretty=True to a StrictStr parameter. This
    test fails the day the client is fixed, so the work-around can go."""
    api = await open_client(kube_api.kubeconfig)
    try:
        lock = LeaseLock("egresswatch", "egresswatch", "me", api)
        record = LeaderElectionRecord("me", "15", "2026-12-04T00:00:00Z", "2026-12-04T00:00:00Z")
        with pytest.raises(ValidationError, match="pretty"):
            await lock.create("egresswatch", "egresswatch", record)
    finally:
        await close_client(api)
