"""Agent identity as real processes: `egresswatch agent`s whose `--token-file` holds a
projected-like service-account token (as the chart mounts at
/var/run/secrets/tokens/egresswatch) post to a real `egresswatch controller` that checks it by
TokenReview against the fake API server. Each token is good for its own source only.
"""

from __future__ import annotations

import yaml

from tests.support.dnsserver import dns_server
from tests.support.https import LocalServers, Reply, local_servers, pki
from tests.support.kubeapi import RunningKubeApi, kube_api
from tests.test_agent import World, world
from tests.test_kube_controller import (
    NODE,
    POD_SOURCE,
    Cluster,
    _states,
    cluster,
    configure,
    reporting,
)

__all__ = ["cluster", "dns_server", "kube_api", "local_servers", "pki", "world"]

POD0 = "egresswatch-probe-7d9f8b6c5d-bx9wq"
THEIRS = f"payments/egresswatch-probe@{NODE(1)}"


def _pod_agent(node: str) -> dict[str, str]:
    return {
        "POD_NAME": POD0,
        "POD_NAMESPACE": "payments",
        "NODE_NAME": node,
        "EGRESSWATCH_SOURCE_KIND": "pod",
        "EGRESSWATCH_WORKLOAD": "egresswatch-probe",
    }


async def test_agents_with_projected_tokens_post_for_themselves_only(
    world: World, kube_api: RunningKubeApi, local_servers: LocalServers, cluster: Cluster
) -> None:
    port = (await local_servers.https(Reply(200))).port
    configure(world, kube_api, port)
    config = yaml.safe_load(world.config.read_text())
    config["kubernetes"]["node_agent_service_account"] = "egresswatch/egresswatch-agent"
    world.config.write_text(yaml.safe_dump(config))
    issued = kube_api.api.token_reviews
    files = {}
    tokens = {
        "pod": issued.issue("payments", "egresswatch-agent", pod=POD0, node=NODE(0)),
        # The same pod's token, in an agent that says it runs on node 1: not its source.
        "impostor": issued.issue("payments", "egresswatch-agent", pod=POD0, node=NODE(0)),
        "node2": issued.issue(
            "egresswatch", "egresswatch-agent", pod="egresswatch-node-c2mfl", node=NODE(2)
        ),
    }
    for key, token in tokens.items():
        files[key] = world.token_file.with_name(f"projected-{key}")
        files[key].write_text(token)
    await cluster.controller()
    await cluster.agent("pod", _pod_agent(NODE(0)), files["pod"])
    await cluster.agent("impostor", _pod_agent(NODE(1)), files["impostor"])
    node_agent = {"NODE_NAME": NODE(2), "EGRESSWATCH_SOURCE_KIND": "node"}
    await cluster.agent("node2", node_agent, files["node2"])

    status = await reporting(world, POD_SOURCE, NODE(2))
    assert _states(status)[THEIRS] == "missing"
    shop = status["targets"][0]
    assert {s["source"] for s in shop["sources"]} == {POD_SOURCE, NODE(2)}
    # Reviews are cached: a handful per token, not one per request.
    assert 3 <= issued.reviews <= 2 * len(tokens), issued.reviews

    await cluster.stop("impostor")
    impostor_log = cluster.errors[-1]
    # Refused at its plan already (the batches would be refused the same way, 403 naming
    # `source`: tests/test_api_tokenreview.py), and it keeps asking, losing nothing.
    assert f"answered 403: source: this agent's token is good for '{POD_SOURCE}' only" in (
        impostor_log
    )
    for key in ("pod", "node2", "controller"):  # the agents first: they flush to it
        await cluster.stop(key)
    for log_text in cluster.errors:
        for token in tokens.values():
            assert token not in log_text
