"""The Helm chart (charts/egresswatch), rendered offline by the Helm library (helm-python-sdk).

Strict lint; every object valid for Kubernetes 1.33 (kubernetes-validate) and the operator's
objects against their schemas (tests/support/operator_schemas.py); the RBAC is exactly
files/rbac-rules.yaml; the ConfigMap passes the real `egresswatch config validate`; the
containers' arguments parse with the real CLI; every container is locked down. The values
schema's refusals are in tests/test_chart_values.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from egresswatch.agent.identity import ENV_KIND, ENV_WORKLOAD, resolve_identity
from egresswatch.cli import _parser
from tests.support.chart import (
    ALL_ON,
    CHART,
    NAMESPACE,
    POSTGRES_URL,
    RELEASE,
    Obj,
    config_of,
    of_kind,
    one,
    pod_specs,
    render,
)
from tests.support.operator_schemas import SCHEMAS

KUBERNETES_VERSION = "1.33"
FULLNAME = f"{RELEASE}-egresswatch"
CASES = {"defaults": {}, "all-on": ALL_ON}


@pytest.fixture(scope="module", params=list(CASES))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, render(CASES[request.param])


@pytest.mark.parametrize("case", list(CASES))
def test_strict_lint_is_clean(case: str) -> None:
    report = helm_python.lint(CHART, CASES[case], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_object_is_valid_for_kubernetes(rendered: tuple[str, list[Obj]]) -> None:
    _, objects = rendered
    checked = 0
    for obj in objects:
        if obj["kind"] in SCHEMAS:
            jsonschema.validate(obj, SCHEMAS[obj["kind"]])
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 10


def test_all_on_renders_every_kind() -> None:
    kinds = {obj["kind"] for obj in render(ALL_ON)}
    assert kinds >= {
        "Deployment", "DaemonSet", "Job", "Service", "ConfigMap", "Secret", "ServiceAccount",
        "ClusterRole", "ClusterRoleBinding", "RoleBinding", "PodDisruptionBudget",
        "ServiceMonitor", "PodMonitor", "PrometheusRule",
    }  # fmt: skip


def test_a_misplaced_field_fails_the_operator_schemas() -> None:
    monitor = one(render(ALL_ON), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["bearerTokenSecrett"] = {"name": "x", "key": "y"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SCHEMAS["ServiceMonitor"])


# -- RBAC ------------------------------------------------------------------------------------


def test_rbac_is_exactly_the_rules_file() -> None:
    rules = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    # A new kind of rules (e.g. a Role for Leases in the release's namespace) needs the chart.
    assert set(rules) == {"clusterRole", "role"}
    objects = render(ALL_ON)
    assert one(objects, "ClusterRole", FULLNAME)["rules"] == rules["clusterRole"]
    assert one(objects, "ClusterRole", f"{FULLNAME}-namespaced")["rules"] == rules["role"]
    assert len(of_kind(objects, "ClusterRole")) == 2
    assert of_kind(objects, "Role") == []
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(objects, "RoleBinding")}
    # The release's namespace too: the leader election's Lease is there.
    assert set(bindings) == {"kube-system", NAMESPACE, "payments", "checkout"}
    subject = {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    for binding in [*bindings.values(), one(objects, "ClusterRoleBinding")]:
        assert binding["subjects"] == [subject]
    assert bindings["payments"]["roleRef"]["name"] == f"{FULLNAME}-namespaced"
    controller = one(objects, "Deployment", FULLNAME)["spec"]["template"]["spec"]
    assert controller["serviceAccountName"] == FULLNAME


# -- the config ------------------------------------------------------------------------------


def _validate_config(
    text: str, tmp_path: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "egresswatch.cli", "config", "validate", str(path)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _controller_env(objects: list[Obj]) -> dict[str, str]:
    """The controller container's variables, with a value for each one from a Secret."""
    spec = one(objects, "Deployment", FULLNAME)["spec"]["template"]["spec"]
    env: dict[str, str] = {}
    for item in spec["containers"][0]["env"]:
        if "secretKeyRef" in item.get("valueFrom", {}):
            key = item["valueFrom"]["secretKeyRef"]["key"]
            env[item["name"]] = POSTGRES_URL if key == "database-url" else "t" * 32
    return env


def test_the_configmap_passes_config_validate(
    rendered: tuple[str, list[Obj]], tmp_path: Path
) -> None:
    case, objects = rendered
    text = config_of(objects)
    env = _controller_env(objects)
    result = _validate_config(text, tmp_path, env)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(text)
    named = {
        config.get(f)
        for f in ("agent_token_env", "read_token_env", "run_token_env", "database_env")
    }
    assert named - {None} == set(env)  # every variable the config names comes from a Secret
    assert config["listen"] == "0.0.0.0:9108"
    assert config["metrics"]["detail"] == "source_kind"
    if case == "all-on":
        assert "database" not in config and config["database_env"] in env
        # Without the Secret's variable the real controller would refuse to start.
        env.pop(config["database_env"])
        failed = _validate_config(text, tmp_path, env)
        assert failed.returncode == 2 and "database_env" in failed.stderr


def test_a_bad_target_in_the_values_fails_config_validate(tmp_path: Path) -> None:
    values = {"config": {"targets": [{"name": "shop", "url": "shop.example:443"}]}}
    objects = render(values)
    result = _validate_config(config_of(objects), tmp_path, _controller_env(objects))
    assert result.returncode == 2
    assert "targets[0].url" in result.stderr


def test_the_designated_pod_sources_are_the_pod_agents() -> None:
    objects = render(ALL_ON)
    kube = yaml.safe_load(config_of(objects))["kubernetes"]
    agents = [d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] != FULLNAME]
    assert sorted(kube["pod_namespaces"]) == sorted(d["metadata"]["namespace"] for d in agents)
    wanted = dict(term.split("=") for term in kube["pod_selector"].split(","))
    for deployment in agents:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert wanted.items() <= labels.items()


# -- containers ------------------------------------------------------------------------------


def _fields(spec: Obj, node: str = "aks-nodepool1-1-vmss000000") -> dict[str, str]:
    """The container's environment as the kubelet gives it, for one pod on `node`."""
    refs = {"metadata.name": "pod-abc", "metadata.namespace": "payments", "spec.nodeName": node}
    env = {}
    for item in spec["containers"][0]["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = refs[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def test_every_container_argument_is_a_real_flag() -> None:
    parser = _parser()
    seen = set()
    for _workload, spec in pod_specs(render(ALL_ON)):
        for container in spec["containers"]:
            args = [
                a.replace("$(EGRESSWATCH_DATABASE_URL)", POSTGRES_URL) for a in container["args"]
            ]
            parsed = parser.parse_args(args)  # SystemExit(2) on a flag the CLI does not take
            seen.add(args[0])
            if args[0] == "agent":
                assert parsed.listen == "0.0.0.0:9109"
                assert parsed.spill_dir == Path("/var/lib/egresswatch/spill")
                assert parsed.token_file.parent.as_posix() in {
                    m["mountPath"] for m in container["volumeMounts"]
                }
    assert seen == {"controller", "agent", "db"}


def test_the_node_agent_is_a_node_source_on_the_host_network() -> None:
    objects = render(ALL_ON)
    assert yaml.safe_load(config_of(objects))["kubernetes"]["node_sources"] is True
    spec = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    env = _fields(spec)
    assert env[ENV_KIND] == "node"
    identity = resolve_identity(source=None, kind=None, environ=env)
    assert identity.name == "aks-nodepool1-1-vmss000000"
    # without node agents no node is designated (it would only ever be missing)
    no_nodes = render({"nodeAgent": {"enabled": False}})
    assert of_kind(no_nodes, "DaemonSet") == []
    assert yaml.safe_load(config_of(no_nodes))["kubernetes"]["node_sources"] is False


def test_a_pod_agent_is_its_designated_pod_source() -> None:
    objects = render(ALL_ON)
    deployment = one(
        [d for d in of_kind(objects, "Deployment") if d["metadata"].get("namespace") == "payments"],
        "Deployment",
    )
    spec = deployment["spec"]["template"]["spec"]
    env = _fields(spec)
    assert env[ENV_KIND] == "pod"
    assert env[ENV_WORKLOAD] == deployment["metadata"]["name"]
    identity = resolve_identity(source=None, kind=None, environ=env)
    assert identity.name == f"payments/{deployment['metadata']['name']}@aks-nodepool1-1-vmss000000"
    # replicas on different nodes: one required anti-affinity term on the hostname
    term = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert spec["volumes"][1]["emptyDir"]["sizeLimit"] == "288Mi"  # --spill-mib 256, and room
    token = next(v for v in spec["volumes"] if v["name"] == "token")["secret"]["secretName"]
    secret = [s for s in of_kind(objects, "Secret") if s["metadata"].get("namespace") == "payments"]
    assert [s["metadata"]["name"] for s in secret] == [token]


def test_every_container_is_locked_down(rendered: tuple[str, list[Obj]]) -> None:
    _, objects = rendered
    for workload, spec in pod_specs(objects):
        where = workload["metadata"]["name"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert "add" not in context["capabilities"], where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), where
            assert "memory" in resources["limits"], where


# An agent with 50 targets at 30 s, HTTPS ones included (docs/performance.md, "An agent's
# footprint", benchmarks/agent_footprint.py): RSS (34.5 MiB, 42 once a certificate failed
# verification and cryptography is loaded: the request covers that) and CPU on average.
AGENT_RSS_MIB, AGENT_MILLICORES = 42, 6


def test_the_agent_requests_its_measured_footprint_and_its_buffer_fits_the_limit() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    resources = values["agent"]["resources"]
    request, limit = resources["requests"]["memory"], resources["limits"]["memory"]
    assert request.endswith("Mi") and limit.endswith("Mi")
    assert int(request[:-2]) >= AGENT_RSS_MIB + values["agent"]["bufferMiB"]
    assert AGENT_RSS_MIB + values["agent"]["bufferMiB"] <= int(limit[:-2])
    cpu = resources["requests"]["cpu"]
    assert cpu.endswith("m") and int(cpu[:-1]) >= AGENT_MILLICORES


def test_the_controller_probes_and_one_migration() -> None:
    objects = render(ALL_ON)
    container = one(objects, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "--migrate" not in container["args"]  # two replicas: the hook Job migrates
    job = one(objects, "Job")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert set(hooks) == {"pre-install", "pre-upgrade"}
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["db", "upgrade"]
    # its Secret exists before it: a hook of a lower weight
    secret = one(objects, "Secret", f"{FULLNAME}-migrate")
    weight = int(secret["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert weight < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    sqlite = render({})
    assert of_kind(sqlite, "Job") == []
    assert (
        "--migrate"
        in one(sqlite, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert one(sqlite, "PersistentVolumeClaim")


def test_one_generated_agent_token_everywhere() -> None:
    objects = render(ALL_ON)
    tokens = {
        s["data"]["agent-token"] for s in of_kind(objects, "Secret") if "agent-token" in s["data"]
    }
    assert len(tokens) == 1
    assert len(of_kind(objects, "Secret")) == 5  # tokens, 2 namespaces, database, migrate


# -- monitoring ------------------------------------------------------------------------------


def test_monitors_take_the_group_the_labels_and_the_read_token() -> None:
    values = {
        **ALL_ON,
        "monitoring": {**ALL_ON["monitoring"], "apiGroup": "azmonitoring.coreos.com"},
    }
    objects = render(values)
    monitor, pods = one(objects, "ServiceMonitor"), one(objects, "PodMonitor")
    for obj in (monitor, pods):
        assert obj["apiVersion"] == "azmonitoring.coreos.com/v1"
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"] == {
        "name": f"{FULLNAME}-tokens",
        "key": "read-token",
    }
    assert set(pods["spec"]["namespaceSelector"]["matchNames"]) == {
        NAMESPACE,
        "payments",
        "checkout",
    }
    assert one(objects, "PrometheusRule")["apiVersion"] == "monitoring.coreos.com/v1"
    open_read = render({**ALL_ON, "auth": {}})
    assert "authorization" not in one(open_read, "ServiceMonitor")["spec"]["endpoints"][0]


def test_the_prometheus_rule_is_the_alerts_file() -> None:
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert one(render(ALL_ON), "PrometheusRule")["spec"]["groups"] == alerts["groups"]


def test_the_dashboard_configmap_only_with_its_file(tmp_path: Path) -> None:
    chart = tmp_path / "egresswatch"
    shutil.copytree(CHART, chart)
    (chart / "files" / "dashboard.json").unlink(missing_ok=True)

    def dashboards(objects: list[Obj]) -> list[Obj]:
        return [
            c
            for c in of_kind(objects, "ConfigMap")
            if c["metadata"]["labels"].get("grafana_dashboard")
        ]

    assert dashboards(render(ALL_ON, chart)) == []
    (chart / "files" / "dashboard.json").write_text('{"title": "egresswatch"}\n')
    found = dashboards(render(ALL_ON, chart))
    assert [c["metadata"]["labels"]["grafana_dashboard"] for c in found] == ["1"]
    assert found[0]["data"]["egresswatch.json"].strip() == '{"title": "egresswatch"}'
    assert dashboards(render({}, chart)) == []  # the flag is off by default
