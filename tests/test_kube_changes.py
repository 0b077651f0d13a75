"""What changed in the cluster, and the NetworkPolicies in the diagnosis, through the real
controller (`egresswatch controller` watching the fake API server) and a real pod agent.

The designated namespace's policies (tests/fixtures/kube/cluster/networkpolicies.yaml) deny
every egress but DNS to kube-dns and TCP 443 out; the target listens on another port. While it
answers, nothing is judged; when it stops answering (connection refused), the pod's failure is
the policies' doing: the incident's suspect is network_policy with the policies' names in its
evidence, and it carries the changes made just before it (the policy edited, a CoreDNS pod
restarted), not the change of a node the source does not run on. A CiliumNetworkPolicy (its
CRD installed in the fake) is named as present and not evaluated.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.support.dnsserver import dns_server
from tests.support.https import LocalServers, Reply, local_servers, pki
from tests.support.kubeapi import RunningKubeApi, kube_api
from tests.support.service import poll
from tests.test_agent import World, world
from tests.test_kube_controller import NODE, POD_SOURCE, Cluster, api, cluster, configure

__all__ = ["cluster", "dns_server", "kube_api", "local_servers", "pki", "world"]

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kube" / "networkpolicies"
POD_AGENT = {
    "POD_NAME": "egresswatch-probe-7d9f8b6c5d-bx9wq",
    "POD_NAMESPACE": "payments",
    "NODE_NAME": NODE(0),
    "EGRESSWATCH_SOURCE_KIND": "pod",
    "EGRESSWATCH_WORKLOAD": "egresswatch-probe",
}


def _edited(kube_api: RunningKubeApi, kind: str, name: str, namespace: str | None) -> Any:
    found = kube_api.api.get(kind, name, namespace)
    assert found is not None, (kind, name)
    return copy.deepcopy(found)


def _cluster_changes(kube_api: RunningKubeApi) -> None:
    """The changes an operator made: the HTTPS policy now allows 8443 as well, one CoreDNS
    pod restarted, and node 1 (where this source does not run) went NotReady."""
    policy = _edited(kube_api, "NetworkPolicy", "allow-https-out", "payments")
    policy["spec"]["egress"][0]["ports"].append({"protocol": "TCP", "port": 8443})
    kube_api.api.apply(policy)
    dns = _edited(kube_api, "Pod", "coredns-6f7b5c8d9c-x7k2p", "kube-system")
    dns["status"]["containerStatuses"][0]["restartCount"] = 1
    kube_api.api.apply(dns)
    node = _edited(kube_api, "Node", NODE(1), None)
    for condition in node["status"]["conditions"]:
        if condition["type"] == "Ready":
            condition["status"] = "False"
    kube_api.api.apply(node)


async def test_the_incident_names_the_denying_policy_and_carries_the_changes_before_it(
    world: World,
    kube_api: RunningKubeApi,
    local_servers: LocalServers,
    cluster: Cluster,
) -> None:
    server = await local_servers.https(Reply(200))
    configure(world, kube_api, server.port)
    # Cilium is installed, with a policy in the source's namespace the evaluator cannot read.
    kube_api.api.install("cilium.io")
    cilium = yaml.safe_load((FIXTURES / "cilium-deny.yaml").read_text())
    cilium["metadata"]["namespace"] = "payments"
    kube_api.api.apply(cilium)
    await cluster.controller()
    await cluster.agent("pod", POD_AGENT)

    async def healthy() -> bool:
        status = await api(world, "/api/v1/status")
        sources = status["targets"][0]["sources"] if status["targets"] else []
        return any(s["source"] == POD_SOURCE for s in sources) and status["targets"][0]["healthy"]

    await poll(healthy, 30)
    _cluster_changes(kube_api)
    await server.close()  # the target stops answering: connection refused

    last: dict[str, Any] = {}

    async def opened() -> dict[str, Any]:
        # The policy edit reaches the controller through its watch; on a loaded machine the
        # first failed rounds may be judged before it arrives (the old policy allowed the
        # port). The verdict follows once the new suspect held for fail_after rounds.
        nonlocal last
        items = (await api(world, "/api/v1/incidents"))["items"]
        last = dict(items[0]) if items else {}
        good = last.get("cluster_changes") and last.get("suspect") == "network_policy"
        return last if good else {}

    try:
        incident = await poll(opened, 40)
    except TimeoutError:
        raise AssertionError(f"no network_policy incident with changes: {last}") from None
    assert incident["suspect"] == "network_policy", incident
    assert incident["first_failing_step"] == "tcp_connect"
    evidence = " ".join(incident["evidence"])
    assert "payments/default-deny-egress" in evidence and "payments/allow-https-out" in evidence
    assert (
        "present and not evaluated: CiliumNetworkPolicy.cilium.io payments/deny-egress" in evidence
    )
    summaries = [c["summary"] for c in incident["cluster_changes"]]
    assert summaries == [
        "NetworkPolicy payments/allow-https-out changed: spec.egress: rules changed",
        "Pod kube-system/coredns-6f7b5c8d9c-x7k2p restarted: restartCount 0 → 1",
    ], summaries  # node 1's NotReady is no concern of a pod on node 0
    one = await api(world, f"/api/v1/incidents/{incident['id']}")
    assert one["cluster_changes"] == incident["cluster_changes"]

    diagnosis = await api(world, "/api/v1/targets/shop/diagnosis")
    (source,) = diagnosis["sources"]
    assert source["verdict"]["suspect"] == "network_policy", source
    assert "payments/default-deny-egress" in " ".join(source["verdict"]["evidence"])
    assert diagnosis["incident"]["cluster_changes"] == incident["cluster_changes"]
