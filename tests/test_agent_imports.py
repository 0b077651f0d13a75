"""What an agent process loads (issue 14, the footprint of a DaemonSet pod): the `agent`
command's modules pull in no controller-only or HTTPS-only library until it is needed."""

from __future__ import annotations

import subprocess
import sys

# Imported by the controller's commands only, or (cryptography) at the first certificate read.
NOT_AT_START = ("sqlalchemy", "alembic", "aiosqlite", "asyncpg", "kubernetes", "cryptography")


def test_the_agent_command_loads_no_controller_or_certificate_library() -> None:
    code = (
        "import sys, egresswatch.cli, egresswatch.agent.service, egresswatch.agent.flags\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(found.stdout.strip().strip("[]").replace("'", "").split(", "))
    assert "egresswatch" in loaded
    assert sorted(loaded & set(NOT_AT_START)) == []
