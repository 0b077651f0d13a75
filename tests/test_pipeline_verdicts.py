"""What the pipeline asks the diagnosis about: the rounds that stand for a failure as
hysteresis judges it, not a lone round that failed some other way, nor a good round that a
recovery has not confirmed."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from egresswatch.controller.detection.pipeline import Pipeline
from egresswatch.metrics import Metrics
from egresswatch.model import Reason, RoundResult, SourceKind, Step, Suspect
from egresswatch.settings import Settings, settings_from_dict
from egresswatch.storage import History, make_engine
from tests.test_diagnosis import T0, TIMED_OUT, http, rnd, tls

PROXY = "proxy 10.1.1.1:3128 (config)"


def pipeline(settings: Settings) -> Pipeline:
    # The database is never reached: observe() and verdict_for() only queue and judge.
    history = History(make_engine("sqlite+aiosqlite:///:memory:"))
    return Pipeline(
        settings=lambda: settings,
        history=history,
        metrics=Metrics(CollectorRegistry(), version="test"),
        clock=lambda: T0 + timedelta(hours=1),
    )


def at(round_: RoundResult, i: int, source: str = "pod-a") -> RoundResult:
    return replace(round_, source=source, started_at=T0 + timedelta(seconds=30 * i))


SETTINGS = settings_from_dict(
    {
        "proxy": {"url": "http://10.1.1.1:3128"},
        "targets": [{"name": "microsoft", "url": "https://microsoft.com/"}],
    }
)
DENIED = rnd(
    http(Reason.PROXY_DENIED, status=403, proxy_status=403, via_proxy=PROXY),
)


def test_a_lone_round_failing_another_way_does_not_move_the_verdict() -> None:
    """The proxy denies (http_response FAILING); its restart resets one connection right after
    the ClientHello (a firewall's signature, at tls_handshake). That one round is not the
    failure hysteresis confirmed: the verdict stays `proxy`."""
    judge = pipeline(SETTINGS)
    judge.observe([at(DENIED, i) for i in range(3)])
    assert judge.verdict_for("microsoft", ("pod-a",)).suspect is Suspect.PROXY
    reset = rnd(tls(Reason.FIREWALL_DENIED), http(Reason.DEPENDENCY_FAILED))
    judge.observe([at(reset, 3)])
    verdict = judge.verdict_for("microsoft", ("pod-a",))
    assert (verdict.suspect, verdict.first_failing_step) == (Suspect.PROXY, Step.HTTP_RESPONSE)
    # Confirmed by hysteresis (3 in a row), the new failure is the failure.
    judge.observe([at(reset, i) for i in range(4, 7)])
    assert judge.verdict_for("microsoft", ("pod-a",)).suspect is Suspect.FIREWALL


def test_a_good_round_before_the_recovery_is_confirmed_is_not_the_sources_word() -> None:
    judge = pipeline(SETTINGS)
    judge.observe([at(DENIED, i) for i in range(3)])
    judge.observe([at(rnd(), 3)])  # one good round: recover_after is 2
    assert judge.verdict_for("microsoft", ("pod-a",)).suspect is Suspect.PROXY


@pytest.mark.parametrize(
    ("pod_node", "suspect", "rule"),
    [
        ("aks-node-2", Suspect.SOURCE_LOCAL, "node_fails_others_work"),
        ("aks-node-1", Suspect.NETWORK_POLICY, "pod_fails_node_works"),
    ],
)
def test_a_pod_is_compared_with_its_own_node(pod_node: str, suspect: Suspect, rule: str) -> None:
    """The node each source runs on (its batches' source_node) reaches the diagnosis: a pod
    whose own node fails too, where another node works, points at its node, not at its
    policies; with its own node working it is the pod's policy. aks-node-2 fails, aks-node-1
    works."""
    settings = settings_from_dict(
        {"targets": [{"name": "microsoft", "url": "https://microsoft.com/"}]}
    )
    judge = pipeline(settings)
    judge.set_source_kind("pod-a", SourceKind.POD, pod_node)
    judge.set_source_kind("aks-node-1", SourceKind.NODE, "aks-node-1")
    judge.set_source_kind("aks-node-2", SourceKind.NODE, "aks-node-2")
    for i in range(3):
        judge.observe(
            [at(TIMED_OUT, i), at(TIMED_OUT, i, "aks-node-2"), at(rnd(), i, "aks-node-1")]
        )
    verdict = judge.verdict_for("microsoft", ("pod-a",))
    assert (verdict.suspect, verdict.facts["rule"]) == (suspect, rule)
