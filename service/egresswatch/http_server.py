"""Serve one aiohttp application on a `HOST:PORT` listen address.

The controller's API and an agent's health endpoints both start here, so a taken or foreign
address fails the same way in both. A neutral module (as health.py): the agent must not import
the controller.
"""

from __future__ import annotations

from typing import NamedTuple

from aiohttp import web

from egresswatch.settings import parse_listen

__all__ = ["ListenError", "Serving", "serve"]


class ListenError(Exception):
    """The listen address cannot be bound; the message is `cannot listen on ADDRESS: why`."""


class Serving(NamedTuple):
    """An application being served: its runner (the owner's to clean up) and the bound address."""

    runner: web.AppRunner
    address: tuple[str, int]  # port 0 in the listen address: here, the port the kernel chose


async def serve(app: web.Application, listen: str) -> Serving:
    """Bind `listen` (`HOST:PORT`, ValueError if malformed) and serve `app` there, access log off.

    The caller owns the returned runner and stops serving with `await runner.cleanup()`. A bind
    that fails (address taken, not local, no permission) leaves nothing open and raises
    ListenError naming the address.
    """
    host, port = parse_listen(listen)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    # aiohttp does not expose the bound socket, and with port 0 only the socket knows the port.
    sockets = getattr(site._server, "sockets", None) or []
    bound = sockets[0].getsockname() if sockets else (host, port)
    return Serving(runner, (str(bound[0]), int(bound[1])))
