"""What a real egresswatch process loaded: the command line run as the console script runs it,
stopped by SIGTERM, and its `sys.modules` at exit (tests/test_agent_imports.py,
tests/test_run_imports.py; docs/performance.md)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.support.service import HOST

# Runs the command line as the console script does, and writes sys.modules at exit (the
# service commands exit normally on SIGTERM).
RUN_AND_LIST = """
import atexit, json, sys
from pathlib import Path
out = Path(sys.argv[1])
atexit.register(lambda: out.write_text(json.dumps(sorted(sys.modules))))
from egresswatch.cli import main
sys.exit(main(sys.argv[2:]))
"""


def wait_ready(port: int, process: subprocess.Popen[bytes], limit_s: float = 30.0) -> None:
    """Until the process's /healthz answers (bounded); fails with its output if it exits."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1].decode()
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the process did not answer /healthz within {limit_s} s")


def modules_at_exit(args: Sequence[str], port: int, directory: Path) -> list[str]:
    """`egresswatch ARGS` (listening on `port`) started, stopped by SIGTERM once it answers
    /healthz, and the names in its `sys.modules` at exit; fails unless it exited 0."""
    modules = directory / "modules.json"
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_AND_LIST, str(modules), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_ready(port, process)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    assert process.returncode == 0, err.decode()
    loaded: list[str] = json.loads(modules.read_text())
    return loaded
