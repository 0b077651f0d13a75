"""Start the fault lab by hand, and remove it: `python -m tests.lab up|down` (as root).

    python -m tests.lab up      # build it, run egresswatch in it, print how to use it, return
    python -m tests.lab down    # remove every namespace and process it started

`up` starts a detached keeper process that owns the lab (docs/lab.md); it writes
DIR/state.json (namespaces, PIDs, addresses) once every target is healthy, and removes the lab
on SIGTERM or SIGINT, or after --hours. `down` sends it SIGTERM and waits; if the keeper died
without cleaning up, `down` sweeps its namespaces and the processes still in them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("/tmp/egresswatch-lab")
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
WAIT_STEP_S = 0.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="build the lab and run egresswatch in it")
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    up.add_argument("--hours", type=float, default=8.0, help="remove it after this long")
    up.add_argument("--foreground", action="store_true", help="keep it in this terminal")
    down = commands.add_parser("down", help="remove the lab")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the lab needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.command == "down":
        return _down(args.dir)
    if args.foreground:
        return _keep(args.dir, args.hours)
    return _up(args.dir, args.hours)


def _up(directory: Path, hours: float) -> int:
    """Start the keeper detached, wait until it says the lab is healthy, print the state."""
    state = directory / "state.json"
    if state.exists():
        print(f"a lab is up already ({state}); `python -m tests.lab down` first", file=sys.stderr)
        return 2
    directory.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "tests.lab", "up", "--foreground"]
    argv += ["--dir", str(directory), "--hours", str(hours)]
    with (directory / "keeper.log").open("w") as log:
        keeper = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and keeper.poll() is None and not state.exists():
        time.sleep(WAIT_STEP_S)
    if not state.exists():
        with contextlib.suppress(ProcessLookupError):
            keeper.terminate()
        print(f"the lab did not come up; see {directory / 'keeper.log'}", file=sys.stderr)
        return 1
    print(usage(json.loads(state.read_text())))
    return 0


def _keep(directory: Path, hours: float) -> int:
    """Own the lab until a signal or `hours`; remove it whatever happens."""
    from tests.lab.topology import EgressLab

    directory.mkdir(parents=True, exist_ok=True)
    # Handlers, not a blocked mask: the lab's processes would inherit a mask and ignore the
    # SIGTERM that stops them.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    state = directory / "state.json"
    try:
        with EgressLab(directory) as built:
            built.wait_healthy()
            state.write_text(json.dumps(describe(built, directory), indent=2) + "\n")
            print(usage(describe(built, directory)), flush=True)
            stop.wait(hours * 3600)
    finally:  # only once the lab is gone, so that `down` waits for all of it
        state.unlink(missing_ok=True)
    return 0


def describe(built: Any, directory: Path) -> dict[str, Any]:
    from tests.lab import topology as t

    processes = {key: process.pid for key, process in built.processes.items()}
    return {
        "keeper_pid": os.getpid(),
        "directory": str(directory),
        "namespaces": built.namespaces,
        "pids": processes,
        "all_pids": [p.pid for p in built.lab.processes],
        "controller": t.CONTROLLER,
        "config": str(built.config_file),
        "ca_file": str(built.ca_file),
        "token_env": t.TOKEN_ENV,
        "token_file": str(directory / "token"),
        "addresses": {
            "pod": t.POD,
            "node": t.NODE_TO_POD,
            "cluster_dns": t.CLUSTER_DNS,
            "egress_device": t.EGRESS_DOWN,
            "proxy": f"{t.EGRESS_DOWN}:{t.PROXY_PORT}",
            "shop": t.SHOP,
            "api": t.API,
            "control": t.CONTROL,
            "slow": t.SLOW,
            "upstream_dns": t.UPSTREAM_DNS,
        },
    }


def usage(state: dict[str, Any]) -> str:
    """What to type next: the namespaces, and commands to look, break, repair and remove."""
    ns, api, shop = state["namespaces"], state["controller"], state["addresses"]["shop"]
    drop = (
        "'table ip fault { chain forward { type filter hook forward priority 0; "
        f"ip daddr {shop} tcp dport 443 drop; }} }}'"
    )
    rows = [
        ("ask the controller", f"ip netns exec {ns['node']} curl -s {api}/api/v1/status"),
        (
            "open incidents",
            f"ip netns exec {ns['node']} curl -s '{api}/api/v1/incidents?open=true'",
        ),
        (
            "check from the pod",
            f"ip netns exec {ns['pod']} egresswatch check shop "
            f"--config {state['config']} --ca-file {state['ca_file']}",
        ),
        ("break the firewall", f"ip netns exec {ns['egress']} nft -f - <<< {drop}"),
        ("repair it", f"ip netns exec {ns['egress']} nft delete table ip fault"),
        ("stop the cluster DNS", f"kill {state['pids'].get('cluster-dns')}"),
        ("remove the lab", f"python -m tests.lab down --dir {state['directory']}"),
    ]
    names = ", ".join(f"{label}={name}" for label, name in ns.items())
    lines = [f"The fault lab is up (docs/lab.md). Namespaces: {names}", ""]
    lines += [f"  {what + ':':<22}{command}" for what, command in rows]
    return "\n".join(lines)


def _down(directory: Path) -> int:
    state_file = directory / "state.json"
    if not state_file.exists():
        print(f"no lab is up here ({state_file} is absent)", file=sys.stderr)
        return 0
    state = json.loads(state_file.read_text())
    keeper = int(state["keeper_pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(keeper, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _alive(keeper):
        time.sleep(WAIT_STEP_S)
    if state_file.exists():
        # The keeper is gone without cleaning up. Its namespaces carry its (now dead) PID in
        # their names, so the sweep every lab runs at start removes them and what runs inside.
        from tests.support.netns import sweep_orphans

        sweep_orphans()
        state_file.unlink(missing_ok=True)
    print("the lab is down")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
