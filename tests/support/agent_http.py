"""The agent's client to a controller, for tests that drive a sink or a plan follower alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from egresswatch.agent.http_client import ControllerClient


@asynccontextmanager
async def controller_client(url: str) -> AsyncIterator[ControllerClient]:
    """A ControllerClient of `url`, its connection closed on the way out."""
    client = ControllerClient(url, user_agent="egresswatch-test")
    try:
        yield client
    finally:
        await client.close()
