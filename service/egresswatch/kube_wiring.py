"""The controller's Kubernetes parts, made and connected for wiring.py (`kubernetes.enabled`).

The reflectors (kube/discovery.py) and what they give the rest of the controller: the
designated sources (controller/designated.py), the agents' identities checked by TokenReview
(controller/api/agent_identity.py), the NetworkPolicy view the diagnosis reads
(kube/policy_view.py) and the cluster changes attached to incidents
(controller/cluster_changes.py). The controller may not import the API client or the watches
(pyproject.toml's layers): this module, beside wiring.py, connects them.

The Kubernetes client is imported only by the methods that run with `kubernetes.enabled`, so a
process without it never loads it (tests/test_run_imports.py).

Contract: :class:`KubeParts` makes nothing until asked; :meth:`KubeParts.start_discovery` raises
KubeClientError when the API server cannot be reached (wiring.py turns it into a StartupError);
:meth:`KubeParts.stop_discovery` is idempotent. Without `kubernetes.enabled` every attribute stays
None and every method does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from egresswatch.controller.api.agent_identity import AgentIdentities
from egresswatch.controller.cluster_changes import ChangeAttacher
from egresswatch.controller.designated import Designated, standings
from egresswatch.controller.detection.incidents import IncidentEvent
from egresswatch.kube.identity import ReviewedToken, ReviewUnavailable
from egresswatch.kube.policy_view import ClusterPolicies
from egresswatch.parts import Core
from egresswatch.storage import ClusterChanges, History, SourceRecord, is_unavailable

if TYPE_CHECKING:  # these load the Kubernetes client: imported where they run (enabled only)
    from egresswatch.kube.discovery import Discovery
    from egresswatch.kube.leader import LeaderElector

log = logging.getLogger(__name__)


class KubeParts:
    """The Kubernetes parts of one controller process; see the module docstring.

    `elector()` is the Lease's elector when there is one: a replica that does not lead runs no
    discovery, and reviews agents' tokens through the elector's client instead."""

    def __init__(
        self,
        core: Core,
        *,
        elector: Callable[[], LeaderElector | None],
    ) -> None:
        self._settings = core.settings
        self._store = core.store
        self._metrics = core.metrics
        self._outage = core.outage
        self._clock = core.clock
        self._elector = elector
        self.discovery: Discovery | None = None  # the designated sources, while it runs
        self.designated: Designated | None = None
        self.agents: AgentIdentities | None = None  # TokenReview
        self.policies: ClusterPolicies | None = None  # the discovery's NetworkPolicy view
        self.cluster_changes: ChangeAttacher | None = None  # what changed, for incidents

    @property
    def enabled(self) -> bool:
        return self._settings().kubernetes.enabled

    def designate(self) -> None:
        """Elected: the designated sources as whichever discovery runs gives them (none while
        this replica does not lead), and the agents' identities, made once at start."""
        if not self.enabled:
            return
        self.designated = Designated(
            synced=lambda: self.discovery is not None and self.discovery.synced,
            expected=lambda: self.discovery.expected() if self.discovery else {},
            retired=lambda: self.discovery.retired() if self.discovery else {},
        )
        self.agents = self._agent_identities(self.designated)

    async def start_discovery(self) -> None:
        """The reflectors and the designated sources they give (KubeClientError: no API
        server); nothing without `kubernetes.enabled`."""
        if not self.enabled:
            return
        from egresswatch.kube.discovery import start_discovery  # the client: enabled only

        self.cluster_changes = attacher = ChangeAttacher(
            ClusterChanges(self._store.engine),
            window=lambda: timedelta(seconds=self._settings().kubernetes.changes_window),
            sources=self._store.sources,
        )
        await attacher.restore(self._clock())
        self.discovery = discovery = await start_discovery(
            self._settings().kubernetes, clock=self._clock, on_change_seen=attacher.seen
        )
        self.policies = ClusterPolicies(discovery)
        if self.designated is None:
            self.designated = Designated(
                synced=lambda: discovery.synced,
                expected=discovery.expected,
                retired=discovery.retired,
            )
        if self.agents is None:
            self.agents = self._agent_identities(self.designated)

    async def stop_discovery(self) -> None:
        if self.discovery is not None:
            discovery, self.discovery = self.discovery, None
            await discovery.stop()

    def _agent_identities(self, designated: Designated) -> AgentIdentities:
        """Agents' projected service-account tokens, reviewed through whichever client this
        replica has: the discovery's while it runs, else the elector's. A replica that does not
        lead runs no discovery, so it knows no designated source and answers 503: the agent
        keeps its rounds and retries (through the Service, often reaching the leader)."""

        from egresswatch.kube.tokenreview import review_token  # the client: enabled only

        async def review(token: str) -> ReviewedToken:
            if self.discovery is not None:
                return await review_token(self.discovery.api, token)
            elector = self._elector()
            if elector is not None:
                return await review_token(elector.api, token)
            raise ReviewUnavailable("no Kubernetes client yet")

        return AgentIdentities(
            review,
            designated,
            node_agent_service_account=self._settings().kubernetes.node_agent_service_account,
        )

    def incident_event(self, event: IncidentEvent) -> None:
        if self.cluster_changes is not None:
            self.cluster_changes.incident_event(event)

    async def flush_changes(self) -> None:
        """Store the cluster changes seen and attach them to the incidents opened; a database
        away keeps them for the next tick."""
        if self.cluster_changes is None:
            return
        try:
            await self.cluster_changes.flush()
        except Exception as error:
            self._metrics.count_database_error()
            if is_unavailable(error):
                self._outage.failed(error, "cluster changes")
            else:
                log.exception("could not store the cluster changes")

    async def count_designated(self, history: History, sources: Sequence[SourceRecord]) -> None:
        """egresswatch_sources{state}: the designated sources by standing (none designated:
        nothing to count)."""
        designated = self.designated
        if designated is None:
            return
        known = [source.name for source in sources]
        found = standings(designated.expected(), await history.states(), known)
        counts = {state.value: 0 for state in found.values()}
        for state in found.values():
            counts[state.value] += 1
        counts["retired"] = len(designated.retired())
        self._metrics.set_designated_sources(counts)
