"""`egresswatch run`: the controller and a local agent in one process, wired in one place.

With `local_agent=False` (`egresswatch controller`) it is the controller alone: no rounds of
its own and no local source; results arrive from agents through `POST /api/v1/results`.

Every long-lived part is made here and injected: the engine, the store, the writer, the
metrics registry, the scheduler, the round runner, the HTTP server. Nothing is global. What the
parts do lives in modules named for it: the schema check (storage/schema.py), ingest
(controller/ingest/intake.py), detection (controller/detection/pipeline.py), retention
(storage/retention.py), the config reload (reload.py), the HTTP server (http_server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from egresswatch import __version__
from egresswatch.agent.runner import RoundRunner
from egresswatch.controller.api.app import make_app
from egresswatch.controller.api.auth import Right, Tokens, authorize
from egresswatch.controller.api.query import ApiError
from egresswatch.controller.api.ratelimit import RateLimiter
from egresswatch.controller.api.routes import ApiDeps, add_api_routes
from egresswatch.controller.cluster_changes import ChangeAttacher
from egresswatch.controller.designated import Designated, standings
from egresswatch.controller.detection.incidents import IncidentEvent
from egresswatch.controller.detection.pipeline import Pipeline
from egresswatch.controller.ingest.intake import Ingest
from egresswatch.http_limits import CONTROLLER_LIMITS
from egresswatch.http_server import ListenError, serve
from egresswatch.kube.client import KubeClientError
from egresswatch.kube.discovery import Discovery, start_discovery
from egresswatch.kube.policy_view import ClusterPolicies
from egresswatch.metrics import Metrics, WriterMetrics
from egresswatch.model import RoundResult, SourceKind
from egresswatch.reload import ConfigReloader
from egresswatch.schedule import RoundJob, RoundScheduler
from egresswatch.settings import Settings
from egresswatch.storage import (
    ClusterChanges,
    DatabaseNotReady,
    DatabaseProbe,
    History,
    Outage,
    RetentionWindows,
    Store,
    ensure_schema,
    is_unavailable,
    make_engine,
    redact,
    run_retention,
)

log = logging.getLogger(__name__)

RETENTION_JOB = "retention"
CONTROLLER_JOB = "controller"
CONTROLLER_TICK_S = 0.25  # how often detection's results are written (nothing pending: no work)
STALENESS_EVERY_TICKS = 20  # silent sources are looked for every 20 ticks (5 s)


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
        self._ticks = 0
        self._watch = watch_config
        self._migrate = migrate
        self._environ = environ
        self.registry = CollectorRegistry()
        self.metrics = Metrics(
            self.registry,
            version=__version__,
            per_source_kind=settings.metrics.detail == "source_kind",
        )
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
        self.pipeline: Pipeline
        self.ingest: Ingest
        self.runner: RoundRunner
        self.scheduler: RoundScheduler
        self._http: web.AppRunner | None = None
        self.listening: tuple[str, int] | None = None
        self.discovery: Discovery | None = None  # kubernetes.enabled: the designated sources
        self.designated: Designated | None = None
        self.policies: ClusterPolicies | None = None  # the discovery's NetworkPolicy view
        self.cluster_changes: ChangeAttacher | None = None  # what changed, for incidents

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the database, then start the writer, the rounds and the HTTP server."""
        await self._open_storage()
        await self._start_discovery()  # before detection: the pipeline reads its policies
        await self._start_detection()
        self._start_ingest()
        self._start_rounds()
        await self._serve()
        # What exists now lives as long as the process: moving it out of the collector's
        # generations removes the 50-90 ms full collections measured with 5,000 targets.
        gc.freeze()
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
                "access": _access(self.settings),
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
        if self.discovery is not None:
            steps.append(self._stop_discovery)
        if hasattr(self, "ingest"):
            steps.append(self.ingest.close)
        if hasattr(self, "pipeline"):
            steps.append(self.pipeline.flush)  # what detection found in the last second is kept
            steps.append(self._flush_cluster_changes)
        if hasattr(self, "store"):
            steps.append(self.store.engine.dispose)
        return steps

    async def _stop_discovery(self) -> None:
        if self.discovery is not None:
            discovery, self.discovery = self.discovery, None
            await discovery.stop()

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
        self.store = Store(engine, windows=_windows(settings))
        if self.local_agent:
            await self.store.register_source(settings.source.name, settings.source.kind)
        await self._sync_targets(settings)
        self.history = History(engine)

    async def _start_detection(self) -> None:
        """The pipeline, knowing every source's kind, with the open incidents restored."""
        self.pipeline = Pipeline(
            settings=lambda: self.settings,
            history=self.history,
            metrics=self.metrics,
            clock=_utc_now,
            on_incident=self._incident_event,
            outage=self.outage,
            policies=self.policies,
        )
        for source in await self.store.sources():
            if source.kind:
                self.pipeline.set_source_kind(source.name, SourceKind(source.kind))
        if self.local_agent:
            self.pipeline.set_source_kind(self.settings.source.name, self.settings.source.kind)
        await self.pipeline.restore()  # the open incidents stay the same incidents
        await self.pipeline.flush()

    async def _start_discovery(self) -> None:
        """With `kubernetes.enabled`: the reflectors and the designated sources they give."""
        if not self.settings.kubernetes.enabled:
            return
        kubernetes = self.settings.kubernetes
        self.cluster_changes = attacher = ChangeAttacher(
            ClusterChanges(self.store.engine),
            window=lambda: timedelta(seconds=self.settings.kubernetes.changes_window),
            sources=self.store.sources,
        )
        await attacher.restore(_utc_now())
        try:
            self.discovery = discovery = await start_discovery(
                kubernetes, clock=_utc_now, on_change_seen=attacher.seen
            )
        except KubeClientError as exc:
            raise StartupError(str(exc)) from None
        self.policies = ClusterPolicies(discovery)
        self.designated = Designated(
            synced=lambda: discovery.synced,
            expected=discovery.expected,
            retired=discovery.retired,
        )

    def _start_ingest(self) -> None:
        """The writer every round goes through, local or an agent's, before it is judged."""
        self.ingest = Ingest(
            self.store,
            settings=lambda: self.settings,
            judge=self._judge,
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
                settings,
                source=settings.source.name,
                sink=self.ingest.submit,
                environ=self._environ,
            )
        self.scheduler = RoundScheduler(
            max_concurrent=settings.max_concurrent_rounds,
            on_lateness=self.metrics.observe_lateness,
            on_timeout=lambda key: self._count(key, self.metrics.count_round_timeout),
            on_skipped=lambda key: self._count(key, self.metrics.count_round_skipped),
            on_error=lambda key: log.error("round raised", extra={"job": key}),
        )
        self.scheduler.set_jobs(self._jobs(settings))
        self.scheduler.start()

    async def _serve(self) -> None:
        """The API, /healthz, /readyz (with a database probe) and /metrics (behind the read
        token) on the listen address."""
        settings = self.settings
        tokens = Tokens(
            agent=settings.agent_token(), read=settings.read_token(), run=settings.run_token()
        )
        app = make_app(
            registry=self.registry,
            readiness=self.readiness,
            probes={"database": DatabaseProbe(lambda: self.store.engine, outage=self.outage)},
            metrics_guard=lambda request: authorize(request, Right.READ, tokens),
        )
        add_api_routes(
            app,
            ApiDeps(
                store=self.store,
                history=self.history,
                settings=lambda: self.settings,
                ingest=self.ingest.accept,
                run_now=self._run_now,
                tokens=tokens,
                run_limit=RateLimiter(
                    burst=settings.run_limit.burst, every_s=settings.run_limit.every
                ),
                clock=_utc_now,
                outage=self.outage,
                designated=self.designated,
                policies=self.policies,
                hidden=lambda source: source in self.pipeline.retired,
            ),
        )
        try:
            self._http, self.listening = await serve(
                app, self.settings.listen, limits=CONTROLLER_LIMITS, registry=self.registry
            )
        except ListenError as exc:
            raise StartupError(str(exc)) from None

    # -- what the parts call back -------------------------------------------------------------

    def _incident_event(self, event: IncidentEvent) -> None:
        if self.cluster_changes is not None:
            self.cluster_changes.incident_event(event)
        if self._on_incident is not None:
            self._on_incident(event)

    async def _flush_cluster_changes(self) -> None:
        """Store the cluster changes seen and attach them to the incidents opened; a database
        away keeps them for the next tick."""
        if self.cluster_changes is None:
            return
        try:
            await self.cluster_changes.flush()
        except Exception as error:
            self.metrics.count_database_error()
            if is_unavailable(error):
                self.outage.failed(error, "cluster changes")
            else:
                log.exception("could not store the cluster changes")

    def _judge(self, rounds: Sequence[RoundResult]) -> None:
        """Stored rounds, local or an agent's: exported, judged, shown to the observer."""
        for result in rounds:
            # A round of a target that a reload removed is still stored (nothing is lost), but
            # its series stay gone from /metrics.
            if self.settings.target(result.target) is not None:
                self.metrics.observe_round(result, self.pipeline.source_kind(result.source))
        self.pipeline.observe(rounds)
        self.pipeline.flush_soon()
        if self._observer is not None:
            for result in rounds:
                try:
                    self._observer(result)
                except Exception:  # an observer's bug must not cost a round
                    log.exception("round observer failed")

    def _jobs(self, settings: Settings) -> list[RoundJob]:
        every = settings.retention.every
        retention = RoundJob(RETENTION_JOB, every, max(every, 1.0), self._retention)
        controller = RoundJob(CONTROLLER_JOB, CONTROLLER_TICK_S, 30.0, self._controller_tick)
        rounds = self.runner.jobs() if self.local_agent else []
        return [*rounds, retention, controller]

    async def _controller_tick(self) -> None:
        """Write what detection produced; every few ticks, look for silent sources."""
        self._ticks += 1
        if self._ticks % STALENESS_EVERY_TICKS == 0:
            designated = self.designated
            self.pipeline.tick(designated.is_retired if designated else None)
            try:
                sources = await self.store.sources()
                for source in sources:
                    if source.kind:
                        self.pipeline.set_source_kind(source.name, SourceKind(source.kind))
                if designated is not None:
                    await self._count_designated(designated, [s.name for s in sources])
            except Exception as error:
                self.metrics.count_database_error()
                if is_unavailable(error):  # said once per outage, not every 5 s
                    self.outage.failed(error, "detection")
                else:
                    log.exception("could not read the sources' kinds")
        await self.pipeline.flush()
        await self._flush_cluster_changes()

    async def _count_designated(self, designated: Designated, known: list[str]) -> None:
        """egresswatch_sources{state}: the designated sources by standing."""
        found = standings(designated.expected(), await self.history.states(), known)
        counts = {state.value: 0 for state in found.values()}
        for state in found.values():
            counts[state.value] += 1
        counts["retired"] = len(designated.retired())
        self.metrics.set_designated_sources(counts)

    async def _retention(self) -> None:
        # The windows are read at each run: a reload changes them without a restart.
        await run_retention(
            self.store,
            _utc_now(),
            _windows(self.settings),
            on_error=self.metrics.count_database_error,
            outage=self.outage,
        )

    async def _run_now(self, target: str) -> RoundResult:
        if not self.local_agent:
            # The route answered 404 already for a target that is not configured; this one
            # is, but no source here can run it (ApiError: the route's problem document).
            raise ApiError(
                409,
                "Conflict",
                f"{target!r} is configured, but this controller runs no rounds itself: "
                "its agents run them on their timers",
            )
        # Through the scheduler: the round takes a slot of max_concurrent_rounds like any, and
        # joins this target's round in flight (scheduled or on demand) instead of a second one.
        task = self.scheduler.run_now(f"{self.runner.source}/{target}")
        if task is None:  # a reload removed it while the request was on its way
            raise ApiError(404, "Not Found", f"target {target!r} is not configured")
        result = await asyncio.shield(task)
        if not isinstance(result, RoundResult):  # cut at its timeout, or the probe broke
            raise ApiError(
                504,
                "Gateway Timeout",
                f"the round of {target!r} did not finish within its timeout: see the log",
            )
        return result

    async def _apply_settings(self, new: Settings) -> None:
        """A reloaded config, in place: the runner's targets, the jobs (unchanged ones keep
        their phase), the series and detection state of removed targets, the stored list."""
        old_targets = {t.name for t in self.settings.targets}
        if new.kubernetes != self.settings.kubernetes:
            # The watches are made once, at start: a new selector or namespace needs a restart.
            log.warning("the kubernetes block changed: it applies at the next restart")
        self.settings = new
        if self.local_agent:
            self.runner.update(new)
        self.scheduler.set_jobs(self._jobs(new))
        for gone in old_targets - {t.name for t in new.targets}:
            self.metrics.forget_target(gone)
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
        log.warning("round cut or skipped", extra={"job": key})


def _access(settings: Settings) -> dict[str, str]:
    """What the API lets whom do, for the start-up line (never the tokens themselves)."""
    return {
        "read": "read or run token" if settings.read_token() else "open",
        "run": "run token" if settings.run_token() else "closed",
        "ingest_and_plan": "agents' token" if settings.agent_token() else "closed",
    }


def _windows(settings: Settings) -> RetentionWindows:
    retention = settings.retention
    return RetentionWindows(
        raw_s=retention.raw,
        minute_rollups_s=retention.minute_rollups,
        rollups_s=retention.rollups,
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)
