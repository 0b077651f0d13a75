"""Real TCP peers for tests, on loopback ephemeral ports (or any address, in a lab namespace).

    TcpServer("accept")   # accepts and keeps every connection open until closed
    TcpServer("reset")    # accepts, then resets at once (SO_LINGER {1, 0}, then close: a RST)
    TcpServer("reset", reset_after_s=0.02)  # the RST a moment later, as from a far endpoint
    ClosedPort()          # a port bound but not listening: a SYN to it is answered with RST

Fixtures (import them explicitly into the test module): `accept_server`, `reset_server`,
`refused_port` on 127.0.0.1, and `make_tcp_server` (a factory: mode, host, port) for more,
all stopped at teardown.

In a lab namespace, run one as a process that prints `ready HOST PORT` once listening and
serves until SIGTERM:

    python -m tests.support.tcpservers accept 203.0.113.10 443 [--lifetime 300]
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

import pytest

MODES = ("accept", "reset")
_POLL_S = 0.05  # the accept loop's wake-up, so close() returns quickly
_RST_LINGER = struct.pack("ii", 1, 0)  # l_onoff=1, l_linger=0: close() sends RST
LIFETIME_S = 300.0  # a served process exits by itself after this long
_KEPT_MAX = 256  # connections an accept server keeps open; past that it closes the oldest


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class TcpServer:
    """A listener on `host:port` (0: ephemeral) that accepts or resets; a thread serves it."""

    def __init__(
        self, mode: str, host: str = "127.0.0.1", port: int = 0, *, reset_after_s: float = 0.0
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.host = host
        # A reset this long after the accept reaches the client after its connect completed
        # (and after what it sends at once), as a far endpoint's does; 0: at once, which on
        # loopback may beat the client's own view of the connect.
        self.reset_after_s = reset_after_s
        self.accepted = 0  # connections accepted so far
        self._kept: list[socket.socket] = []
        self._stop = threading.Event()
        self._listener = socket.socket(_family(host), socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(64)
        self._listener.settimeout(_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._serve, name=f"tcp-{mode}-{self.port}", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed
                return
            self.accepted += 1
            if self.mode == "reset":
                self._stop.wait(self.reset_after_s)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
                conn.close()
                continue
            self._kept.append(conn)
            if len(self._kept) > _KEPT_MAX:
                self._kept.pop(0).close()

    def wait_accepted(self, count: int, timeout_s: float = 2.0) -> bool:
        """Wait until `count` connections were accepted (the serving thread may lag)."""
        deadline = time.monotonic() + timeout_s
        while self.accepted < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.accepted >= count

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._listener.close()
        for conn in self._kept:
            conn.close()
        self._kept.clear()


class ClosedPort:
    """A port held bound but not listening, so nothing else takes it: connects are refused."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._sock = socket.socket(_family(host), socket.SOCK_STREAM)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()


MakeServer = Callable[..., TcpServer]


@pytest.fixture
def make_tcp_server() -> Iterator[MakeServer]:
    """A factory `make(mode, host="127.0.0.1", port=0)`; every server is closed at teardown."""
    made: list[TcpServer] = []

    def make(mode: str, host: str = "127.0.0.1", port: int = 0) -> TcpServer:
        made.append(TcpServer(mode, host, port))
        return made[-1]

    try:
        yield make
    finally:
        for server in made:
            server.close()


@pytest.fixture
def accept_server() -> Iterator[TcpServer]:
    server = TcpServer("accept")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def reset_server() -> Iterator[TcpServer]:
    server = TcpServer("reset")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def refused_port() -> Iterator[ClosedPort]:
    port = ClosedPort()
    try:
        yield port
    finally:
        port.close()


def main(argv: list[str] | None = None) -> None:
    """Serve one mode until SIGTERM (or `--lifetime`); print `ready HOST PORT` once listening."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.tcpservers")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument(
        "--lifetime", type=float, default=LIFETIME_S, help="exit after this many seconds"
    )
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    server = TcpServer(args.mode, args.host, args.port)
    print(f"ready {server.host} {server.port}", flush=True)
    try:
        stop.wait(args.lifetime)  # bounded: an orphan (its test runner killed) still ends
    finally:
        server.close()


if __name__ == "__main__":
    main()
