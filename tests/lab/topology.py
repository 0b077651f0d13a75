"""The fault lab: a cluster's egress built from network namespaces, with egresswatch running
in it (the picture is in docs/lab.md).

    with EgressLab(tmp_path) as built:          # namespaces, servers, controller, two agents
        built.wait_healthy()
        built.firewall("ip daddr 203.0.113.10 tcp dport 443 drop")   # a fault ...
        built.repair_firewall()                                      # ... and its repair
        built.api("/api/v1/incidents?open=true")                     # the controller's answer

Four namespaces: `pod` routes through `node` (as a CNI routes a pod), `node` through `egress`
(the firewall and the proxy), `egress` to `internet` (the endpoints and the upstream DNS). The
cluster DNS is dnsmasq on the node, forwarding to the upstream and serving stale answers while
the upstream is away, as CoreDNS's `cache` with `serve_stale` does. Both sources resolve
through it (the node agent as a hostNetwork pod with ClusterFirstWithHostNet). Every process
and namespace belongs to the `Lab` underneath and is removed by `close()`, whatever happened.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trustme
import yaml

from tests.support.kubeapi import write_kubeconfig
from tests.support.netns import Lab, Node
from tests.support.tinyproxy import config_text, tinyproxy_binary

DOMAIN = "lab.example"  # .example never resolves outside the lab (RFC 2606)
SEARCH = "shop.svc.cluster.local svc.cluster.local cluster.local"

POD = "198.51.100.2"  # the pod's eth0
NODE_TO_POD = "198.51.100.1"  # the node's side of the pod's veth; the controller listens here
NODE_UP = "198.51.100.5"  # the node's address toward the egress device
EGRESS_DOWN = "198.51.100.6"  # the egress device's inside address; the proxy listens here
CLUSTER_DNS = "198.51.100.53"  # the cluster DNS service address, on the node
EGRESS_UP = "203.0.113.1"  # the egress device's outside address
SHOP = "203.0.113.10"  # the endpoint
API = "203.0.113.11"  # an endpoint reached through the proxy
CONTROL = "203.0.113.20"  # the control target
SLOW = "203.0.113.30"  # the slow path: a delaying relay (port 443) to its origin
UPSTREAM_DNS = "203.0.113.53"
BROKEN_DNS = "203.0.113.54"  # answers SERVFAIL to everything: a broken stub domain's server
SITES = {"shop": SHOP, "api": API, "control": CONTROL}
NOWHERE = "203.0.113.99"  # on the internet's link, assigned to nobody: a wrong DNS answer

PROXY_PORT = 3128
INTERCEPT_PORT = 8443
SLOW_ORIGIN_PORT = 8443
CONTROLLER_PORT = 9108
KUBE_API_PORT = 6443  # the fake Kubernetes API server, on the node's loopback
CONTROLLER = f"http://{NODE_TO_POD}:{CONTROLLER_PORT}"
POD_SOURCE = "shop/probe-0"
NODE_SOURCE = "lab-node-1"
TOKEN_ENV = "EGRESSWATCH_LAB_TOKEN"
SLOW_BASE_MS = 20.0

WAIT_STEP_S = 0.25
PROCESS_START_S = 15.0  # a process has this long to answer after it is started


def name(site: str) -> str:
    return f"{site}.{DOMAIN}"


class EgressLab:
    """The topology, its servers, and egresswatch (controller + a pod and a node agent)."""

    def __init__(
        self,
        directory: Path,
        *,
        interval: str = "1s",
        fail_after: int = 3,
        recover_after: int = 2,
        with_service: bool = True,
        kube: bool = False,
    ) -> None:
        self.directory = directory
        self.kube = kube  # the controller watches a fake API server (pod shop/probe-0, its node)
        self.interval = interval
        self.fail_after = fail_after
        self.recover_after = recover_after
        self.with_service = with_service
        self.token = secrets.token_urlsafe(16)
        self.lab = Lab()
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.ca_file = directory / "ca.pem"
        self.config_file = directory / "lab.yaml"
        try:
            self._build()
            self._certificates()
            self._servers()
            if with_service:
                self._service()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> EgressLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.lab.close()

    @property
    def namespaces(self) -> dict[str, str]:
        """Label -> the real `ip netns` name, for `ip netns exec NAME ...` by hand."""
        return {label: node.name for label, node in self.lab.nodes.items()}

    # --- the topology --------------------------------------------------------------------

    def _build(self) -> None:
        lab = self.lab
        self.pod, self.node = lab.node("pod"), lab.router("node")
        self.egress, self.internet = lab.router("egress"), lab.node("internet")
        lab.link(self.pod, f"{POD}/30", self.node, f"{NODE_TO_POD}/30")
        lab.link(self.node, f"{NODE_UP}/30", self.egress, f"{EGRESS_DOWN}/30")
        _, outside = lab.link(self.egress, f"{EGRESS_UP}/24", self.internet, f"{SHOP}/24")
        for address in (API, CONTROL, SLOW, UPSTREAM_DNS, BROKEN_DNS):
            lab.address(self.internet, f"{address}/32", outside)
        lab.address(self.node, f"{CLUSTER_DNS}/32", "lo")
        lab.route(self.pod, "default", via=NODE_TO_POD)
        lab.route(self.node, "default", via=EGRESS_DOWN)
        lab.route(self.egress, "198.51.100.0/24", via=NODE_UP)
        lab.route(self.internet, "198.51.100.0/24", via=EGRESS_UP)
        # Each namespace's own /etc/resolv.conf and /etc/hosts, so that no process in the lab
        # ever asks this machine's resolver: the cluster's for the sources, the upstream else.
        cluster = (
            f"nameserver {CLUSTER_DNS}\nsearch {SEARCH}\noptions ndots:5 timeout:1 attempts:2\n"
        )
        for node in (self.pod, self.node, self.egress, self.internet):
            inside = node in (self.pod, self.node)
            lab.etc_file(node, "resolv.conf", cluster if inside else f"nameserver {UPSTREAM_DNS}\n")
            lab.etc_file(node, "hosts", "127.0.0.1 localhost\n")

    def _certificates(self) -> None:
        ca = trustme.CA(organization_name="egresswatch lab CA")
        ca.cert_pem.write_to_path(str(self.ca_file))
        sites = ca.issue_cert(*(name(s) for s in ("shop", "api", "control", "slow")))
        sites.private_key_and_cert_chain_pem.write_to_path(str(self.directory / "sites.pem"))
        # What a TLS-inspecting firewall presents: the right name, a CA the pods do not trust.
        foreign = trustme.CA(organization_name="Corp TLS Inspection")
        intercept = foreign.issue_cert(name("shop"), name("api"))
        intercept.private_key_and_cert_chain_pem.write_to_path(str(self.directory / "foreign.pem"))

    def _servers(self) -> None:
        answers = {name(s): [a] for s, a in SITES.items()} | {name("slow"): [SLOW]}
        # TTL 1 s: the cluster DNS's cache expires quickly, so a change upstream shows at once.
        self.world(self.internet, "dns", address=UPSTREAM_DNS, answers=answers, ttl=1)
        self.world(self.internet, "dns", address=BROKEN_DNS, answers={}, rcode="SERVFAIL")
        # The slow path's own origin sits behind the relay, so the endpoint's faults do not
        # show on it.
        origins = [(site, address, 443) for site, address in SITES.items()]
        for site, address, port in [*origins, ("slow-origin", SLOW, SLOW_ORIGIN_PORT)]:
            self.world(
                self.internet,
                "site",
                name=site,
                address=address,
                port=port,
                cert_file=str(self.directory / "sites.pem"),
            )
        self.world(
            self.internet,
            "relay",
            name="slow",
            address=SLOW,
            port=443,
            to=[SLOW, SLOW_ORIGIN_PORT],
            delay_ms=SLOW_BASE_MS,
        )
        self.world(
            self.egress,
            "site",
            name="intercept",
            address=EGRESS_DOWN,
            port=INTERCEPT_PORT,
            cert_file=str(self.directory / "foreign.pem"),
        )
        self.proxy("allow")
        self.cluster_dns()

    def world(self, node: Node, function: str, **kwargs: Any) -> Any:
        """Call tests.lab.world:`function` in `node`'s worker (where its servers live)."""
        return self.lab.call(node, f"tests.lab.world:{function}", kwargs)

    # --- long-running processes ----------------------------------------------------------

    def _spawn(self, key: str, node: Node, argv: list[str], **kwargs: Any) -> None:
        self.stop(key)
        self.processes[key] = self.lab.spawn(node, argv, **kwargs)

    def stop(self, key: str) -> None:
        """Stop one of the lab's processes (by its PID) if it runs."""
        process = self.processes.pop(key, None)
        if process is not None:
            self.lab.stop(process)

    def cluster_dns(
        self,
        *,
        servfail: str | None = None,
        answer: tuple[str, str] | None = None,
        cache: bool = True,
    ) -> None:
        """(Re)start the cluster DNS; with `servfail`, that name's queries go to a server that
        answers SERVFAIL (a broken stub domain), so the cluster DNS answers SERVFAIL for it;
        with `answer` (name, address) it answers that address for that name itself (a stale
        record, a wrong split-horizon entry, a hijacked name); `cache=False` makes it a
        resolver without a cache, which fails as soon as the upstream does."""
        argv = [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--pid-file=",
            "--bind-interfaces",
            f"--listen-address={CLUSTER_DNS}",
            f"--server={UPSTREAM_DNS}",
            "--local=/cluster.local/",
            *(["--cache-size=1000", "--use-stale-cache"] if cache else ["--cache-size=0"]),
            "--log-facility=-",
        ]
        if servfail is not None:
            argv.append(f"--server=/{servfail}/{BROKEN_DNS}")
        if answer is not None:
            argv.append(f"--address=/{answer[0]}/{answer[1]}")
        self._spawn("cluster-dns", self.node, argv)
        self._until(
            lambda: self.lab.call(
                self.node,
                "tests.lab.client:resolves",
                {"server": CLUSTER_DNS, "name": name("control")},
            ),
            "the cluster DNS answering",
        )

    def proxy(self, mode: str) -> None:
        """(Re)start the egress proxy: `allow`, `deny` (403 Filtered) or `auth` (407)."""
        binary = tinyproxy_binary()
        if binary is None:
            raise RuntimeError("tinyproxy is not installed (apt-get install tinyproxy)")
        conf = self.directory / f"tinyproxy-{mode}.conf"
        text = config_text(
            PROXY_PORT,
            mode,
            [443],
            self.directory / f"filter-{mode}",
            host=EGRESS_DOWN,
            allow="198.51.100.0/24",
        )
        conf.write_text(text)
        self._spawn("proxy", self.egress, [binary, "-d", "-c", str(conf)])
        self._until(
            lambda: self.lab.call(
                self.node, "tests.lab.client:listening", {"host": EGRESS_DOWN, "port": PROXY_PORT}
            ),
            "the proxy listening",
        )

    # --- egresswatch ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The controller's config: the lab's targets, resolver, proxy and egress device (and,
        with `kube`, the fake API server's kubeconfig)."""
        config = self._config()
        if self.kube:
            kubeconfig = self.directory / "kubeconfig"
            write_kubeconfig(kubeconfig, f"http://127.0.0.1:{KUBE_API_PORT}")
            config["kubernetes"] = {
                "enabled": True,
                "kubeconfig": str(kubeconfig),
                "pod_namespaces": ["shop"],
            }
        return config

    def _config(self) -> dict[str, Any]:
        return {
            "source": {"name": NODE_SOURCE, "kind": "node"},
            "listen": f"{NODE_TO_POD}:{CONTROLLER_PORT}",
            "database": f"sqlite+aiosqlite:///{self.directory / 'egresswatch.db'}",
            "agent_token_env": TOKEN_ENV,
            "dns": {"resolv_conf": "/etc/resolv.conf", "upstream": UPSTREAM_DNS},
            "proxy": {"url": f"http://{EGRESS_DOWN}:{PROXY_PORT}"},
            "proxy_from_environment": False,
            "egress_devices": [f"{EGRESS_DOWN}/32", f"{EGRESS_UP}/32"],
            "probes": {
                "interval": self.interval,
                "timeout": self.interval,
                "step_timeout": "400ms",
                "trace_every": "1m",
                "trace_max_hops": 5,
                "trace_hop_timeout": "150ms",
                "ca_file": str(self.ca_file),
            },
            "detection": {"fail_after": self.fail_after, "recover_after": self.recover_after},
            "targets": [
                {"name": "shop", "url": f"https://{name('shop')}/health", "use_proxy": False},
                {"name": "api", "url": f"https://{name('api')}/v1/ping"},
                {"name": "slow", "url": f"https://{name('slow')}/", "use_proxy": False},
                {
                    "name": "control",
                    "url": f"https://{name('control')}/",
                    "role": "control",
                    "use_proxy": False,
                },
            ],
        }

    def _service(self) -> None:
        # A fresh lab starts from an empty database: an earlier lab's incidents and step
        # states (same names, same addresses) are not this one's.
        for stale in self.directory.glob("egresswatch.db*"):
            stale.unlink()
        if self.kube:
            self.world(self.node, "kube_api", port=KUBE_API_PORT, objects=lab_cluster())
        self.config_file.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        token_file = self.directory / "token"
        token_file.write_text(self.token + "\n")
        python = [sys.executable, "-m", "egresswatch.cli"]
        self._spawn(
            "controller",
            self.node,
            [*python, "controller", "--config", str(self.config_file), "--migrate"],
            env={TOKEN_ENV: self.token},
        )
        self._until(lambda: self.get("/readyz")["status"] == 200, "the controller ready")
        for key, node, source, kind in (
            ("node-agent", self.node, NODE_SOURCE, "node"),
            ("pod-agent", self.pod, POD_SOURCE, "pod"),
        ):
            agent = ["agent", "--controller", CONTROLLER, "--token-file", str(token_file)]
            agent += ["--source", source, "--source-kind", kind, "--ca-file", str(self.ca_file)]
            self._spawn(key, node, [*python, *agent, "--listen", "127.0.0.1:9109"])

    def get(self, path: str) -> dict[str, Any]:
        """GET the controller's `path` from the node: {"status": code, "body": text}."""
        url = f"{CONTROLLER}{path}"
        reply: dict[str, Any] = self.lab.call(self.node, "tests.lab.client:get", {"url": url})
        return reply

    def api(self, path: str) -> Any:
        """The JSON document at `path`; RuntimeError on any status but 200."""
        reply = self.get(path)
        if reply["status"] != 200:
            raise RuntimeError(f"GET {path}: {reply['status']} {reply['body'][:500]}")
        return json.loads(reply["body"])

    def metrics(self) -> str:
        return str(self.get("/metrics")["body"])

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Until every target is healthy from both sources and no incident is open."""

        def healthy() -> bool:
            status = self.api("/api/v1/status")
            # judged good (ok, or degraded: still up), not merely "no failing step known"
            seen = {
                (t["target"], s["source"]): s["healthy"] and s["state"] in ("ok", "degraded")
                for t in status["targets"]
                for s in t["sources"]
            }
            wanted = {
                (t, s)
                for t in ("shop", "api", "slow", "control")
                for s in (POD_SOURCE, NODE_SOURCE)
            }
            opened = self.api("/api/v1/incidents?open=true")["items"]
            return wanted <= seen.keys() and all(seen[k] for k in wanted) and not opened

        self._until(healthy, "every target healthy from both sources", timeout_s)

    def _until(
        self, check: Callable[[], Any], what: str, timeout_s: float = PROCESS_START_S
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                found = check()
            except (RuntimeError, KeyError, ValueError) as exc:
                found, last = None, exc
            if found:
                return found
            time.sleep(WAIT_STEP_S)
        raise TimeoutError(f"{what}: not within {timeout_s} s ({last})\n{self.logs()}")

    def logs(self) -> str:
        """The last lines of every lab process's stderr, for a failure's message."""
        return "\n".join(
            f"--- {key}:\n{self.lab.stderr_of(process)[-1500:]}"
            for key, process in self.processes.items()
        )

    # --- faults and repairs --------------------------------------------------------------

    def firewall(self, *rules: str) -> None:
        """Filter forwarded traffic in the egress device with nftables `rules` (one per line)."""
        self._chain(self.egress, "fault", "forward", rules)

    def repair_firewall(self) -> None:
        self._unchain(self.egress, "fault")

    def pod_policy(self, *rules: str) -> None:
        """Filter the pod's traffic on its node, where a CNI enforces network policies."""
        self._chain(self.node, "netpol", "forward", (f"ip saddr {POD} {rule}" for rule in rules))

    def repair_pod_policy(self) -> None:
        self._unchain(self.node, "netpol")

    def sni_filter(self, server_name: str) -> None:
        """An SNI filter in the egress device: a TLS ClientHello naming `server_name` is
        answered with a TCP reset (iptables' string match on the forwarded payload); the TCP
        handshake, and a connection that sends nothing, pass."""
        self.lab.exec(self.egress, "iptables", "-I", "FORWARD", *_sni_rule(server_name))

    def repair_sni_filter(self, server_name: str) -> None:
        self.lab.exec(self.egress, "iptables", "-D", "FORWARD", *_sni_rule(server_name))

    def intercept(self) -> None:
        """TLS inspection: the egress device takes the endpoint's HTTPS connections over and
        answers them itself, with a certificate from its own CA."""
        rule = f"ip daddr {SHOP} tcp dport 443 dnat to {EGRESS_DOWN}:{INTERCEPT_PORT}"
        ruleset = (
            "table ip intercept {\n  chain prerouting {\n"
            "    type nat hook prerouting priority -100\n"
            f"    {rule}\n  }}\n}}\n"
        )
        self.lab.nft(self.egress, ruleset)

    def repair_intercept(self) -> None:
        self._unchain(self.egress, "intercept")

    def _chain(self, node: Node, table: str, hook: str, rules: Any) -> None:
        lines = "\n".join(f"    {rule}" for rule in rules)
        self.lab.nft(
            node,
            f"table ip {table} {{\n  chain {hook} {{\n"
            f"    type filter hook {hook} priority 0\n{lines}\n  }}\n}}\n",
        )

    def _unchain(self, node: Node, table: str) -> None:
        self.lab.exec(node, "nft", "delete", "table", "ip", table)


def _sni_rule(server_name: str) -> list[str]:
    return [
        "-p",
        "tcp",
        "--dport",
        "443",
        "-m",
        "string",
        "--string",
        server_name,
        "--algo",
        "bm",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]


def lab_cluster() -> list[dict[str, Any]]:
    """What the fake API server serves in a `kube` lab: the shop namespace, the node, and the
    pod the pod agent runs as (its IP, its node, the agent label)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}},
        },
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE_SOURCE, "labels": {"kubernetes.io/hostname": NODE_SOURCE}},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "nodeInfo": {"kubeletVersion": "v1.33.2"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": POD_SOURCE.split("/")[1],
                "namespace": "shop",
                "labels": {"app.kubernetes.io/component": "pod-agent", "app": "probe"},
            },
            "spec": {"nodeName": NODE_SOURCE, "containers": [{"name": "agent", "image": "x"}]},
            "status": {"phase": "Running", "podIP": POD},
        },
    ]
