"""What an agent process loads (issue 14, the footprint of a DaemonSet pod): `egresswatch agent`,
run as a real process, pulls in no controller-only, config-file or HTTPS-only library until it
is needed, and no pydantic even once it follows a real controller's plan and has run verified
HTTPS rounds (docs/performance.md, "An agent's footprint")."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from egresswatch.evidence import TlsEvidence
from egresswatch.model import Status, Step
from egresswatch.wiring import Service
from tests.support.https import NAME, LocalServers, Reply
from tests.support.process_modules import RUN_AND_LIST, modules_at_exit
from tests.support.service import HOST, free_port, poll
from tests.test_agent import (
    World,
    controllers,
    dns_server,
    local_servers,
    pki,
    stored_rounds,
    world,
)

__all__ = ["controllers", "dns_server", "local_servers", "pki", "world"]  # fixtures

# The controller's libraries; the config file's model and YAML reader (an agent reads no config
# file: its plan comes from the controller); pydantic (the plan is read by wire.py);
# cryptography, loaded only to read a certificate that failed verification; aiohttp and its own
# dependencies (the agent's HTTP is agent/http_client.py and agent/listener.py, on h11).
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
    "pydantic",
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
    assert "h11" in loaded  # it served /healthz with its own listener


async def test_an_agent_with_verified_https_rounds_loads_no_pydantic_or_cryptography(
    tmp_path: Path,
    world: World,
    controllers: Callable[[], Awaitable[Service]],
    local_servers: LocalServers,
) -> None:
    """A real controller's plan parsed, HTTPS rounds run and delivered: the plan was read
    without pydantic and the certificates' names from ssl's own decoding."""
    endpoint = await local_servers.https(Reply(200))
    world.write([{"name": "shop", "url": f"https://{NAME}:{endpoint.port}/"}])
    controller = await controllers()
    modules, port = tmp_path / "modules.json", free_port()
    args = [*world.agent_args(f"{HOST}:{port}"), "--source", "node-1", "--source-kind", "node"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUN_AND_LIST, str(modules), *args, stderr=subprocess.PIPE
    )
    try:

        async def verified_rounds() -> bool:
            rounds = await stored_rounds(controller, "shop", "node-1")
            tls = [s for r in rounds for s in r.steps if s.step is Step.TLS_HANDSHAKE]
            verified = [s.evidence for s in tls if s.status is Status.OK]
            return len([e for e in verified if isinstance(e, TlsEvidence) and e.issuer]) >= 2

        assert await poll(verified_rounds, timeout_s=30), "no verified HTTPS round arrived"
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    loaded = json.loads(modules.read_text())
    assert "egresswatch.wire" in loaded and "ssl" in loaded  # it did read a plan, over TLS
    assert [m for m in loaded if m.startswith(("pydantic", "cryptography"))] == []
