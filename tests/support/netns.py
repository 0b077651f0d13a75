"""Network-namespace labs for tests: small topologies of `ip netns` nodes and veth pairs.

A `Lab` owns everything it creates and removes it on `close()` (or leaving `with`), even when
the test failed: its processes are killed by PID, then its namespaces are deleted (which
destroys their veths and nftables rulesets). Nothing is ever created or changed in the
root namespace: every `ip` command runs with `-n NODE`, and veth pairs are created inside a
node with their peer placed straight into the other node.

Addresses are checked: only 198.51.100.0/24 and 203.0.113.0/24 (documentation ranges) may
be assigned or routed in a lab, so lab traffic can never aim at a real network.

    from tests.support.netns import Lab, lab, require_lab   # `lab`: a function-scoped fixture

    @pytest.mark.root
    def test_something(lab: Lab) -> None:
        client, r1, server = lab.node("client"), lab.router("r1"), lab.node("server")
        lab.link(client, "198.51.100.1/30", r1, "198.51.100.2/30")
        lab.link(r1, "203.0.113.1/24", server, "203.0.113.10/24")
        lab.route(client, "default", via="198.51.100.2")
        lab.route(server, "default", via="203.0.113.1")
        lab.spawn_python(server, "tests.support.tcpservers", "accept", "203.0.113.10", "443")
        lab.nft(r1, DROP_FORWARD)  # nft -f syntax; this nft (1.0.6) wants it on several lines
        result = lab.call(client, "egresswatch.probes.tcp:tcp_connect", {...})  # a dict

    DROP_FORWARD = '''
    table ip lab {
      chain forward {
        type filter hook forward priority 0
        ip daddr 203.0.113.10 drop
      }
    }
    '''

`run_in_netns(name, "module:function", kwargs)` runs a function (sync or async) inside a
namespace in a fresh interpreter and returns what it returned, as JSON-decoded data
(a dataclass such as StepResult becomes a dict with its enums as their values).
`Lab.call(node, ...)` does the same through one long-lived worker interpreter per node,
which saves the interpreter start (~0.3 s) on every call after the first.

Tests that need a lab are marked `@pytest.mark.root`; `require_lab()` (called by the `lab`
fixture and by `Lab()`) skips with the reason when not root or `ip netns` cannot work.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO, Any

import pytest

LAB_NETWORKS = (
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("203.0.113.0/24"),
)
PREFIX = "ew"
REPO_ROOT = Path(__file__).resolve().parents[2]
ETC_NETNS = Path("/etc/netns")  # where `ip netns exec` finds a namespace's own /etc files
COMMAND_TIMEOUT_S = 10.0  # any one `ip`/`nft` command; they take milliseconds
READY_TIMEOUT_S = 10.0  # a spawned server has this long to print its ready line
STOP_TIMEOUT_S = 2.0  # a process gets this long to exit on SIGTERM before SIGKILL

_names = itertools.count(1)  # unique namespace names within this test process

# Runs inside the namespace: import the target, call it (running it if it is a
# coroutine), and give back the result as JSON. Dataclasses become dicts; the str-based
# enums of egresswatch.model serialise as their values.
_PRELUDE = """
import asyncio, dataclasses, importlib, inspect, json, os, sys, traceback

def call(target, kwargs):
    module, _, name = target.partition(":")
    result = getattr(importlib.import_module(module), name)(**kwargs)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        result = dataclasses.asdict(result)
    return json.dumps(result)
"""
_ONE_SHOT = _PRELUDE + "print(call(sys.argv[1], json.loads(sys.argv[2])))\n"
# A worker serves one call per stdin line, one JSON reply per stdout line, until stdin ends.
_WORKER = (
    _PRELUDE
    + """
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # what a target prints goes to stderr, never into the replies
sys.stdout = sys.stderr
for line in sys.stdin:
    request = json.loads(line)
    try:
        reply = '{"result": ' + call(request["target"], request["kwargs"]) + "}"
    except Exception:
        reply = json.dumps({"error": traceback.format_exc()})
    replies.write(reply + "\\n")
    replies.flush()
"""
)


@cache
def lab_unavailable() -> str | None:
    """Why a lab cannot be built here (not root, no `ip`, no netns support), or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the `{tool}` command"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sweep_orphans() -> list[str]:
    """Remove the namespaces of lab processes that died without closing them (SIGKILL, a
    crashed runner): each is named `ew<creator pid>-...`; when that PID is gone, the processes
    still inside are killed by their PIDs (`ip netns pids`), then the namespace is deleted.
    Returns the names removed. A namespace whose creator lives is never touched.
    """
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    removed = []
    for line in listed.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        found = re.fullmatch(rf"{PREFIX}(\d+)-\S+", name)
        if found is None or _alive(int(found.group(1))):
            continue
        inside = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )
        for pid in inside.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=COMMAND_TIMEOUT_S)
        shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@cache
def _swept_once() -> list[str]:
    return sweep_orphans()


def require_lab() -> None:
    """Skip the calling test (or fixture) with the reason when a lab cannot be built."""
    why = lab_unavailable()
    if why is not None:
        pytest.skip(f"network-namespace lab unavailable: {why}")


def in_lab(address: str) -> bool:
    """True when `address` (an IP or a prefix) lies inside the lab's documentation ranges."""
    network = ipaddress.ip_network(address, strict=False)
    return isinstance(network, ipaddress.IPv4Network) and any(
        network.subnet_of(lab) for lab in LAB_NETWORKS
    )


def _check_lab(address: str) -> None:
    if not in_lab(address):
        allowed = ", ".join(str(n) for n in LAB_NETWORKS)
        raise ValueError(f"{address} is outside the lab ranges ({allowed})")


def run_in_netns(
    namespace: str,
    target: str,
    kwargs: Mapping[str, Any] | None = None,
    *,
    timeout_s: float = 30.0,
) -> Any:
    """Call `target` ("package.module:function") inside `namespace`; return its result.

    The call runs in a new interpreter (`ip netns exec NAME python -c ...`, working
    directory the repository root, so `tests.*` modules import too); `kwargs` and the
    result travel as JSON. A failure raises RuntimeError carrying the child's stderr.
    """
    argv = ["ip", "netns", "exec", namespace, sys.executable, "-c", _ONE_SHOT, target]
    argv.append(json.dumps(dict(kwargs or {})))
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT, check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(
            f"{target} in {namespace} exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Node:
    """One namespace of a lab. `label` is the test's short name, `name` the real netns name."""

    label: str
    name: str

    def __str__(self) -> str:
        return self.label


@dataclass
class Lab:
    """A set of namespaces, links and processes, all removed by `close()`."""

    nodes: dict[str, Node] = field(default_factory=dict)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    _stderr: dict[int, IO[str]] = field(default_factory=dict, init=False, repr=False)
    _workers: dict[str, subprocess.Popen[str]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        require_lab()
        _swept_once()  # leftovers of a killed earlier run, once per process

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- building -----------------------------------------------------------------------

    def node(self, label: str) -> Node:
        """A new namespace with `lo` up and IPv6 off (the lab speaks IPv4 only)."""
        if label in self.nodes:
            raise ValueError(f"node {label!r} exists already")
        node = Node(label, f"{PREFIX}{os.getpid()}-{next(_names)}-{label}")
        _command(["ip", "netns", "add", node.name])
        self.nodes[label] = node  # owned from here on, so close() removes it
        self.ip(node, "link", "set", "lo", "up")
        self.sysctl(node, "net.ipv6.conf.all.disable_ipv6", "1")
        self.sysctl(node, "net.ipv6.conf.default.disable_ipv6", "1")
        return node

    def router(self, label: str) -> Node:
        """A node that forwards, and answers with ICMP without rate limit.

        Linux limits ICMP errors per destination (net.ipv4.icmp_ratelimit: after a burst of
        6, one per second), which would turn a quick series of probes into silent hops.
        """
        node = self.node(label)
        self.sysctl(node, "net.ipv4.ip_forward", "1")
        self.sysctl(node, "net.ipv4.icmp_ratelimit", "0")
        return node

    def link(self, a: Node, a_address: str, b: Node, b_address: str) -> tuple[str, str]:
        """A veth pair between `a` and `b` (named `to-<peer>` in each), addressed and up.

        Addresses are CIDR (`198.51.100.1/30`). Returns the interface names (in a, in b).
        """
        _check_lab(a_address)
        _check_lab(b_address)
        a_if, b_if = f"to-{b.label}"[:15], f"to-{a.label}"[:15]
        self.ip(a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        for node, ifname, address in ((a, a_if, a_address), (b, b_if, b_address)):
            self.ip(node, "addr", "add", address, "dev", ifname)
            self.ip(node, "link", "set", ifname, "up")
        return a_if, b_if

    def address(self, node: Node, address: str, ifname: str) -> None:
        """One more address on an interface of `node` (CIDR)."""
        _check_lab(address)
        self.ip(node, "addr", "add", address, "dev", ifname)

    def route(
        self, node: Node, destination: str, *, via: str | None = None, kind: str = ""
    ) -> None:
        """`ip route add [kind] destination [via via]` in `node`.

        `destination` is `default` or a lab prefix; `kind` is a route type such as
        `unreachable`, `prohibit`, `blackhole` or `throw` (then no `via`).
        """
        if destination != "default":
            _check_lab(destination)
        argv = ["route", "add", *([kind] if kind else []), destination]
        if via is not None:
            _check_lab(via)
            argv += ["via", via]
        self.ip(node, *argv)

    def unroute(self, node: Node, destination: str, *, kind: str = "") -> None:
        """Remove a route `route()` added (same destination and kind)."""
        self.ip(node, "route", "del", *([kind] if kind else []), destination)

    def etc_file(self, node: Node, name: str, text: str) -> Path:
        """Write /etc/netns/NODE/`name`: `ip netns exec` mounts it over /etc/`name` for every
        process the lab runs in `node` (resolv.conf, hosts). Removed by close()."""
        directory = ETC_NETNS / node.name
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        path.write_text(text)
        return path

    def sysctl(self, node: Node, key: str, value: str) -> None:
        self.exec(node, "sysctl", "-qw", f"{key}={value}")

    def nft(self, node: Node, ruleset: str) -> None:
        """Load an nftables ruleset (`nft -f -` syntax) into `node`."""
        self.exec(node, "nft", "-f", "-", input=ruleset)

    def nft_flush(self, node: Node) -> None:
        """Remove every nftables rule and table of `node`."""
        self.exec(node, "nft", "flush", "ruleset")

    # --- running ------------------------------------------------------------------------

    def ip(self, node: Node, *argv: str) -> str:
        """`ip -n NODE argv...` (never in the root namespace); its stdout."""
        return _command(["ip", "-n", node.name, *argv])

    def exec(self, node: Node, *argv: str, input: str | None = None) -> str:
        """Run a command to completion inside `node`; its stdout; CalledProcessError if it fails."""
        return _command(["ip", "netns", "exec", node.name, *argv], input=input)

    def spawn(
        self,
        node: Node,
        argv: Sequence[str],
        *,
        ready: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        """Start a long-running process inside `node`; the lab kills it (by PID) on close.

        With `ready`, wait until the process prints a line starting with it (RuntimeError if
        it exits or stays silent for READY_TIMEOUT_S). Its stdout after that line is not
        read: a spawned process prints its ready line, then keeps quiet on stdout. `env` adds
        variables to the environment it inherits.
        """
        if env:  # `env` execs argv in turn, so the PID stays argv's
            argv = ["env", *(f"{key}={value}" for key, value in env.items()), *argv]
        # Without a ready line nobody reads its stdout: it goes to the stderr file, since a
        # pipe nobody reads fills up and then blocks the process (tinyproxy's log did).
        process = self._start(node, argv, stdin=subprocess.DEVNULL, read_stdout=ready is not None)
        if ready is not None and _read_line(process, READY_TIMEOUT_S, prefix=ready) is None:
            _stop(process)
            raise RuntimeError(
                f"{list(argv)!r} in {node} did not print {ready!r}: {self._stderr_of(process)}"
            )
        return process

    def _start(
        self, node: Node, argv: Sequence[str], *, stdin: int, read_stdout: bool = True
    ) -> subprocess.Popen[str]:
        # stderr goes to a file, not a pipe: a chatty process must never block on a full pipe
        stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115  # closed by close()
        process = subprocess.Popen(
            ["ip", "netns", "exec", node.name, *argv],  # ip execs argv: the PID is argv's
            stdin=stdin,
            stdout=subprocess.PIPE if read_stdout else stderr,
            stderr=stderr,
            text=True,
            cwd=REPO_ROOT,
        )
        self.processes.append(process)
        self._stderr[process.pid] = stderr
        return process

    def stop(self, process: subprocess.Popen[str]) -> None:
        """Stop one process the lab started (by its PID), before close() would."""
        _stop(process)
        if process in self.processes:
            self.processes.remove(process)
        stderr = self._stderr.pop(process.pid, None)
        if stderr is not None:
            stderr.close()

    def stderr_of(self, process: subprocess.Popen[str]) -> str:
        """The end of what a process the lab started wrote to stderr."""
        return self._stderr_of(process)

    def _stderr_of(self, process: subprocess.Popen[str]) -> str:
        stderr = self._stderr.get(process.pid)
        if stderr is None:
            return ""
        stderr.seek(0)
        return stderr.read().strip()[-2000:]

    def spawn_python(
        self, node: Node, module: str, *args: str, ready: str = "ready"
    ) -> subprocess.Popen[str]:
        """`python -m module args...` inside `node` (run from the repository root)."""
        return self.spawn(node, [sys.executable, "-m", module, *args], ready=ready)

    def call(
        self,
        node: Node,
        target: str,
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout_s: float = 30.0,
    ) -> Any:
        """Like `run_in_netns`, but served by one long-lived interpreter per node.

        The first call in a node starts the worker; later calls skip the interpreter start.
        RuntimeError carries the target's traceback; TimeoutError kills the worker.
        """
        worker = self._workers.get(node.label)
        if worker is None or worker.poll() is not None:
            worker = self._start(node, [sys.executable, "-c", _WORKER], stdin=subprocess.PIPE)
            self._workers[node.label] = worker
        assert worker.stdin is not None and worker.stdout is not None
        request = {"target": target, "kwargs": dict(kwargs or {})}
        try:
            worker.stdin.write(json.dumps(request) + "\n")
            worker.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"the worker in {node} died: {self._stderr_of(worker)}") from None
        line = _read_line(worker, timeout_s)
        if line is None:
            _stop(worker)
            del self._workers[node.label]
            raise TimeoutError(f"{target} in {node} gave no answer within {timeout_s} s")
        if not line:
            raise RuntimeError(f"the worker in {node} died: {self._stderr_of(worker)}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{target} in {node} raised:\n{reply['error']}")
        return reply["result"]

    # --- teardown -----------------------------------------------------------------------

    def close(self) -> None:
        """Kill the lab's processes by PID, then delete its namespaces. Safe to call twice."""
        for process in self.processes:
            _stop(process)
        self.processes.clear()
        self._workers.clear()
        for stderr in self._stderr.values():
            stderr.close()
        self._stderr.clear()
        for node in self.nodes.values():
            subprocess.run(
                ["ip", "netns", "del", node.name], capture_output=True, timeout=COMMAND_TIMEOUT_S
            )
            shutil.rmtree(ETC_NETNS / node.name, ignore_errors=True)
        self.nodes.clear()


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh, empty lab, torn down after the test whatever happened."""
    require_lab()
    with Lab() as built:
        yield built


def _command(argv: Sequence[str], *, input: str | None = None) -> str:
    done = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout


def _read_line(process: subprocess.Popen[str], timeout_s: float, prefix: str = "") -> str | None:
    """The next stdout line starting with `prefix` ("" at EOF), or None after `timeout_s`."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                return None
            line = process.stdout.readline()
            if not line or line.startswith(prefix):
                return line
    return None


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; by this Popen's PID only."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
