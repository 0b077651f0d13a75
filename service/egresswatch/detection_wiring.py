"""Detection as wiring.py runs it: the pipeline (controller/detection/pipeline.py), rebuilt from
the database, fed the stored rounds, replaced on a hand-over between replicas (leadership.py).

Contract: :attr:`Detection.pipeline` exists after :meth:`Detection.start` or
:meth:`Detection.drop` (`made`); :meth:`Detection.judge` exports each stored round, gives it to
the pipeline and shows it to the observer, whose bugs never cost a round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from egresswatch.controller.detection.incidents import IncidentEvent
from egresswatch.controller.detection.pipeline import Pipeline
from egresswatch.kube_wiring import KubeParts
from egresswatch.model import RoundResult, SourceKind
from egresswatch.parts import Core

log = logging.getLogger(__name__)


class Detection:
    """The pipeline of one process and what feeds it; see the module docstring.

    `local_agent`: rounds run here too, from the config's `source`, whose kind detection knows
    before it ever reports."""

    def __init__(
        self,
        core: Core,
        *,
        kube: KubeParts,
        local_agent: bool,
        on_round: Callable[[RoundResult], None] | None = None,
        on_incident: Callable[[IncidentEvent], None] | None = None,
    ) -> None:
        self._core = core
        self._kube = kube
        self._local_agent = local_agent
        self._observer = on_round
        self._on_incident = on_incident
        self.pipeline: Pipeline

    @property
    def made(self) -> bool:
        return hasattr(self, "pipeline")

    async def start(self) -> None:
        """The pipeline, knowing every source's kind, with the open incidents restored."""
        self.pipeline = await self.restored()

    def drop(self) -> None:
        """A new, empty pipeline: what the old one held is not written (no longer ours)."""
        self.pipeline = self._new()

    def install(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def restored(self) -> Pipeline:
        """A new pipeline with every source's kind, then detection as the database left it
        (Pipeline.restore): the open incidents stay the same incidents."""
        pipeline = self._new()
        for source in await self._core.store.sources():
            if source.kind:
                pipeline.set_source_kind(source.name, SourceKind(source.kind), source.node)
        if self._local_agent:
            local = self._core.settings().source
            pipeline.set_source_kind(local.name, local.kind)
        await pipeline.restore()
        await pipeline.flush()
        return pipeline

    def _new(self) -> Pipeline:
        core = self._core
        return Pipeline(
            settings=core.settings,
            history=core.history,
            metrics=core.metrics,
            clock=core.clock,
            on_incident=self._incident_event,
            outage=core.outage,
            policies=self._kube.policies,
        )

    def judge(self, rounds: Sequence[RoundResult]) -> None:
        """Stored rounds, local or an agent's: exported, judged, shown to the observer."""
        settings = self._core.settings()
        for result in rounds:
            # A round of a target that a reload removed is still stored (nothing is lost), but
            # its series stay gone from /metrics.
            if settings.target(result.target) is not None:
                self._core.metrics.observe_round(result, self.pipeline.source_kind(result.source))
        self.pipeline.observe(rounds)
        self.pipeline.flush_soon()
        if self._observer is not None:
            for result in rounds:
                try:
                    self._observer(result)
                except Exception:  # an observer's bug must not cost a round
                    log.exception("round observer failed")

    def _incident_event(self, event: IncidentEvent) -> None:
        self._kube.incident_event(event)
        if self._on_incident is not None:
            self._on_incident(event)
