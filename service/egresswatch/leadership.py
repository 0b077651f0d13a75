"""Several controller replicas: the once-per-cluster work runs on the holder of a Lease.

With `kubernetes.leader_election`, wiring.py's Service makes a :class:`Leadership`: the elector
(kube/leader.py) on its own API client, campaigning in the named task
``egresswatch-leader-election``. While this replica holds the Lease, the leader's work runs in
the named task ``egresswatch-leader-work``: discovery, then detection rebuilt from the database,
then the rounds every replica stored, followed from the rounds table. Losing the Lease cancels
that work at once and drops what detection held (the next leader rebuilds it from the database).
The once-per-cluster work on the scheduler's timers (cluster_work.py: detection's writes, the
staleness sweep, retention) runs only while this replica leads, always without a Lease.

wiring.py imports this module only when a Lease elects the leader: it loads the Kubernetes
client, which a process without `kubernetes.enabled` never needs (tests/test_run_imports.py).

The work drives the parts wiring.py made and hands in: the Kubernetes parts (kube_wiring.py)
and detection (detection_wiring.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from egresswatch.controller.detection.follow import RoundFollower
from egresswatch.detection_wiring import Detection
from egresswatch.kube.client import KubeClientError, close_client, open_client
from egresswatch.kube.leader import LeaderElector, LeaseTiming, lease_identity, lease_namespace
from egresswatch.kube_wiring import KubeParts
from egresswatch.parts import Core
from egresswatch.settings import KubernetesSettings
from egresswatch.storage import RoundFeed

log = logging.getLogger(__name__)

FOLLOW_PERIOD_S = 0.5  # the leader reads the rounds every replica stored this often
LEAD_RETRY_S = 2.0  # a new leader that cannot read its past yet tries again this often
REREAD_IDS = 5000  # a new leader reads this many round ids again: transactions in flight


class Leadership:
    """The elector and the leader's work of one replica; see the module docstring.

    :meth:`start` raises KubeClientError when the elector's client cannot be made;
    :meth:`stop_work` and :meth:`stop` are idempotent, and :meth:`stop` releases the Lease when
    this replica holds it."""

    def __init__(
        self,
        core: Core,
        *,
        kube: KubeParts,
        detection: Detection,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._feed = RoundFeed(core.store.engine)
        self._kube = kube
        self._detection = detection
        self._metrics = core.metrics
        self._outage = core.outage
        self._clock = core.clock
        self._environ = environ if environ is not None else os.environ
        self.elector: LeaderElector | None = None
        self._election: asyncio.Task[None] | None = None
        self._work: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        return self.elector is not None and self.elector.leading

    async def start(self, kubernetes: KubernetesSettings) -> None:
        """The elector on its own client, campaigning in a named task."""
        election = kubernetes.leader_election
        kubeconfig = Path(kubernetes.kubeconfig) if kubernetes.kubeconfig is not None else None
        api = await open_client(kubeconfig, context=kubernetes.context)
        self.elector = LeaderElector(
            api,
            name=election.lease_name,
            namespace=lease_namespace(election.lease_namespace, self._environ),
            identity=lease_identity(election.identity, self._environ),
            timing=LeaseTiming(
                election.lease_duration, election.renew_deadline, election.retry_period
            ),
            on_started=self._lead,
            on_stopped=self._follow,
            clock=self._clock,
        )
        self._metrics.set_leader(self.elector.identity, False)
        self._election = asyncio.get_running_loop().create_task(
            self.elector.run(), name="egresswatch-leader-election"
        )

    async def _lead(self) -> None:
        """Became the leader: start the leader's work in its own task (the elector must go
        on renewing while the past is read back)."""
        assert self.elector is not None
        self._metrics.set_leader(self.elector.identity, True)
        self._work = asyncio.get_running_loop().create_task(
            self._do_work(), name="egresswatch-leader-work"
        )

    async def _do_work(self) -> None:
        """Discovery, detection rebuilt from the database, then the rounds table followed
        from where the restored state ends, until cancelled."""
        try:  # before detection: the pipeline reads the discovery's policies
            await self._kube.start_discovery()
        except KubeClientError as exc:  # the elector's client works: not expected, but said
            log.error("the leader runs without discovery", extra={"problem": str(exc)})
        while True:
            try:
                # Read before the restore, and REREAD_IDS back: a round stored meanwhile, or
                # by a transaction still in flight, is read by both, and detection ignores a
                # round not newer than its pair's last.
                after = max(0, await self._feed.last_id() - REREAD_IDS)
                pipeline = await self._detection.restored()
                break
            except Exception:
                self._metrics.count_database_error()
                log.exception("the new leader cannot read detection back yet; retrying")
                await asyncio.sleep(LEAD_RETRY_S)
        self._detection.install(pipeline)
        follower = RoundFollower(
            self._feed,
            after=after,
            judge=self._detection.judge,
            period_s=FOLLOW_PERIOD_S,
            outage=self._outage,
            on_error=self._metrics.count_database_error,
        )
        await follower.run()

    async def _follow(self) -> None:
        """Lost (or gave up) the lead: stop the leader's work at once and drop what detection
        held; the next leader rebuilds it from the database."""
        await self.stop_work()
        self._detection.drop()  # what it held is not written: no longer ours
        if self.elector is not None:
            self._metrics.set_leader(self.elector.identity, False)

    async def stop_work(self) -> None:
        """Cancel the leader's work, if any, and stop the discovery it started."""
        work, self._work = self._work, None
        if work is None:
            return
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        await self._kube.stop_discovery()

    async def stop(self) -> None:
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
