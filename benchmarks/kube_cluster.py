"""The controller's cost of watching a large cluster: memory, CPU, time to sync, status latency.

    python benchmarks/kube_cluster.py [--nodes 5000] [--pods 20000] [--churn 20] [--seconds 30]

The fake API server (tests/support/kubeapi.py) runs in a child process, serving `--nodes`
AKS-shaped Nodes and `--pods` agent Pods (four designated namespaces, one Deployment each, one
replica per node) and replacing `--churn` pods a second (delete one, create its successor on
the same node: a rollout). `egresswatch controller` runs as a real process twice on SQLite in
a temporary folder: once with `kubernetes.enabled: false` (the baseline), once watching the
fake server through a kubeconfig. For each it prints the resident memory once ready (and, when
watching, once every reflector has listed), the CPU used per second of wall time while the
cluster churns, and the latency of GET /api/v1/status (which lists every designated source).
Numbers are printed, not judged. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the fake API server lives with the tests (tests/support)

from tests.support.kubeapi import FakeKubeApi, start_kube_api, write_kubeconfig  # noqa: E402
from tests.support.service import free_port  # noqa: E402

HOST = "127.0.0.1"
NAMESPACES = [f"team-{i}" for i in range(4)]
AGENT_LABELS = {"app.kubernetes.io/component": "pod-agent"}
TOKEN_ENV = "EGRESSWATCH_BENCH_TOKEN"


def node_object(index: int) -> dict[str, Any]:
    name = f"aks-pool{index // 1000}-{index:06d}-vmss{index:06x}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.azure.com/agentpool": f"pool{index // 1000}",
                "kubernetes.azure.com/mode": "user",
                "node.kubernetes.io/instance-type": "Standard_D4s_v5",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/zone": f"westeurope-{index % 3 + 1}",
            },
        },
        "status": {
            "nodeInfo": {"kubeletVersion": "v1.33.2", "osImage": "Ubuntu 22.04.5 LTS"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            # AKS nodes list their images: a Node is several KB. Metadata-only watches skip it.
            "images": [
                {"names": [f"mcr.microsoft.com/oss/image-{i}:v1.{i}"], "sizeBytes": 10_000_000}
                for i in range(40)
            ],
        },
    }


def pod_object(namespace: str, node: str, template_hash: str, serial: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"probe-{template_hash}-{serial:06d}",
            "namespace": namespace,
            "labels": {**AGENT_LABELS, "pod-template-hash": template_hash},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"probe-{template_hash}",
                    "uid": "0",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "main",
                    "image": "ghcr.io/example/egresswatch:0.1.0",
                    "env": [{"name": n, "value": "x"} for n in ("A", "B", "C", "D")],
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                }
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": f"10.{serial % 250}.{serial // 250 % 250}.{serial % 200 + 2}",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


# -- the fake API server's process ----------------------------------------------------------------


async def serve(nodes: int, pods: int, churn: float, port: int, folder: Path) -> None:
    node_objects = [node_object(i) for i in range(nodes)]
    objects: list[dict[str, Any]] = [*node_objects]
    serial = 0
    for i in range(pods):
        namespace = NAMESPACES[i % len(NAMESPACES)]
        node = node_objects[(i // len(NAMESPACES)) % nodes]["metadata"]["name"]
        objects.append(pod_object(namespace, node, "5d8f7c6b9a", serial))
        serial += 1
    for namespace in NAMESPACES:
        objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    api = FakeKubeApi(objects, bookmark_every_s=30.0)
    runner, _ = await start_kube_api(api, folder, port=port)
    print("ready", flush=True)
    rng = random.Random(1)
    try:
        while True:
            await asyncio.sleep(1.0 / churn if churn else 3600)
            pod_keys = [k for k in api.objects if k[0].kind == "Pod"]
            kind, namespace, name = rng.choice(pod_keys)
            old = api.objects[(kind, namespace, name)]
            new = copy.deepcopy(old)
            new["metadata"] = {**old["metadata"], "name": f"probe-6c9d8e7f0b-{serial:06d}"}
            new["metadata"].pop("uid", None)
            new["metadata"].pop("resourceVersion", None)
            serial += 1
            api.apply(new)  # the successor first, on the same node: a rollout keeps the source
            api.remove("Pod", name, namespace)
    finally:
        api.drop_watches()
        await runner.cleanup()


# -- the controller, measured ----------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        return await response.json(content_type=None)


async def until(check: Any, limit_s: float) -> float:
    start = time.monotonic()
    async with asyncio.timeout(limit_s):
        while not await check():
            await asyncio.sleep(0.2)
    return time.monotonic() - start


async def measure(folder: Path, kubeconfig: Path | None, seconds: float) -> dict[str, float]:
    port = free_port()
    config = {
        "source": {"name": "bench", "kind": "node"},
        "listen": f"{HOST}:{port}",
        "database": f"sqlite+aiosqlite:///{folder / ('kube' if kubeconfig else 'base')}.db",
        "agent_token_env": TOKEN_ENV,
        "proxy_from_environment": False,
        "targets": [{"name": "shop", "url": "https://shop.example.test/"}],
        "kubernetes": {
            "enabled": kubeconfig is not None,
            "kubeconfig": str(kubeconfig) if kubeconfig else None,
            "pod_namespaces": NAMESPACES,
        },
    }
    path = folder / "controller.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = {**os.environ, TOKEN_ENV: "bench-token"}
    command = [sys.executable, "-m", "egresswatch.cli", "controller", "--config", str(path)]
    process = await asyncio.create_subprocess_exec(
        *command, "--migrate", "--log-level", "warning", env=environ,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://{HOST}:{port}"
    out: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(f"{url}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await until(ready, 60)
            out["rss_ready_mib"] = rss_mib(process.pid)
            if kubeconfig is not None:

                async def synced() -> bool:
                    status = await get_json(session, f"{url}/api/v1/status")
                    return bool(status.get("designated", {}).get("synced"))

                out["sync_s"] = await until(synced, 300)
                status = await get_json(session, f"{url}/api/v1/status")
                out["designated"] = len(status["designated"]["sources"])
                out["rss_synced_mib"] = rss_mib(process.pid)
            cpu_before, wall_before = cpu_s(process.pid), time.monotonic()
            await asyncio.sleep(seconds)
            out["cpu_per_s"] = (cpu_s(process.pid) - cpu_before) / (time.monotonic() - wall_before)
            out["rss_end_mib"] = rss_mib(process.pid)
            latencies = []
            for _ in range(10):
                start = time.perf_counter()
                await get_json(session, f"{url}/api/v1/status")
                latencies.append(time.perf_counter() - start)
            out["status_p50_ms"] = statistics.median(latencies) * 1000
            out["status_max_ms"] = max(latencies) * 1000
    finally:
        process.terminate()
        await process.wait()
    return out


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        server = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", "--port", str(port), "--folder", tmp,
            "--nodes", str(args.nodes), "--pods", str(args.pods), "--churn", str(args.churn),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            async with asyncio.timeout(300):
                await server.stdout.readline()  # "ready"
            kubeconfig = write_kubeconfig(folder / "bench-kubeconfig", f"http://{HOST}:{port}")
            base = await measure(folder, None, args.seconds)
            kube = await measure(folder, kubeconfig, args.seconds)
        finally:
            server.terminate()
            await server.wait()
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    print(
        f"# {args.nodes} Nodes, {args.pods} agent Pods in {len(NAMESPACES)} namespaces, "
        f"{args.churn} pods replaced per second, {args.seconds:g} s measured"
    )
    print(f"{'':28}{'kubernetes off':>16}{'kubernetes on':>16}")
    for key, label in (
        ("rss_ready_mib", "RSS when ready (MiB)"),
        ("sync_s", "synced after ready (s)"),
        ("designated", "designated sources"),
        ("rss_synced_mib", "RSS when synced (MiB)"),
        ("rss_end_mib", "RSS after churn (MiB)"),
        ("cpu_per_s", "CPU s per s (churn)"),
        ("status_p50_ms", "GET /api/v1/status p50 ms"),
        ("status_max_ms", "GET /api/v1/status max ms"),
    ):
        print(f"{label:28}{_cell(base.get(key)):>16}{_cell(kube.get(key)):>16}")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3g}" if value < 100 else f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=20000)
    parser.add_argument("--churn", type=float, default=20.0, help="pods replaced per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.nodes, args.pods, args.churn, args.port, args.folder))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
