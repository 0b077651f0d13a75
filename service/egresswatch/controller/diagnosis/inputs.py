"""The diagnosis' inputs: one observation, its controls and peers, and the egress context.

`Observation` and `Context` are the public input types of `diagnosis.diagnose` (re-exported
there); `Case` bundles one diagnosis' inputs with the questions most rules ask of them.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from egresswatch.controller.diagnosis.findings import Finding, Network, dns_sentence, step_sentence
from egresswatch.controller.diagnosis.policies import PolicyEvidence, judge
from egresswatch.kube.netpol import PolicyView
from egresswatch.model import Endpoint, Role, RoundResult, SourceKind, Step, StepResult


@dataclass(frozen=True)
class Observation:
    """The latest round of one (source, target), and what we know of the two."""

    source: str
    source_kind: SourceKind
    target: str
    role: Role
    endpoint: Endpoint
    round: RoundResult
    # The node the source runs on: a pod's (its agent's NODE_NAME), a node source's own name;
    # None when not known. A pod is compared with its own node first.
    node: str | None = None


@dataclass(frozen=True)
class Context:
    """What the diagnosis knows of the cluster's egress beyond the rounds."""

    egress_devices: tuple[Network, ...] = ()
    upstream: str | None = None  # the upstream resolver address, for next commands
    proxy: str | None = None  # proxy URL in use, for next commands
    # The cluster's NetworkPolicies (the controller's watch cache), for pod sources; None
    # outside a cluster or before the cache is wired: the network_policy step is then not judged.
    policies: PolicyView | None = None


@dataclass(frozen=True)
class Case:
    """One diagnosis: `this` observation, the controls from its source (its own target left
    out) and its peers (the same target from other sources), and the context.
    """

    this: Observation
    controls: tuple[Observation, ...]
    peers: tuple[Observation, ...]
    context: Context

    # cached: every rule asks, and the dataclass is frozen, so the answers cannot go stale
    @cached_property
    def first(self) -> Step | None:
        """The round's first failing step."""
        return self.this.round.first_failing_step

    @cached_property
    def failing(self) -> StepResult | None:
        """The first failing step's result."""
        first = self.first
        return self.result(first) if first is not None else None

    def result(self, step: Step) -> StepResult | None:
        return self.this.round.step(step)

    @cached_property
    def policy(self) -> PolicyEvidence | None:
        """The NetworkPolicies' word on the first failing step (see `policy_on`)."""
        return self.policy_on(self.first) if self.first is not None else None

    def policy_on(self, step: Step) -> PolicyEvidence | None:
        """What the NetworkPolicies say of `step`'s packets from this pod source: None for a
        node, without a policy view, or when policies cannot explain how `step` failed."""
        result = self.result(step)
        view = self.context.policies
        if view is None or result is None or self.this.source_kind is not SourceKind.POD:
            return None
        return judge(view, self.this.source, result, self.this.round)

    @property
    def host(self) -> str:
        return self.this.endpoint.host

    @property
    def devices(self) -> tuple[Network, ...]:
        return self.context.egress_devices

    def says(self, step: Step) -> str:
        """What `step` found in this round, in one sentence."""
        result = self.result(step)
        if result is None:
            return f"{step.value} was not run"
        if step is Step.DNS_CLUSTER:
            # dns_cluster asks the source's own resolver: CoreDNS in a pod, the VNet's on a node
            label = "node resolver" if self.this.source_kind is SourceKind.NODE else "cluster DNS"
            return dns_sentence(result, label, self.host)
        return step_sentence(result, self.host, self.devices)


Rule = Callable[[Case], Finding | None]
