"""The benchmark's processes: the tools it needs, started and stopped by PID, measured in /proc.

Every process is started by :func:`process` and stopped by its PID when the block ends (TERM,
then KILL): nothing is ever stopped by name. CPU is utime + stime (/proc/PID/stat), RSS is
VmRSS (/proc/PID/status): the process's own cost, whatever the machine's load.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Debian's /usr/sbin is not on every user's PATH, and nginx and dnsmasq live there.
SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# The binary each measured part runs, and the Debian package that ships it.
PACKAGES = {
    "nginx": "nginx-light",
    "dnsmasq": "dnsmasq-base",
    "prometheus-blackbox-exporter": "prometheus-blackbox-exporter",
    "unshare": "util-linux",
    "mount": "mount",
}


class BenchError(Exception):
    """A measured process failed (exited, never listened): the run cannot go on."""


class BenchUsageError(Exception):
    """The benchmark cannot start: a bad flag or a missing tool, named in the message."""


@dataclass(frozen=True)
class Tools:
    """Where the Debian tools are (absolute paths)."""

    nginx: str
    dnsmasq: str
    blackbox_exporter: str
    unshare: str


def find_tools(search_path: str, system_dirs: Sequence[str] = SYSTEM_DIRS) -> Tools:
    """The tools the benchmark runs, looked up in `search_path` (a PATH) and then in
    `system_dirs`; BenchUsageError naming every missing one with its Debian package."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for binary, package in PACKAGES.items():
        where = shutil.which(binary, path=os.pathsep.join([search_path, *system_dirs]))
        if where is None:
            missing.append(f"{binary} (Debian package {package})")
        else:
            found[binary] = where
    if missing:
        raise BenchUsageError(
            f"not installed: {', '.join(missing)}; e.g. apt-get install "
            + " ".join(sorted({PACKAGES[m.split(" ", 1)[0]] for m in missing}))
        )
    return Tools(
        found["nginx"], found["dnsmasq"], found["prometheus-blackbox-exporter"], found["unshare"]
    )


def egresswatch_command() -> list[str]:
    """How to start egresswatch: the console script next to this interpreter (a virtualenv's),
    else this interpreter running the CLI module (the same code, wherever it is installed)."""
    beside = Path(sys.executable).with_name("egresswatch")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "egresswatch.cli"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory field of /proc/PID/status in MiB (VmRSS now; VmHWM for the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` running for the duration of the block, its output in `log`; stopped by its PID
    (TERM, 15 s, then KILL) when the block ends, however it ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def log_tail(log: Path, limit: int = 2000) -> str:
    """The end of a process's log, for an error message."""
    try:
        return log.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


def wait_port(
    port: int, proc: subprocess.Popen[bytes], what: str, log: Path, limit_s: float = 15
) -> None:
    """Wait until something listens on 127.0.0.1:`port`; BenchError when `proc` exits first or
    `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}; its log:\n{log_tail(log)}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {limit_s:g} s")


def load_average() -> tuple[float, float, float]:
    """The machine's 1, 5 and 15 minute load averages (what else was running)."""
    return os.getloadavg()
