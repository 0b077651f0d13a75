"""`egresswatch run`: the controller and a local agent in one process, wired in one place.

With `local_agent=False` (`egresswatch controller`) it is the controller alone: no rounds of
its own and no local source; results arrive from agents through `POST /api/v1/results`.

Every long-lived part is made here and injected: the engine, the store, the writer, the
metrics registry, the scheduler, the round runner, the HTTP server. Nothing is global. What the
parts do lives in modules named for it: the schema check (storage/schema.py), ingest
(controller/ingest/intake.py), detection (detection_wiring.py), retention
(storage/retention.py), the config reload (reload.py), the HTTP server (http_server.py) and
the application it serves (api_wiring.py), the Kubernetes parts (kube_wiring.py), the
once-per-cluster work (cluster_work.py), on the holder of a Lease when several replicas run
(leadership.py).

The Kubernetes client (and leadership.py, the watches, the elector) is imported only in the
branches that run with `kubernetes.enabled`: `egresswatch run` without it never loads it
(tests/test_run_imports.py; docs/performance.md, "How cost grows with targets").
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from egresswatch import __version__
from egresswatch.agent.config_file import follow_config
from egresswatch.agent.runner import RoundRunner
from egresswatch.api_wiring import AppParts, OnDemand, access, controller_app
from egresswatch.cluster_work import CONTROLLER_TICK_S, ClusterWork, retention_windows
from egresswatch.compact_metrics import CompactRegistry
from egresswatch.controller.detection.incidents import IncidentEvent
from egresswatch.controller.detection.pipeline import Pipeline
from egresswatch.controller.ingest.intake import Ingest
from egresswatch.detection_wiring import Detection
from egresswatch.heaptrim import HeapTrim, find_trim
from egresswatch.http_limits import CONTROLLER_LIMITS
from egresswatch.http_server import ListenError, serve
from egresswatch.kube_wiring import KubeParts
from egresswatch.logs import Sparse
from egresswatch.looplag import LoopLag, period_for
from egresswatch.metrics import Metrics, WriterMetrics
from egresswatch.model import RoundResult
from egresswatch.parts import Core
from egresswatch.reload import ConfigReloader
from egresswatch.schedule import RoundJob, RoundScheduler
from egresswatch.settings import Settings
from egresswatch.storage import (
    DatabaseNotReady,
    History,
    Outage,
    Store,
    ensure_schema,
    make_engine,
    redact,
)

if TYPE_CHECKING:  # the Kubernetes client: loaded only when the config asks for Kubernetes
    from egresswatch.kube.discovery import Discovery
    from egresswatch.leadership import Leadership

log = logging.getLogger(__name__)

__all__ = ["CONTROLLER_TICK_S", "Service", "StartupError"]


class StartupError(Exception):
    """The service cannot start; the message says why and what to run."""


class Service:
    """One process: rounds on a timer, stored, exported, reloadable.

    `local_agent=False` makes it a controller only: the config's `source` is not used, no
    round runs here, and an on-demand run of a configured target answers 409 (no source here
    to run it from); rounds come from agents.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        migrate: bool = False,
        environ: Mapping[str, str] | None = None,
        on_round: Callable[[RoundResult], None] | None = None,
        on_incident: Callable[[IncidentEvent], None] | None = None,
        watch_config: bool = True,
        local_agent: bool = True,
    ) -> None:
        self.settings = settings
        self.local_agent = local_agent
        self._observer = on_round
        self._on_incident = on_incident
        self._watch = watch_config
        self._migrate = migrate
        self._environ = environ
        self.registry = CompactRegistry()  # /metrics writes the per-pair families directly
        self._troubled = Sparse(log, "rounds cut at their timeout or skipped")
        self.metrics = Metrics(
            self.registry,
            version=__version__,
            per_source_kind=settings.metrics.detail == "source_kind",
        )
        # The prober's own lateness (overload is not an outage), sampled as rarely as the
        # settings' step budgets allow: each wake-up costs CPU (looplag.period_for).
        self.loop_lag = LoopLag(period_s=_loop_lag_period(settings))
        self.metrics.watch_loop_lag(self.loop_lag.recent_max)
        # What glibc keeps of freed memory goes back to the system (heaptrim.py: 8 MiB at
        # 5,000 targets).
        self.heap_trim = HeapTrim(find_trim())
        self._reloader = ConfigReloader(
            config_path,
            overrides or {},
            current=lambda: self.settings,
            apply=self._apply_settings,
            metrics=self.metrics,
        )
        self._schema_checked = False
        # One outage record for everything here that talks to the database: the API, the
        # writer, detection's writes and /readyz's probe log one outage once.
        self.outage = Outage()
        self._stopping = asyncio.Event()
        self.store: Store
        self.history: History
        self.detection: Detection
        self.ingest: Ingest
        self.runner: RoundRunner
        self.scheduler: RoundScheduler
        self._http: web.AppRunner | None = None
        self.listening: tuple[str, int] | None = None
        self.kube: KubeParts  # kubernetes.enabled: discovery, designated sources, TokenReview
        # Several replicas (kubernetes.leader_election): the elector, and the leader's work
        # (detection from the rounds table, discovery) while this replica holds the Lease.
        self.leadership: Leadership | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the database, then start the writer, the rounds and the HTTP server."""
        await self._open_storage()
        if self.elected:  # detection and discovery wait for the Lease (leadership.py)
            self.detection.drop()
            self.kube.designate()
        else:
            await self._start_discovery()  # before detection: the pipeline reads its policies
            await self.detection.start()
        self._start_ingest()
        self._start_rounds()
        await self._serve()
        if self.elected:
            await self._start_election()
        # What exists now lives as long as the process: moving it out of the collector's
        # generations removes the 50-90 ms full collections measured with 5,000 targets. The
        # garbage of the start (the config's parse above all) is collected first: frozen, it
        # would be kept for good.
        gc.collect()
        gc.freeze()
        self.heap_trim.start()
        if self._watch:
            self._reloader.watch()
        log.info(
            "egresswatch running",
            extra={
                "listen": f"{self.listening[0]}:{self.listening[1]}" if self.listening else None,
                "database": redact(self.settings.database),
                "targets": [t.name for t in self.settings.targets],
                "source": self.settings.source.name if self.local_agent else None,
                "mode": "run" if self.local_agent else "controller",
                "access": access(self.settings),
            },
        )

    async def run(self) -> None:
        """Start, then serve until SIGINT/SIGTERM or `stop()`; SIGHUP reloads the config."""
        loop = asyncio.get_running_loop()
        await self.start()
        with contextlib.ExitStack() as handlers:
            for sig, action in (
                (signal.SIGINT, self.request_stop),
                (signal.SIGTERM, self.request_stop),
                (signal.SIGHUP, self._reloader.reload_soon),
            ):
                loop.add_signal_handler(sig, action)
                handlers.callback(loop.remove_signal_handler, sig)
            try:
                await self._stopping.wait()
            finally:
                await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Stop taking rounds, let the writer flush what it holds, close everything.

        Each step runs even when one before it failed: a broken watcher or HTTP server must
        not cost the rounds the writer still holds."""
        for step in self._shutdown_steps():
            try:
                await step()
            except Exception:
                log.exception("shutdown step failed; the next ones still run")
        log.info("egresswatch stopped")

    def _shutdown_steps(self) -> list[Callable[[], Awaitable[None]]]:
        """What stop() runs, in order, for the parts that were made."""
        steps: list[Callable[[], Awaitable[None]]] = [self._reloader.close, self._stop_http]
        if hasattr(self, "scheduler"):
            steps.append(self.scheduler.shutdown)
        steps.append(self.loop_lag.stop)
        steps.append(self.heap_trim.stop)
        if self.discovery is not None:
            steps.append(self.kube.stop_discovery)
        if hasattr(self, "ingest"):
            steps.append(self.ingest.close)
        if self.leadership is not None:
            steps.append(self.leadership.stop_work)
        if hasattr(self, "detection") and self.detection.made:
            steps.append(self.pipeline.flush)  # what detection found in the last second is kept
            steps.append(self.kube.flush_changes)
        if self.leadership is not None:
            steps.append(self.leadership.stop)  # after the flush: the Lease is released last
        if hasattr(self, "store"):
            steps.append(self.store.engine.dispose)
        return steps

    async def _stop_http(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.cleanup()

    def readiness(self) -> dict[str, bool]:
        return {
            "database_schema": self._schema_checked,
            "scheduler": hasattr(self, "scheduler") and self.scheduler.running,
        }

    async def reload(self) -> bool:
        """Re-read the config file. A valid one replaces the targets in place; an invalid one
        is refused, logged with its field paths, and the running config stays (reload.py)."""
        return await self._reloader.reload()

    # -- the parts, in the order start() makes them -------------------------------------------

    async def _open_storage(self) -> None:
        """The engine (on a database whose schema is current) and the store, with the targets
        and, when rounds run here, this source recorded."""
        settings = self.settings
        engine = make_engine(settings.database)
        try:
            await ensure_schema(engine, settings.database, migrate=self._migrate)
        except DatabaseNotReady as exc:
            raise StartupError(str(exc)) from None
        self._schema_checked = True
        self.store = Store(engine, windows=retention_windows(settings))
        if self.local_agent:
            await self.store.register_source(settings.source.name, settings.source.kind)
        await self._sync_targets(settings)
        self.history = History(engine)
        self.core = core = Core(
            lambda: self.settings, self.store, self.history, self.metrics, self.outage, _utc_now
        )
        self.kube = kube = KubeParts(
            core, elector=lambda: self.leadership.elector if self.leadership else None
        )
        self.cluster_work = ClusterWork(
            core, leading=lambda: self.leading, pipeline=lambda: self.pipeline, kube=kube
        )
        self.detection = Detection(
            core,
            kube=kube,
            local_agent=self.local_agent,
            on_round=self._observer,
            on_incident=self._on_incident,
        )

    # -- several replicas: the once-per-cluster work runs on the Lease's holder ---------------

    @property
    def elected(self) -> bool:
        """Whether a Lease decides who leads; without it this process always leads."""
        kubernetes = self.settings.kubernetes
        return kubernetes.enabled and kubernetes.leader_election.enabled

    @property
    def leading(self) -> bool:
        """Whether this process does the once-per-cluster work now."""
        return not self.elected or (self.leadership is not None and self.leadership.leading)

    async def _start_election(self) -> None:
        """The elector on its own client, campaigning (leadership.py)."""
        # Here, not at the top: it loads the Kubernetes client (tests/test_run_imports.py).
        from egresswatch.kube.client import KubeClientError
        from egresswatch.leadership import Leadership

        self.leadership = Leadership(
            self.core, kube=self.kube, detection=self.detection, environ=self._environ
        )
        try:
            await self.leadership.start(self.settings.kubernetes)
        except KubeClientError as exc:
            raise StartupError(str(exc)) from None

    async def _start_discovery(self) -> None:
        """With `kubernetes.enabled`: the reflectors and the designated sources they give."""
        if not self.kube.enabled:
            return
        from egresswatch.kube.client import KubeClientError  # the client: only with Kubernetes

        try:
            await self.kube.start_discovery()
        except KubeClientError as exc:
            raise StartupError(str(exc)) from None

    @property
    def pipeline(self) -> Pipeline:
        """Detection's pipeline now (a hand-over replaces it: detection_wiring.py)."""
        return self.detection.pipeline

    @property
    def discovery(self) -> Discovery | None:
        """The reflectors, while they run (kube_wiring.py)."""
        return self.kube.discovery if hasattr(self, "kube") else None

    def _start_ingest(self) -> None:
        """The writer every round goes through, local or an agent's, before it is judged."""
        self.ingest = Ingest(
            self.store,
            settings=lambda: self.settings,
            # Elected: the leader judges what every replica stored, from the rounds table.
            judge=_stored_only if self.elected else self.detection.judge,
            clock=_utc_now,
            hooks=WriterMetrics(self.metrics),
            outage=self.outage,
        )
        self.ingest.start()

    def _start_rounds(self) -> None:
        """The local rounds (when this process is also an agent), retention and the controller
        tick, on the scheduler's timers."""
        settings = self.settings
        if self.local_agent:
            self.runner = RoundRunner(
                source=settings.source.name,
                sink=self.ingest.submit,
                environ=self._environ,
                stalls=self.loop_lag.stalled,
            )
            follow_config(self.runner, settings)
        self.loop_lag.start()
        self.scheduler = RoundScheduler(
            max_concurrent=settings.max_concurrent_rounds,
            on_lateness=self.metrics.observe_lateness,
            on_timeout=lambda key: self._count(key, self.metrics.count_round_timeout),
            on_skipped=lambda key: self._count(key, self.metrics.count_round_skipped),
            on_error=lambda key: log.error("round raised", extra={"job": key}),
            on_shed=lambda _key: self.metrics.count_round_shed(),
        )
        self.scheduler.set_jobs(self._jobs(settings))
        self.scheduler.start()

    async def _serve(self) -> None:
        """The API, /healthz, /readyz (with a database probe) and /metrics (behind the read
        token) on the listen address."""
        app = controller_app(
            AppParts(
                core=self.core,
                registry=self.registry,
                readiness=self.readiness,
                ingest=self.ingest,
                run_now=OnDemand(
                    lambda: self.scheduler,
                    self.settings.source.name if self.local_agent else None,
                ).run_now,
                designated=self.kube.designated,
                agents=self.kube.agents,
                policies=lambda: self.kube.policies,
                hidden=lambda source: source in self.pipeline.retired,
                after_large_answer=self.heap_trim.soon,
            )
        )
        try:
            self._http, self.listening = await serve(
                app, self.settings.listen, limits=CONTROLLER_LIMITS, registry=self.registry
            )
        except ListenError as exc:
            raise StartupError(str(exc)) from None

    def _jobs(self, settings: Settings) -> list[RoundJob]:
        rounds = self.runner.jobs() if self.local_agent else []
        return [*rounds, *self.cluster_work.jobs(settings)]

    async def _apply_settings(self, new: Settings) -> None:
        """A reloaded config, in place: the runner's targets, the jobs (unchanged ones keep
        their phase), the series and detection state of removed targets, the stored list."""
        old_targets = {t.name for t in self.settings.targets}
        if new.kubernetes != self.settings.kubernetes:
            # The watches are made once, at start: a new selector or namespace needs a restart.
            log.warning("the kubernetes block changed: it applies at the next restart")
        self.settings = new
        self.loop_lag.set_period(_loop_lag_period(new))
        if self.local_agent:
            follow_config(self.runner, new)
        self.scheduler.set_jobs(self._jobs(new))
        gone_targets = old_targets - {t.name for t in new.targets}
        self.metrics.forget_targets(gone_targets)  # one pass over the series for all of them
        for gone in gone_targets:
            self.pipeline.forget_target(gone)
        try:
            await self._sync_targets(new)
        except Exception:
            self.metrics.count_database_error()
            log.exception("could not record the new targets; rounds go on")

    async def _sync_targets(self, settings: Settings) -> None:
        await self.store.sync_targets([(t.name, t.endpoint.url, t.role) for t in settings.targets])

    def _count(self, key: str, count: Callable[[], None]) -> None:
        count()
        self._troubled.note(job=key)


def _stored_only(rounds: Sequence[RoundResult]) -> None:
    """Ingest's hand-on when a Lease elects the leader: stored is all; the leader judges."""


def _loop_lag_period(settings: Settings) -> float:
    """The loop-lag sampler's period for the settings' shortest step budget (the probes'
    default when no target overrides it), as the agent does from its plan."""
    budgets = [settings.timing(target)[2] for target in settings.targets]
    return period_for(min(budgets, default=settings.probes.step_timeout))


def _utc_now() -> datetime:
    return datetime.now(UTC)
