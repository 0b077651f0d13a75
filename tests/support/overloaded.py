"""`egresswatch` in a process that also runs a CPU hog: a thread that holds the GIL in bursts.

    python -m tests.support.overloaded --burst 0.01 --lifetime 60 -- run --config FILE ...

SIGUSR1 starts the hog, SIGUSR2 ends it (so the process starts, and a test reads /metrics,
at full speed). The hog is pure Python arithmetic; ``sys.setswitchinterval(burst)`` lets it
keep the GIL for up to ``burst`` seconds each time the event loop's thread gave it up (every
select and syscall), so the event loop runs late in bursts, as in a process past one core.
The process stops itself (SIGTERM) after ``lifetime`` seconds, so a test that dies leaves
nothing behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from egresswatch.cli import main as egresswatch_main

DEFAULT_SWITCH_S = sys.getswitchinterval()


def _hog(start: threading.Event, stop: threading.Event, burst_s: float) -> None:
    start.wait()
    if stop.is_set():
        return
    sys.setswitchinterval(burst_s)
    while not stop.is_set():
        sum(range(20_000))  # ~0.3 ms of bytecode between checks
    sys.setswitchinterval(DEFAULT_SWITCH_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=float, required=True, help="seconds the hog may hold")
    parser.add_argument("--lifetime", type=float, default=120.0, help="SIGTERM after this")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- egresswatch's arguments")
    args = parser.parse_args(argv)
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    start, stop = threading.Event(), threading.Event()
    hog = threading.Thread(target=_hog, args=(start, stop, args.burst), name="cpu-hog")
    hog.daemon = True
    hog.start()
    signal.signal(signal.SIGUSR1, lambda *_: start.set())
    signal.signal(signal.SIGUSR2, lambda *_: stop.set())
    timer = threading.Timer(args.lifetime, os.kill, (os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()
    try:
        return egresswatch_main(rest)
    finally:
        stop.set()
        start.set()
        timer.cancel()


if __name__ == "__main__":
    sys.exit(main())
