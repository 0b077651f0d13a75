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
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from egresswatch import __version__
from egresswatch.agent.config_file import follow_config
from egresswatch.agent.runner import RoundRunner
from egresswatch.compact_metrics import CompactRegistry
from egresswatch.controller.api.agent_identity import AgentIdentities
from egresswatch.controller.api.app import make_app
from egresswatch.controller.api.auth import Right, Tokens, authorize
from egresswatch.controller.api.query import ApiError
from egresswatch.controller.api.ratelimit import RateLimiter
from egresswatch.controller.api.routes import ApiDeps, add_api_routes
from egresswatch.controller.cluster_changes import ChangeAttacher
from egresswatch.controller.designated import Designated, standings
from egresswatch.controller.detection.follow import RoundFollower
from egresswatch.controller.detection.incidents import IncidentEvent
from egresswatch.controller.detection.pipeline import Pipeline
from egresswatch.controller.ingest.intake import Ingest
from egresswatch.http_limits import CONTROLLER_LIMITS
from egresswatch.http_server import ListenError, serve
from egresswatch.kube.client import KubeClientError, close_client, open_client
from egresswatch.kube.discovery import Discovery, start_discovery
from egresswatch.kube.identity import ReviewedToken, ReviewUnavailable
from egresswatch.kube.leader import LeaderElector, LeaseTiming, lease_identity, lease_namespace
from egresswatch.kube.policy_view import ClusterPolicies, CurrentPolicies
from egresswatch.kube.tokenreview import review_token
from egresswatch.logs import Sparse
from egresswatch.looplag import LoopLag
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
    RoundFeed,
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
FOLLOW_PERIOD_S = 0.5  # the leader reads the rounds every replica stored this often
LEAD_RETRY_S = 2.0  # a new leader that cannot read its past yet tries again this often
REREAD_IDS = 5000  # a new leader reads this many round ids again: transactions in flight


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
        self.registry = CompactRegistry()  # /metrics writes the per-pair families directly
        self._troubled = Sparse(log, "rounds cut at their timeout or skipped")
        self.metrics = Metrics(
            self.registry,
            version=__version__,
            per_source_kind=settings.metrics.detail == "source_kind",
        )
        self.loop_lag = LoopLag()  # the prober's own lateness: overload is not an outage
        self.metrics.watch_loop_lag(self.loop_lag.recent_max)
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
        self.agents: AgentIdentities | None = None  # kubernetes.enabled: TokenReview
        # Several replicas (kubernetes.leader_election): the elector, and the leader's work
        # (detection from the rounds table, discovery) while this replica holds the Lease.
        self.elector: LeaderElector | None = None
        self._election: asyncio.Task[None] | None = None
        self._leader_work: asyncio.Task[None] | None = None
        self.policies: ClusterPolicies | None = None  # the discovery's NetworkPolicy view
        self.cluster_changes: ChangeAttacher | None = None  # what changed, for incidents

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the database, then start the writer, the rounds and the HTTP server."""
        await self._open_storage()
        if self.elected:  # detection and discovery wait for the Lease (_lead)
            self.pipeline = self._new_pipeline()
            self.designated = self._designation() if self.settings.kubernetes.enabled else None
            if self.designated is not None:
                self.agents = self._agent_identities(self.designated)
        else:
            await self._start_discovery()  # before detection: the pipeline reads its policies
            await self._start_detection()
        self._start_ingest()
        self._start_rounds()
        await self._serve()
        if self.elected:
            await self._start_election()
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
        steps.append(self.loop_lag.stop)
        if self.discovery is not None:
            steps.append(self._stop_discovery)
        if hasattr(self, "ingest"):
            steps.append(self.ingest.close)
        steps.append(self._stop_leader_work)
        if hasattr(self, "pipeline"):
            steps.append(self.pipeline.flush)  # what detection found in the last second is kept
            steps.append(self._flush_cluster_changes)
        steps.append(self._stop_election)  # after the flush: the Lease is released last
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
        self.pipeline = pipeline = self._new_pipeline()
        await self._restore(pipeline)

    def _new_pipeline(self) -> Pipeline:
        return Pipeline(
            settings=lambda: self.settings,
            history=self.history,
            metrics=self.metrics,
            clock=_utc_now,
            on_incident=self._incident_event,
            outage=self.outage,
            policies=self.policies,
        )

    async def _restore(self, pipeline: Pipeline) -> None:
        """Every source's kind, then detection as the database left it (Pipeline.restore)."""
        for source in await self.store.sources():
            if source.kind:
                pipeline.set_source_kind(source.name, SourceKind(source.kind), source.node)
        if self.local_agent:
            pipeline.set_source_kind(self.settings.source.name, self.settings.source.kind)
        await pipeline.restore()  # the open incidents stay the same incidents
        await pipeline.flush()

    # -- several replicas: the once-per-cluster work runs on the Lease's holder ---------------

    @property
    def elected(self) -> bool:
        """Whether a Lease decides who leads; without it this process always leads."""
        kubernetes = self.settings.kubernetes
        return kubernetes.enabled and kubernetes.leader_election.enabled

    @property
    def leading(self) -> bool:
        """Whether this process does the once-per-cluster work now."""
        return not self.elected or (self.elector is not None and self.elector.leading)

    async def _start_election(self) -> None:
        """The elector on its own client, campaigning in a named task."""
        kubernetes = self.settings.kubernetes
        election = kubernetes.leader_election
        environ = self._environ if self._environ is not None else os.environ
        kubeconfig = Path(kubernetes.kubeconfig) if kubernetes.kubeconfig is not None else None
        try:
            api = await open_client(kubeconfig, context=kubernetes.context)
        except KubeClientError as exc:
            raise StartupError(str(exc)) from None
        self.elector = LeaderElector(
            api,
            name=election.lease_name,
            namespace=lease_namespace(election.lease_namespace, environ),
            identity=lease_identity(election.identity, environ),
            timing=LeaseTiming(
                election.lease_duration, election.renew_deadline, election.retry_period
            ),
            on_started=self._lead,
            on_stopped=self._follow,
            clock=_utc_now,
        )
        self.metrics.set_leader(self.elector.identity, False)
        self._election = asyncio.get_running_loop().create_task(
            self.elector.run(), name="egresswatch-leader-election"
        )

    async def _lead(self) -> None:
        """Became the leader: start the leader's work in its own task (the elector must go
        on renewing while the past is read back)."""
        assert self.elector is not None
        self.metrics.set_leader(self.elector.identity, True)
        self._leader_work = asyncio.get_running_loop().create_task(
            self._do_leader_work(), name="egresswatch-leader-work"
        )

    async def _do_leader_work(self) -> None:
        """Detection rebuilt from the database, discovery, then the rounds table followed
        from where the restored state ends, until cancelled."""
        feed = RoundFeed(self.store.engine)
        try:  # before detection: the pipeline reads the discovery's policies
            await self._start_discovery()
        except StartupError as exc:  # the elector's client works: not expected, but said
            log.error("the leader runs without discovery", extra={"problem": str(exc)})
        while True:
            try:
                # Read before the restore, and REREAD_IDS back: a round stored meanwhile, or
                # by a transaction still in flight, is read by both, and detection ignores a
                # round not newer than its pair's last.
                after = max(0, await feed.last_id() - REREAD_IDS)
                pipeline = self._new_pipeline()
                await self._restore(pipeline)
                break
            except Exception:
                self.metrics.count_database_error()
                log.exception("the new leader cannot read detection back yet; retrying")
                await asyncio.sleep(LEAD_RETRY_S)
        self.pipeline = pipeline
        follower = RoundFollower(
            feed,
            after=after,
            judge=self._judge,
            period_s=FOLLOW_PERIOD_S,
            outage=self.outage,
            on_error=self.metrics.count_database_error,
        )
        await follower.run()

    async def _follow(self) -> None:
        """Lost (or gave up) the lead: stop the leader's work at once and drop what detection
        held; the next leader rebuilds it from the database."""
        await self._stop_leader_work()
        self.pipeline = self._new_pipeline()  # what it held is not written: no longer ours
        if self.elector is not None:
            self.metrics.set_leader(self.elector.identity, False)

    async def _stop_leader_work(self) -> None:
        work, self._leader_work = self._leader_work, None
        if work is None:
            return
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        await self._stop_discovery()

    async def _stop_election(self) -> None:
        """Stop campaigning and, when leading, release the Lease for the next replica."""
        election, self._election = self._election, None
        elector = self.elector
        if election is None or elector is None:
            return
        election.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await election
        await elector.release()
        await close_client(elector.api)

    def _designation(self) -> Designated:
        """The designated sources as discovery gives them; none while it is not running (a
        replica that does not lead)."""
        return Designated(
            synced=lambda: self.discovery is not None and self.discovery.synced,
            expected=lambda: self.discovery.expected() if self.discovery else {},
            retired=lambda: self.discovery.retired() if self.discovery else {},
        )

    def _agent_identities(self, designated: Designated) -> AgentIdentities:
        """Agents' projected service-account tokens, reviewed through whichever client this
        replica has: the discovery's while it runs, else the elector's. A replica that does not
        lead runs no discovery, so it knows no designated source and answers 503: the agent
        keeps its rounds and retries (through the Service, often reaching the leader)."""

        async def review(token: str) -> ReviewedToken:
            if self.discovery is not None:
                return await review_token(self.discovery.api, token)
            if self.elector is not None:
                return await review_token(self.elector.api, token)
            raise ReviewUnavailable("no Kubernetes client yet")

        return AgentIdentities(
            review,
            designated,
            node_agent_service_account=self.settings.kubernetes.node_agent_service_account,
        )

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
        if self.designated is None:
            self.designated = Designated(
                synced=lambda: discovery.synced,
                expected=discovery.expected,
                retired=discovery.retired,
            )
        if self.agents is None:
            self.agents = self._agent_identities(self.designated)

    def _start_ingest(self) -> None:
        """The writer every round goes through, local or an agent's, before it is judged."""
        self.ingest = Ingest(
            self.store,
            settings=lambda: self.settings,
            # Elected: the leader judges what every replica stored, from the rounds table.
            judge=_stored_only if self.elected else self._judge,
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
                agents=self.agents,
                # The view of whichever discovery runs now (a replica leads, or not, later).
                policies=CurrentPolicies(lambda: self.policies),
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
        if not self.leading:
            return
        if self._ticks % STALENESS_EVERY_TICKS == 0:
            designated = self.designated
            self.pipeline.tick(designated.is_retired if designated else None)
            try:
                sources = await self.store.sources()
                for source in sources:
                    if source.kind:
                        self.pipeline.set_source_kind(
                            source.name, SourceKind(source.kind), source.node
                        )
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
        if not self.leading:
            return  # once per cluster: the leader's work
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
            follow_config(self.runner, new)
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
        self._troubled.note(job=key)


def _stored_only(rounds: Sequence[RoundResult]) -> None:
    """Ingest's hand-on when a Lease elects the leader: stored is all; the leader judges."""


def _access(settings: Settings) -> dict[str, str]:
    """What the API lets whom do, for the start-up line (never the tokens themselves)."""
    return {
        "read": "read or run token" if settings.read_token() else "open",
        "run": "run token" if settings.run_token() else "closed",
        "ingest_and_plan": " or ".join(_agents_access(settings)) or "closed",
    }


def _agents_access(settings: Settings) -> list[str]:
    ways = ["agents' token"] if settings.agent_token() else []
    if settings.kubernetes.enabled:
        ways.append("projected service-account token (TokenReview, own source only)")
    return ways


def _windows(settings: Settings) -> RetentionWindows:
    retention = settings.retention
    return RetentionWindows(
        raw_s=retention.raw,
        minute_rollups_s=retention.minute_rollups,
        rollups_s=retention.rollups,
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)
