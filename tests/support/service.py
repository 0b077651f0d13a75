"""Small helpers for the tests that run the service in this test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

HOST = "127.0.0.1"


def free_port() -> int:
    """A loopback TCP port free a moment ago (for --listen)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Until `condition()` holds; TimeoutError after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)


async def poll(check: Callable[[], Awaitable[T]], timeout_s: float, every_s: float = 0.2) -> T:
    """`await check()` until it gives something truthy, and return that; TimeoutError after
    `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(every_s)
