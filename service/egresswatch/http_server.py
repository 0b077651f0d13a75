"""Serve one aiohttp application on a `HOST:PORT` listen address, within limits.

The controller's API (and `egresswatch run`'s) starts here; an agent serves its health
endpoints on agent/listener.py instead (h11: an agent loads no aiohttp). Both hold their
connections to the same rules, with the same parts: a deadline for each request's head and
body, caps on connections in total and per peer IP (http_limits.py), problem documents for
heads the parser refuses, refusals counted on the process's registry and logged at a bounded
rate (http_guard.py; here through http_protocol.py), and a taken or foreign address fails the
same way (ListenError). tests/test_http_limits.py runs the same cases against both.
"""

from __future__ import annotations

from typing import NamedTuple

from aiohttp import web
from prometheus_client import CollectorRegistry

from egresswatch.addresses import parse_listen
from egresswatch.http_guard import ListenError, guarding
from egresswatch.http_limits import CONTROLLER_LIMITS, ListenerLimits
from egresswatch.http_protocol import GuardedRunner, GuardedSite, guard_requests

__all__ = ["ListenError", "Serving", "serve"]


class Serving(NamedTuple):
    """An application being served: its runner (the owner's to clean up) and the bound address."""

    runner: web.AppRunner
    address: tuple[str, int]  # port 0 in the listen address: here, the port the kernel chose


async def serve(
    app: web.Application,
    listen: str,
    *,
    limits: ListenerLimits = CONTROLLER_LIMITS,
    registry: CollectorRegistry | None = None,
) -> Serving:
    """Bind `listen` (`HOST:PORT`, ValueError if malformed) and serve `app` there, access log off.

    `limits` (default CONTROLLER_LIMITS; an agent passes AGENT_LIMITS) bound how long a
    request may take to arrive and how many connections are held (the cap is kept under this
    process's soft RLIMIT_NOFILE: `ListenerLimits.connection_cap`). Refusals are counted on
    `registry` (the process's; None: one of its own) as
    `egresswatch_http_connections_refused_total{reason}`.

    The caller owns the returned runner and stops serving with `await runner.cleanup()`. A bind
    that fails (address taken, not local, no permission) leaves nothing open and raises
    ListenError naming the address.
    """
    host, port = parse_listen(listen)
    guarded = guarding(listen, limits, registry)
    guard, refusals, accept_errors = guarded.guard, guarded.refusals, guarded.accept_errors
    runner = GuardedRunner(app, refusals=refusals, accept_errors=accept_errors)
    await runner.setup()
    assert runner.server is not None  # setup() made it
    runner.server.request_handler = guard_requests(runner.server.request_handler)
    site = GuardedSite(
        runner,
        host,
        port,
        guard=guard,
        limits=limits,
        # aiohttp's own keep-alive close stays as a backstop behind the guard's timers.
        handler_args={
            "access_log": None,
            "keepalive_timeout": limits.head_timeout_s + limits.idle_timeout_s,
        },
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    accept_errors.install()
    # With port 0 only the socket knows the port.
    sockets = site.sockets
    bound = sockets[0].getsockname() if sockets else (host, port)
    return Serving(runner, (str(bound[0]), int(bound[1])))
