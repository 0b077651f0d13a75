"""The agent process (`egresswatch agent`): rounds on their timers, pushed to the controller.

An agent holds no database credentials: it learns what to probe from the controller's plan
(agent/plan.py), runs the rounds itself (RoundRunner, RoundScheduler) and pushes the results
over HTTP (agent/sink.py), buffering while the controller is away. It serves its own
/healthz, /readyz and /metrics (its health: lateness, buffer depth, batches, dropped rounds)
from its own registry. Step series are the controller's to export, from the rounds it stores,
so that no step is counted twice in Prometheus.

Who the agent is comes from the Downward API environment or from flags (agent/identity.py);
its health endpoints and metrics hooks are in agent/health.py.
It never imports storage or the controller (DESIGN.md §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from egresswatch import __version__
from egresswatch.agent.checklists import LocalSettings
from egresswatch.agent.health import AgentMetrics, health_handler
from egresswatch.agent.http_client import ControllerClient, verified_context
from egresswatch.agent.identity import (
    SourceIdentity,
    TokenFile,
    UsageError,
    check_controller_url,
    resolve_identity,
)
from egresswatch.agent.listener import Listener, listen
from egresswatch.agent.plan import PlanFollower
from egresswatch.agent.runner import RoundRunner
from egresswatch.agent.sink import HttpSink, SinkTuning
from egresswatch.agent.sink_types import MIB
from egresswatch.agent.spill import DEFAULT_SPILL_MIB, SpillError, SpillFile
from egresswatch.backoff import Backoff
from egresswatch.http_guard import ListenError
from egresswatch.http_limits import AGENT_LIMITS
from egresswatch.logs import Sparse
from egresswatch.looplag import IDLE_PERIOD_S, LoopLag, period_for
from egresswatch.metrics import Metrics
from egresswatch.model import RoundResult
from egresswatch.plan import Plan
from egresswatch.schedule import RoundScheduler

__all__ = [
    "DEFAULT_LISTEN",
    "Agent",
    "AgentMetrics",
    "AgentOptions",
    "AgentStartupError",
    "SourceIdentity",
    "TokenFile",
    "UsageError",
    "check_controller_url",
    "health_handler",
    "resolve_identity",
]

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9109"
ENV_PROXY_USERNAME, ENV_PROXY_PASSWORD = "EGRESSWATCH_PROXY_USERNAME", "EGRESSWATCH_PROXY_PASSWORD"


class AgentStartupError(Exception):
    """The agent cannot start (e.g. its listen address is taken); the message says why."""


@dataclass(frozen=True)
class AgentOptions:
    """Everything the agent is told at start; the defaults are the production ones."""

    controller: str
    token_file: Path
    identity: SourceIdentity
    listen: str = DEFAULT_LISTEN
    resolv_conf: Path = Path("/etc/resolv.conf")
    ca_file: Path | None = None
    max_concurrent_rounds: int = 64
    sink: SinkTuning = field(default_factory=SinkTuning)
    spill_file: Path | None = None  # None: rounds past the memory bound are dropped
    spill_max_bytes: int = DEFAULT_SPILL_MIB * MIB
    plan_refresh_s: float = 30.0
    plan_backoff: Backoff = field(default_factory=Backoff)
    flush_timeout_s: float = 10.0


# -- the process ----------------------------------------------------------------------------------


class Agent:
    """One agent: plan, rounds, sink and its own health endpoints, wired here.

    `environ` (default: the process environment) is where HTTP(S)_PROXY and NO_PROXY are read
    for the rounds. `on_round` sees every round the agent ran (tests, the demo).
    """

    def __init__(
        self,
        options: AgentOptions,
        *,
        environ: Mapping[str, str] | None = None,
        on_round: Callable[[RoundResult], None] | None = None,
    ) -> None:
        self.options = options
        self._environ = environ
        self._observer = on_round
        self.registry = CollectorRegistry()
        self._troubled = Sparse(log, "rounds cut at their timeout or skipped")
        self.metrics = Metrics(self.registry, version=__version__)
        # The prober's own lateness (overload is not an outage), sampled fast only while a
        # round runs: an idle agent's wake-ups are most of its CPU (looplag.py).
        self.loop_lag = LoopLag(idle_period_s=IDLE_PERIOD_S)
        self.metrics.watch_loop_lag(self.loop_lag.recent_max)
        self._hooks = AgentMetrics(self.metrics, self.registry)
        self._token = TokenFile(options.token_file)
        self._stopping = asyncio.Event()
        self._stopped = False
        # Each its own keep-alive connection: a slow batch does not hold up the plan.
        self._clients: list[ControllerClient] = []
        self._spill: SpillFile | None = None
        self._http: Listener | None = None
        self.listening: tuple[str, int] | None = None
        self.runner: RoundRunner | None = None
        self.sink: HttpSink
        self.scheduler: RoundScheduler
        self.plan: PlanFollower

    @property
    def source(self) -> SourceIdentity:
        return self.options.identity

    async def start(self) -> None:
        """Serve health, start the sink and the scheduler, and start following the plan.

        Does not wait for the controller: rounds begin once a first plan arrives (`readyz`
        says so), and the plan is asked for until it does.
        """
        options = self.options
        self._token.load()
        if options.spill_file is not None:
            spill = SpillFile(
                options.spill_file,
                source=options.identity.name,
                source_kind=options.identity.kind.value,
                max_bytes=options.spill_max_bytes,
            )
            try:
                spill.open()
            except SpillError as exc:
                raise AgentStartupError(str(exc)) from None
            self._spill = spill
        tls = None
        if urlsplit(options.controller).scheme == "https":  # one context, both connections
            tls = verified_context(options.ca_file)
        sink_client, plan_client = self._client(tls), self._client(tls)
        self._clients = [sink_client, plan_client]
        self.sink = HttpSink(
            sink_client,
            source=options.identity.name,
            source_kind=options.identity.kind,
            source_node=options.identity.node,
            token=self._token,
            tuning=options.sink,
            hooks=self._hooks,
            spill=self._spill,
        )
        self.scheduler = RoundScheduler(
            max_concurrent=options.max_concurrent_rounds,
            on_lateness=self.metrics.observe_lateness,
            on_timeout=lambda key: self._count(key, self.metrics.count_round_timeout),
            on_skipped=lambda key: self._count(key, self.metrics.count_round_skipped),
            on_error=lambda key: log.error("round raised", extra={"job": key}),
            on_shed=lambda _key: self.metrics.count_round_shed(),
        )
        self.plan = PlanFollower(
            plan_client,
            source=options.identity.name,
            token=self._token,
            on_plan=self._apply_plan,
            refresh_s=options.plan_refresh_s,
            backoff=options.plan_backoff,
            request_timeout_s=options.sink.request_timeout_s,
        )
        try:
            await self._serve(options.listen)
        except BaseException:
            await self._close_clients()
            if self._spill is not None:
                self._spill.close()
            raise
        self.sink.start()
        self.loop_lag.start()
        self.scheduler.start()
        self.plan.start()
        log.info(
            "egresswatch agent running",
            extra={
                "source": options.identity.name,
                "kind": options.identity.kind.value,
                "controller": options.controller,
                "listen": f"{self.listening[0]}:{self.listening[1]}" if self.listening else None,
            },
        )

    async def run(self) -> None:
        """Start, then work until SIGINT/SIGTERM or `request_stop()`, then stop cleanly."""
        loop = asyncio.get_running_loop()
        await self.start()
        # What exists now lives as long as the process: out of the collector's generations, a
        # full collection no longer walks it (6.5 ms each with the agent's modules loaded).
        gc.freeze()
        with contextlib.ExitStack() as handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_stop)
                handlers.callback(loop.remove_signal_handler, sig)
            try:
                await self._stopping.wait()
            finally:
                await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Stop asking for plans and starting rounds (rounds in flight are cancelled), send
        what is buffered (at most flush_timeout_s), then close. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if hasattr(self, "plan"):
            await self.plan.stop()
        if hasattr(self, "scheduler"):
            await self.scheduler.shutdown()
        await self.loop_lag.stop()
        if hasattr(self, "sink"):
            await self.sink.close(self.options.flush_timeout_s)
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self._close_clients()
        log.info("egresswatch agent stopped")

    def readiness(self) -> dict[str, bool]:
        """Ready once a plan is in and the rounds are on their timers."""
        return {
            "plan": hasattr(self, "plan") and self.plan.ready.is_set(),
            "scheduler": hasattr(self, "scheduler") and self.scheduler.running,
        }

    # -- wiring -----------------------------------------------------------------------------

    def _client(self, tls: ssl.SSLContext | None) -> ControllerClient:
        """A connection to the controller; `tls` verifies an https one (the system's trust
        store and the agent's CA file)."""
        return ControllerClient(
            self.options.controller, user_agent=f"egresswatch-agent/{__version__}", tls=tls
        )

    async def _close_clients(self) -> None:
        for client in self._clients:
            await client.close()
        self._clients = []

    def _local_settings(self) -> LocalSettings:
        """What this agent keeps for itself: flags, and proxy credentials from its environment."""
        options = self.options
        environ = os.environ if self._environ is None else self._environ
        return LocalSettings(
            resolv_conf=options.resolv_conf,
            ca_file=options.ca_file,
            proxy_username=environ.get(ENV_PROXY_USERNAME) or None,
            proxy_password=environ.get(ENV_PROXY_PASSWORD) or None,
        )

    def _apply_plan(self, plan: Plan) -> None:
        """A new plan: the runner takes it in place, the scheduler gets the jobs (removed
        targets stop at once, unchanged ones keep their phase)."""
        local = self._local_settings()
        if plan.proxy is not None and plan.proxy.authenticated and local.proxy_username is None:
            log.warning(
                "the proxy wants credentials and this agent has none: set "
                f"{ENV_PROXY_USERNAME} and {ENV_PROXY_PASSWORD}",
                extra={"proxy": plan.proxy.url},
            )
        if self.runner is None:
            self.runner = RoundRunner(
                source=self.options.identity.name,
                sink=self._on_round,
                environ=self._environ,
                stalls=self.loop_lag.stalled,
                watch=self.loop_lag.watching,
            )
        self.runner.apply(plan, local)
        self.scheduler.set_jobs(self.runner.jobs())
        if plan.targets:  # the idle sampler's CPU is most of an idle agent's (looplag.py)
            self.loop_lag.set_period(period_for(min(t.step_timeout_s for t in plan.targets)))

    def _on_round(self, result: RoundResult) -> None:
        self.sink.submit(result)
        if self._observer is not None:
            try:
                self._observer(result)
            except Exception:  # an observer's bug must not cost a round
                log.exception("round observer failed")

    def _count(self, key: str, count: Callable[[], None]) -> None:
        count()
        self._troubled.note(job=key)

    async def _serve(self, address: str) -> None:
        handler = health_handler(self.registry, self.readiness)
        try:
            self._http = await listen(handler, address, limits=AGENT_LIMITS, registry=self.registry)
        except ListenError as exc:
            raise AgentStartupError(str(exc)) from None
        self.listening = self._http.address
