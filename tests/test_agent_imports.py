"""What an agent process loads (issue 14, the footprint of a DaemonSet pod): `egresswatch agent`,
run as a real process, pulls in no controller-only, config-file or HTTPS-only library until it
is needed (docs/performance.md, "An agent's footprint")."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.service import HOST, free_port

# The controller's libraries; the config file's model and YAML reader (an agent reads no config
# file: its plan comes from the controller); cryptography, loaded at the first certificate read;
# aiohttp and its own dependencies (the agent's HTTP is agent/http_client.py and
# agent/listener.py, on h11: 10 MiB less).
NOT_IN_AN_AGENT = (
    "aiohttp",
    "yarl",
    "multidict",
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

# Runs the command line as the console script does, and writes sys.modules at exit (the agent
# exits normally on SIGTERM).
RUN_AND_LIST = """
import atexit, json, sys
from pathlib import Path
out = Path(sys.argv[1])
atexit.register(lambda: out.write_text(json.dumps(sorted(sys.modules))))
from egresswatch.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _wait_ready(port: int, process: subprocess.Popen[bytes], limit_s: float = 30.0) -> None:
    """Until the agent's /healthz answers (bounded); fails with its output if it exits."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1].decode()
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the agent did not answer /healthz within {limit_s} s")


def test_a_running_agent_loads_no_controller_config_or_certificate_library(
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("agent-token-of-this-test-0123456789\n")
    modules, port = tmp_path / "modules.json", free_port()
    # The controller's address is a closed loopback port: the agent starts, serves its health
    # endpoints and retries its plan; that is the whole start of its process.
    args = ["agent", "--controller", f"http://{HOST}:{free_port()}", "--token-file", str(token)]
    args += ["--source", "node-1", "--source-kind", "node", "--listen", f"{HOST}:{port}"]
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_AND_LIST, str(modules), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_ready(port, process)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    assert process.returncode == 0, err.decode()
    loaded = json.loads(modules.read_text())
    assert "egresswatch.agent.service" in loaded  # it did run the agent
    found = [m for m in loaded if m.startswith(NOT_IN_AN_AGENT)]
    assert found == []
    assert "h11" in loaded  # it served /healthz with its own listener
