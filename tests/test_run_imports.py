"""What `egresswatch run` loads without Kubernetes in its config (issue 14, 5,000 targets in one
process under 150 MiB): a real process, whose `sys.modules` at exit holds no Kubernetes client
and none of the modules that bring it (docs/performance.md, "How cost grows with targets")."""

from __future__ import annotations

from pathlib import Path

from tests.support.process_modules import modules_at_exit
from tests.support.service import HOST, free_port

# The client and what loads it: the watches, the discovery, the elector, TokenReview, and
# leadership.py (the Lease's holder); each is imported only where `kubernetes.enabled` runs.
KUBERNETES_CLIENT = (
    "kubernetes",
    "egresswatch.leadership",
    "egresswatch.kube.client",
    "egresswatch.kube.discovery",
    "egresswatch.kube.watch",
    "egresswatch.kube.leader",
    "egresswatch.kube.tokenreview",
    "egresswatch.kube.api_calls",
)


def _config(directory: Path, port: int) -> Path:
    """One target, the process's own listening port (a round that succeeds), no Kubernetes."""
    resolv = directory / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1#1\n")  # never asked: the target is an address
    lines = [
        "source: {name: node-a, kind: node}",
        f"listen: {HOST}:{port}",
        f"database: sqlite+aiosqlite:///{directory}/ew.db",
        f"dns: {{resolv_conf: {resolv}}}",
        "proxy_from_environment: false",
        "probes: {interval: 1s, timeout: 1s, step_timeout: 500ms, trace_every: 1d}",
        "targets:",
        f"  - {{name: self, address: '{HOST}:{port}'}}",
    ]
    config = directory / "egresswatch.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def test_run_without_kubernetes_loads_no_kubernetes_client(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port)
    loaded = modules_at_exit(["run", "--config", str(config), "--migrate"], port, tmp_path)
    assert "egresswatch.wiring" in loaded  # it did run the service
    assert [m for m in loaded if m.startswith(KUBERNETES_CLIENT)] == []


def test_run_on_a_current_database_loads_no_alembic(tmp_path: Path) -> None:
    # The first start migrates (Alembic runs); the second finds the schema current, which the
    # scripts' revision ids read as text tell without Alembic (storage/schema.py).
    port = free_port()
    config = _config(tmp_path, port)
    modules_at_exit(["run", "--config", str(config), "--migrate"], port, tmp_path)
    loaded = modules_at_exit(["run", "--config", str(config)], port, tmp_path)
    assert "egresswatch.wiring" in loaded
    assert [m for m in loaded if m.startswith(("alembic", "mako", "pygments"))] == []
