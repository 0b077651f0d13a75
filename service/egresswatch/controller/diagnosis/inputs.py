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


@dataclass(frozen=True)
class Context:
    """What the diagnosis knows of the cluster's egress beyond the rounds."""

    egress_devices: tuple[Network, ...] = ()
    upstream: str | None = None  # the upstream resolver address, for next commands
    proxy: str | None = None  # proxy URL in use, for next commands


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
