"""What an agent process loads (issue 14, the footprint of a DaemonSet pod): `egresswatch agent`,
run as a real process, pulls in no controller-only, config-file or HTTPS-only library until it
is needed (docs/performance.md, "An agent's footprint")."""

from __future__ import annotations

from pathlib import Path

from tests.support.process_modules import modules_at_exit
from tests.support.service import HOST, free_port

# The controller's libraries; the config file's model and YAML reader (an agent reads no config
# file: its plan comes from the controller); cryptography, loaded at the first certificate read.
NOT_IN_AN_AGENT = (
    "sqlalchemy",
    "alembic",
    "aiosqlite",
    "asyncpg",
    "kubernetes",
    "yaml",
    "cryptography",
    "egresswatch.settings",
    "egresswatch.settings_yaml",
    "egresswatch.plan_config",
    "egresswatch.wiring",
    "egresswatch.storage",
    "egresswatch.controller",
    "egresswatch.kube",
)


def test_a_running_agent_loads_no_controller_config_or_certificate_library(
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("agent-token-of-this-test-0123456789\n")
    port = free_port()
    # The controller's address is a closed loopback port: the agent starts, serves its health
    # endpoints and retries its plan; that is the whole start of its process.
    args = ["agent", "--controller", f"http://{HOST}:{free_port()}", "--token-file", str(token)]
    args += ["--source", "node-1", "--source-kind", "node", "--listen", f"{HOST}:{port}"]
    loaded = modules_at_exit(args, port, tmp_path)
    assert "egresswatch.agent.service" in loaded  # it did run the agent
    found = [m for m in loaded if m.startswith(NOT_IN_AN_AGENT)]
    assert found == []
