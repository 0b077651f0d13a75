"""The once-per-cluster work on the scheduler's timers: detection's writes every controller tick,
the staleness sweep every few ticks, and retention; done only while this process leads (always,
without a Lease; with one, leadership.py says who leads).

Apart from leadership.py so that a process without Kubernetes loads no Kubernetes client:
wiring.py imports this module always and leadership.py only when a Lease elects the leader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from egresswatch.controller.detection.pipeline import Pipeline
from egresswatch.kube_wiring import KubeParts
from egresswatch.model import SourceKind
from egresswatch.parts import Core
from egresswatch.schedule import RoundJob
from egresswatch.settings import Settings
from egresswatch.storage import RetentionWindows, is_unavailable, run_retention

log = logging.getLogger(__name__)

RETENTION_JOB = "retention"
CONTROLLER_JOB = "controller"
CONTROLLER_TICK_S = 0.25  # how often detection's results are written (nothing pending: no work)
STALENESS_EVERY_TICKS = 20  # silent sources are looked for every 20 controller ticks (5 s)


class ClusterWork:
    """The once-per-cluster work on the scheduler's timers, done only while `leading()`:
    detection's writes every tick, the staleness sweep every STALENESS_EVERY_TICKS ticks, and
    retention. Neither method raises: a database away is counted and said once per outage."""

    def __init__(
        self,
        core: Core,
        *,
        leading: Callable[[], bool],
        pipeline: Callable[[], Pipeline],
        kube: KubeParts,
    ) -> None:
        self._core = core
        self._leading = leading
        self._pipeline = pipeline
        self._kube = kube
        self._ticks = 0

    def jobs(self, settings: Settings) -> list[RoundJob]:
        """Retention and the controller tick, as the scheduler's jobs."""
        every = settings.retention.every
        return [
            RoundJob(RETENTION_JOB, every, max(every, 1.0), self.retention),
            RoundJob(CONTROLLER_JOB, CONTROLLER_TICK_S, 30.0, self.tick),
        ]

    async def tick(self) -> None:
        """Write what detection produced; every few ticks, look for silent sources."""
        self._ticks += 1
        if not self._leading():
            return
        # The pipeline is read at each use: a hand-over may replace it during an await.
        if self._ticks % STALENESS_EVERY_TICKS == 0:
            designated = self._kube.designated
            self._pipeline().tick(designated.is_retired if designated else None)
            try:
                sources = await self._core.store.sources()
                for source in sources:
                    if source.kind:
                        kind = SourceKind(source.kind)
                        self._pipeline().set_source_kind(source.name, kind, source.node)
                await self._kube.count_designated(self._core.history, sources)
            except Exception as error:
                self._core.metrics.count_database_error()
                if is_unavailable(error):  # said once per outage, not every 5 s
                    self._core.outage.failed(error, "detection")
                else:
                    log.exception("could not read the sources' kinds")
        await self._pipeline().flush()
        await self._kube.flush_changes()

    async def retention(self) -> None:
        if not self._leading():
            return  # once per cluster: the leader's work
        # The windows are read at each run: a reload changes them without a restart.
        core = self._core
        await run_retention(
            core.store,
            core.clock(),
            retention_windows(core.settings()),
            on_error=core.metrics.count_database_error,
            outage=core.outage,
        )


def retention_windows(settings: Settings) -> RetentionWindows:
    retention = settings.retention
    return RetentionWindows(
        raw_s=retention.raw,
        minute_rollups_s=retention.minute_rollups,
        rollups_s=retention.rollups,
    )
