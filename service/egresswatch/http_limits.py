"""The listener's limits: how long a client may take to send a request, and how many
connections it may hold. The controller and an agent each pass their own (CONTROLLER_LIMITS,
AGENT_LIMITS) to their listener (`http_server.serve()`, `agent.listener.listen()`).

A client that sends half a request head and then nothing holds a connection, and so a file
descriptor, for as long as the server lets it. Without these limits 20,000 such clients took
every descriptor of the controller: the API, /metrics, ingest and the probe rounds all failed.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass, fields

__all__ = ["AGENT_LIMITS", "CONTROLLER_LIMITS", "FD_RESERVE", "ListenerLimits", "nofile_soft"]

# Descriptors kept out of the connection cap's reach: the database pool, the probe rounds'
# sockets, log and spill files. Half of what remains is the most the listener may hold.
FD_RESERVE = 256


@dataclass(frozen=True)
class ListenerLimits:
    """Time limits per connection and caps on connections; every field must be positive.

    - `head_timeout_s`: a request head (request line and headers) must be complete this long
      after the connection opened, or after the first byte of a keep-alive connection's next
      request; else the connection is cut (counted as `head_timeout`).
    - `idle_timeout_s`: a keep-alive connection that sends no byte of a next request for this
      long after its last answer is closed (quietly: that is no refusal). This is also how long
      a client may take to read an answer.
    - `body_timeout_s`: a request body must have arrived in full this long after its head; else
      the connection is cut (`body_timeout`).
    - `max_connections`: connections held at once, at most; never more than half of the file
      descriptors the process may open past FD_RESERVE (`connection_cap`). A connection past the
      cap closes the oldest connection still waiting for a request head (`evicted`), so a
      client that sends its request at once is served while slow ones hold the rest; with none
      waiting, the new connection is closed at once (`total_limit`).
    - `max_per_peer`: connections held at once from one IP address; past it a new one is
      closed at once (`peer_limit`).
    """

    head_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    body_timeout_s: float = 30.0  # a 5 MiB ingest batch at 175 kB/s
    max_connections: int = 4096
    max_per_peer: int = 256

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"listener limit {field.name}: must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"listener limit {field.name}: must be above 0, got {value!r}")

    def connection_cap(self, nofile: int | None) -> int:
        """The connections held at once: `max_connections`, but at most half of `nofile` (the
        soft RLIMIT_NOFILE; None: unlimited) past FD_RESERVE, and at least 1."""
        if nofile is None:
            return self.max_connections
        return max(1, min(self.max_connections, (nofile - FD_RESERVE) // 2))


# The controller: every agent holds a keep-alive connection or two, and clusters have
# thousands of nodes; an ingress or a NAT may put many clients behind one address.
CONTROLLER_LIMITS = ListenerLimits()
# An agent serves /healthz, /readyz and /metrics to the kubelet and Prometheus: a handful.
AGENT_LIMITS = ListenerLimits(
    head_timeout_s=5.0, idle_timeout_s=30.0, body_timeout_s=5.0, max_connections=32, max_per_peer=8
)


def nofile_soft() -> int | None:
    """This process's soft RLIMIT_NOFILE, None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)
