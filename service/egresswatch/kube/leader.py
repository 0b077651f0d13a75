"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does it.

Why our own elector and not `kubernetes.aio.leaderelection`: its `LeaseLock.create()` passes
`pretty=True` to a `StrictStr` parameter and fails with a pydantic ValidationError whenever the
Lease does not exist yet (37.x; `tests/test_kubeapi.py` pins the fault), it times leases with the
wall clock, and it gives no way to release the Lease on a clean stop. This one reads, creates and
replaces the Lease through `CoordinationV1Api` (without `pretty`), with the Lease's
resourceVersion as the optimistic lock: a 409 means another replica wrote first, and the next
try reads again.

The rules (client-go's):
- a Lease nobody holds (no holderIdentity), or whose record has not changed for
  `leaseDurationSeconds` as seen by this process's own monotonic clock (never by comparing
  renewTime with our wall clock: clocks between nodes differ), is free; taking it from another
  holder adds one to leaseTransitions and sets acquireTime;
- the holder renews every `retry_period_s`; a renewal that has not succeeded within
  `renew_deadline_s` of the last good one loses the lead at once (`on_stopped`), before the
  Lease can expire for the others (renew deadline < lease duration);
- a clean stop while leading releases the Lease (holderIdentity emptied), so a successor need
  not wait out the duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
from kubernetes.aio.client import (
    ApiClient,
    CoordinationV1Api,
    V1Lease,
    V1LeaseSpec,
    V1ObjectMeta,
)
from kubernetes.aio.client.exceptions import ApiException

__all__ = ["LeaderElector", "LeaseTiming", "lease_identity", "lease_namespace"]

log = logging.getLogger(__name__)

# What an API server away, slow or refusing looks like: a failed try, retried next period.
_EXPECTED = (ApiException, aiohttp.ClientError, TimeoutError, ValueError)


@dataclass(frozen=True)
class LeaseTiming:
    """client-go's defaults: 15 s lease, 10 s renew deadline, 2 s between tries."""

    duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.duration_s:
            raise ValueError(
                "leader election needs retry_period < renew_deadline < lease_duration, got "
                f"{self.retry_period_s}, {self.renew_deadline_s}, {self.duration_s}"
            )


@dataclass(frozen=True)
class _Observed:
    """The Lease's record as last read, and when (our monotonic clock) it last changed."""

    holder: str
    renew_time: datetime | None
    resource_version: str
    changed_at: float


class LeaderElector:
    """Campaigns for the Lease `namespace`/`name` as `identity`; `run()` until cancelled.

    `on_started` is awaited when this process becomes the leader, `on_stopped` when it stops
    being it (renewal failed past the deadline, or the elector stops); neither may raise.
    `leading` says whether this process holds the Lease now; `holder` is the identity the
    Lease named at the last read ("" when nobody holds it).
    """

    def __init__(
        self,
        api: ApiClient,
        *,
        name: str,
        namespace: str,
        identity: str,
        timing: LeaseTiming,
        on_started: Callable[[], Awaitable[None]],
        on_stopped: Callable[[], Awaitable[None]],
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self._leases = CoordinationV1Api(api)
        self.name, self.namespace, self.identity = name, namespace, identity
        self.timing = timing
        self._on_started, self._on_stopped = on_started, on_stopped
        self._clock, self._monotonic = clock, monotonic
        self._observed: _Observed | None = None
        self._renewed_at = 0.0  # monotonic time of our last successful acquire or renew
        self._holder_duration = timing.duration_s  # the other holder's leaseDurationSeconds
        self.leading = False

    @property
    def holder(self) -> str:
        return self._observed.holder if self._observed else ""

    async def run(self) -> None:
        """Acquire, then renew; on a lost lead, tell `on_stopped` and campaign again. Cancel to
        stop (then call `release()` to hand the Lease over at once)."""
        try:
            while True:
                await self._campaign_once()
        finally:
            if self.leading:
                self.leading = False
                await self._on_stopped()

    async def _campaign_once(self) -> None:
        while True:
            if await self.try_acquire_or_renew():
                break
            await asyncio.sleep(self.timing.retry_period_s)
        self.leading = True
        log.warning("became the leader", extra={"identity": self.identity, "lease": self.name})
        await self._on_started()
        while True:
            if not await self._renew_within_deadline():
                break
            await asyncio.sleep(self.timing.retry_period_s)
        self.leading = False
        log.error(
            "lost the lead: not renewed within the renew deadline, or another holder took it",
            extra={
                "identity": self.identity,
                "holder": self.holder,
                "deadline_s": self.timing.renew_deadline_s,
            },
        )
        await self._on_stopped()

    async def _renew_within_deadline(self) -> bool:
        """Retry the renewal every retry period until it succeeds or the deadline (counted from
        the last good renewal) passes."""
        deadline = self._renewed_at + self.timing.renew_deadline_s
        while self._monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(deadline - self._monotonic(), 0.0)):
                    if await self.try_acquire_or_renew():
                        return True
            if self._observed is not None and self._observed.holder != self.identity:
                return False  # someone else holds it: no use retrying
            await asyncio.sleep(min(self.timing.retry_period_s, deadline - self._monotonic()))
        return False

    async def try_acquire_or_renew(self) -> bool:
        """One try: read the Lease (create it when absent), take it when free or ours, write it
        back under its resourceVersion. False when another holds it or a write lost a race."""
        try:
            return await self._try()
        except _EXPECTED as exc:
            log.info("lease try failed", extra={"lease": self.name, "problem": _problem(exc)})
            return False

    async def _try(self) -> bool:
        now, tick = self._clock(), self._monotonic()
        try:
            lease = await self._leases.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return await self._create(now, tick)
        spec = lease.spec or V1LeaseSpec()
        self._observe(lease, spec, tick)
        mine = spec.holder_identity == self.identity
        if not mine and not self._free(tick):
            return False
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = round(self.timing.duration_s)
        spec.renew_time = now
        if not mine:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + (1 if self.holder else 0)
        lease.spec = spec
        try:  # the resourceVersion we read is sent back: a 409 says another wrote first
            written = await self._leases.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                return False  # the next try reads the Lease again
            raise
        self._written(written, tick)
        return True

    async def _create(self, now: datetime, tick: float) -> bool:
        """The Lease does not exist: create it, held by us (no `pretty`: the 37.x fault)."""
        body = V1Lease(
            metadata=V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=round(self.timing.duration_s),
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            written = await self._leases.create_namespaced_lease(self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                return False  # another replica created it first
            raise
        self._written(written, tick)
        return True

    def _observe(self, lease: V1Lease, spec: V1LeaseSpec, tick: float) -> None:
        """Remember the record; its clock restarts only when the record changed."""
        holder = spec.holder_identity or ""
        version = lease.metadata.resource_version if lease.metadata else ""
        before = self._observed
        if before is None or (before.holder, before.renew_time) != (holder, spec.renew_time):
            self._observed = _Observed(holder, spec.renew_time, version or "", tick)
        else:
            self._observed = _Observed(holder, spec.renew_time, version or "", before.changed_at)
        if holder and holder != self.identity and spec.lease_duration_seconds:
            self._holder_duration = float(spec.lease_duration_seconds)
        else:
            self._holder_duration = self.timing.duration_s

    def _free(self, tick: float) -> bool:
        observed = self._observed
        if observed is None or not observed.holder:
            return True
        return tick - observed.changed_at >= self._holder_duration

    def _written(self, lease: V1Lease, tick: float) -> None:
        spec = lease.spec or V1LeaseSpec()
        version = (lease.metadata.resource_version if lease.metadata else "") or ""
        self._observed = _Observed(self.identity, spec.renew_time, version, tick)
        self._renewed_at = tick

    async def release(self) -> None:
        """Hand the Lease over at once on a clean stop: empty holderIdentity, so the next
        replica takes it at its next try. Only when we hold it; failures are logged."""
        try:
            lease = await self._leases.read_namespaced_lease(self.name, self.namespace)
            spec = lease.spec
            if spec is None or spec.holder_identity != self.identity:
                return
            spec.holder_identity = None
            spec.lease_duration_seconds = 1
            spec.renew_time = self._clock()
            await self._leases.replace_namespaced_lease(self.name, self.namespace, lease)
            log.info("released the lease", extra={"identity": self.identity})
        except _EXPECTED as exc:
            log.warning("could not release the lease", extra={"problem": _problem(exc)})


def _problem(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}"
    return type(exc).__name__


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def lease_identity(configured: str | None, environ: Mapping[str, str]) -> str:
    """This replica's name in the Lease: the configured one, else the pod's name (Downward API
    `POD_NAME`), else HOSTNAME_PID (two processes on one host stay apart)."""
    return configured or environ.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}"


def lease_namespace(
    configured: str | None,
    environ: Mapping[str, str],
    service_account: Path = SERVICE_ACCOUNT_NAMESPACE,
) -> str:
    """The Lease's namespace: the configured one, else `POD_NAMESPACE`, else the in-cluster
    service account's namespace, else "default"."""
    if configured or environ.get("POD_NAMESPACE"):
        return configured or environ["POD_NAMESPACE"]
    with contextlib.suppress(OSError):
        return service_account.read_text().strip() or "default"
    return "default"
