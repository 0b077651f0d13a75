"""The status of one source towards one target, from its step states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from egresswatch.controller.api.documents import source_status_document
from egresswatch.model import Reason, Step, StepState
from egresswatch.storage import StateRecord

T0 = datetime(2026, 11, 27, 7, 0, tzinfo=UTC)


def state(step: Step | None, current: StepState, minutes: int) -> StateRecord:
    at = T0 + timedelta(minutes=minutes)
    reason = Reason.NXDOMAIN if current is StepState.FAILING else None
    return StateRecord("node-1", "shop", step, current, at, reason, at)


def test_a_pair_back_from_silence_degraded_whose_step_recovered_is_ok() -> None:
    document = source_status_document(
        "node-1",
        [
            state(None, StepState.DEGRADED, 1),  # came back from silence degraded
            state(Step.HTTP_RESPONSE, StepState.OK, 5),  # and the step recovered since
            state(Step.DNS_CLUSTER, StepState.OK, 0),
        ],
    )
    assert document["state"] == "ok" and document["healthy"] is True
    assert document["since"] == "2026-11-27T07:05:00Z"


def test_failing_wins_over_degraded_and_names_the_first_step() -> None:
    document = source_status_document(
        "node-1",
        [
            state(Step.HTTP_RESPONSE, StepState.DEGRADED, 1),
            state(Step.TCP_CONNECT, StepState.FAILING, 3),
            state(Step.DNS_CLUSTER, StepState.FAILING, 4),
        ],
    )
    assert document["state"] == "failing" and document["healthy"] is False
    assert document["first_failing_step"] == "dns_cluster"
    assert document["reason"] == "nxdomain"
    assert document["since"] == "2026-11-27T07:03:00Z"


def test_degraded_since_its_earliest_step() -> None:
    document = source_status_document(
        "node-1",
        [
            state(Step.HTTP_RESPONSE, StepState.DEGRADED, 6),
            state(Step.TLS_HANDSHAKE, StepState.DEGRADED, 2),
            state(Step.DNS_CLUSTER, StepState.OK, 9),
        ],
    )
    assert document["state"] == "degraded" and document["healthy"] is True
    assert document["since"] == "2026-11-27T07:02:00Z"
