"""The derived steps that look beyond one round: `source_compare` and `control_external`.

`compare` puts this source's failure next to the same target's rounds from other sources
(a pod failing where a node gets through is a network policy's signature; only this source
failing is this source's problem); `egress_path` next to the control targets from the same
source (every one failing means nothing outside is reachable from here).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from egresswatch.controller.diagnosis.findings import (
    BLOCKED,
    DNS_STEPS,
    NETWORK_STEPS,
    NOT_REACHED,
    Finding,
    device_of,
    failure_facts,
    is_ok,
    listing,
    ran,
    reason_text,
    trace_sentence,
    trace_stop,
)
from egresswatch.controller.diagnosis.inputs import Case, Observation
from egresswatch.model import RoundResult, SourceKind, Step, StepResult, Suspect


def compare_sources(case: Case) -> Finding | None:
    """Rule: a network step blocked here, compared with every other source's same step."""
    failing = case.failing
    if failing is None or failing.step not in NETWORK_STEPS or failing.reason not in BLOCKED:
        return None
    return compare(case, failing.step, case.peers)


def compare(case: Case, step: Step, peers: Sequence[Observation]) -> Finding | None:
    """`network_policy` when this pod fails at `step` where a node gets through; else
    `source_local` when every peer that ran `step` got through (at least one did); else None.

    The next command is `step`'s, to be run from this source. For a DNS step the evidence
    quotes both DNS steps.
    """
    judged = [p for p in peers if ran(p.round.step(step))]
    working = [p for p in judged if is_ok(p.round.step(step))]
    failing = [p for p in judged if not is_ok(p.round.step(step))]
    nodes = [p.source for p in working if p.source_kind is SourceKind.NODE]
    facts: dict[str, Any] = {
        step.value: failure_facts(case.result(step)),
        "working_sources": [p.source for p in working],
        "failing_sources": [p.source for p in failing],
    }
    told = frozenset(DNS_STEPS) if step in DNS_STEPS else frozenset({step})
    evidence = [case.says(s) for s in (DNS_STEPS if step in DNS_STEPS else (step,))]
    this = case.this
    own = _own_node(this, judged)
    # A node alone failing while every other source works is `only_this_source_fails` below;
    # this rule is for when pods on that node fail with it.
    alone = this.source_kind is SourceKind.NODE and working and not failing
    broken = None if alone else _broken_node(this, own, judged, step)
    if broken is not None:
        others = [
            p.source for p in judged if p.source_kind is SourceKind.NODE and _node_of(p) != broken
        ]
        if this.source_kind is SourceKind.POD:
            evidence.append(f"{step.value} fails from its own node {broken} too")
        evidence.append(f"{step.value} works from every other node: {listing(others)}")
        facts["node"] = broken
        suspect, rule = Suspect.SOURCE_LOCAL, "node_fails_others_work"
    elif this.source_kind is SourceKind.POD and own is not None and is_ok(own.round.step(step)):
        evidence.append(f"{step.value} works from its own node {own.source}")
        if failing:
            evidence.append(f"{step.value} fails from {listing([p.source for p in failing])} too")
        evidence.extend(_controls_too(case))
        suspect, rule = _pod_only(case, step, evidence, facts)
    elif this.source_kind is SourceKind.POD and own is None and nodes:
        evidence.append(f"{step.value} works from node {listing(nodes)}")
        if failing:
            evidence.append(f"{step.value} fails from {listing([p.source for p in failing])} too")
        evidence.extend(_controls_too(case))
        suspect, rule = _pod_only(case, step, evidence, facts)
    elif working and not failing:
        names = listing([f"{p.source_kind.value} {p.source}" for p in working])
        evidence.append(f"{step.value} works from every other source: {names}")
        evidence.extend(_controls_too(case))
        suspect, rule = Suspect.SOURCE_LOCAL, "only_this_source_fails"
    else:
        return None
    return Finding(suspect, rule, tuple(evidence), facts, step, told)


def _own_node(this: Observation, judged: Sequence[Observation]) -> Observation | None:
    """The node source this pod runs on, when its node is known and ran the step."""
    if this.source_kind is not SourceKind.POD or this.node is None:
        return None
    return next(
        (p for p in judged if p.source_kind is SourceKind.NODE and _node_of(p) == this.node),
        None,
    )


def _node_of(observation: Observation) -> str | None:
    """The node a source runs on; a node source's is its own name unless its agent said."""
    if observation.node is not None:
        return observation.node
    return observation.source if observation.source_kind is SourceKind.NODE else None


def _broken_node(
    this: Observation, own: Observation | None, judged: Sequence[Observation], step: Step
) -> str | None:
    """The node to blame: this node source, or this pod's own node, fails `step` while every
    other node that ran it (at least one) gets through. Pods on the broken node failing too
    say the same thing; pods elsewhere do not count (their policies are their own)."""
    node: str | None
    if this.source_kind is SourceKind.NODE:
        node = _node_of(this)
    elif own is not None and not is_ok(own.round.step(step)):
        node = _node_of(own)
    else:
        return None
    others = [p for p in judged if p.source_kind is SourceKind.NODE and _node_of(p) != node]
    if node is None or not others or not all(is_ok(p.round.step(step)) for p in others):
        return None
    return node


def _pod_only(
    case: Case, step: Step, evidence: list[str], facts: dict[str, Any]
) -> tuple[Suspect, str]:
    """A pod fails where its node gets through: a network policy, unless the policies (all of
    them evaluated) allow the packets, and then the pod's own networking (the CNI, a sidecar).
    Adds the policies' word to `evidence` and `facts` when they were judged."""
    policy = case.policy_on(step)
    if policy is None:
        return Suspect.NETWORK_POLICY, "pod_fails_node_works"
    facts["network_policy"] = policy.to_json()
    if policy.allowed and not policy.not_evaluated:
        evidence.append(
            f"the policies allow it ({policy.why}): look at the CNI or something else on the "
            "pod's path"
        )
        return Suspect.SOURCE_LOCAL, "pod_fails_policies_allow"
    evidence.extend(policy.sentences)
    return Suspect.NETWORK_POLICY, "pod_fails_node_works"


def _controls_too(case: Case) -> list[str]:
    """A sentence when every control fails from this source as well (a default-deny policy)."""
    if every_control_fails(case):
        return [f"every control fails from {case.this.source} too"]
    return []


def every_control_fails(case: Case) -> bool:
    """At least one control target, and none of them was reached from this source."""
    return bool(case.controls) and all(not_reached(c.round) is not None for c in case.controls)


def egress_path(case: Case) -> Finding | None:
    """Rule: nothing outside is reachable from this source: this target is blocked, and every
    control (at least one) was not reached at a network step either.
    """
    failing = case.failing
    if failing is None or failing.step not in NETWORK_STEPS or failing.reason not in BLOCKED:
        return None
    return egress_path_at(case, failing)


def egress_path_at(case: Case, failing: StepResult, *before: str) -> Finding | None:
    """`egress_path` for the blocked network step `failing` (which need not be the round's
    first failure: a DNS failure before it may be the same blockage); `before` are sentences
    that come first in the evidence."""
    failures: list[tuple[Observation, StepResult]] = []
    for control in case.controls:
        failed = not_reached(control.round)
        if failed is None:
            return None
        failures.append((control, failed))
    if not failures:
        return None
    listed = [f"{c.target} ({f.step.value} {reason_text(f)})" for c, f in failures]
    evidence = [
        *before,
        case.says(failing.step),
        f"every control fails from {case.this.source} too: {listing(listed)}",
    ]
    facts: dict[str, Any] = {
        failing.step.value: failure_facts(failing),
        "controls": [
            {"target": c.target, "step": f.step.value, "reason": reason_text(f)}
            for c, f in failures
        ],
    }
    told = {failing.step}
    # Where the path ends, when the trace says: an egress device that stops everything is
    # named here rather than blamed for this one target (diagnosis._egress_device defers).
    trace = case.result(Step.PATH_TRACE)
    sentence = trace_sentence(trace, case.devices)
    if sentence is not None and trace is not None and trace.failed:
        evidence.append(sentence)
        told.add(Step.PATH_TRACE)
        stop = trace_stop(trace)
        if device_of(stop, case.devices) is not None:
            facts["egress_device"] = stop
    return Finding(
        Suspect.EGRESS_PATH, "every_control_fails", tuple(evidence), facts, None, frozenset(told)
    )


def not_reached(round_: RoundResult) -> StepResult | None:
    """The network step at which a round's target was not reached, or None if it was."""
    for step in NETWORK_STEPS:
        result = round_.step(step)
        if result is not None and result.failed and result.reason in NOT_REACHED:
            return result
    return None
