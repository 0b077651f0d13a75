"""Metrics: the exposition a scrape sees, parsed back, after synthetic rounds."""

from __future__ import annotations

from datetime import UTC, datetime

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from egresswatch.metrics import NO_REASON, Metrics
from egresswatch.model import Reason, RoundResult, SourceKind, Status, Step, StepResult, Suspect

Sample = tuple[str, frozenset[tuple[str, str]]]
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def scrape(registry: CollectorRegistry) -> dict[Sample, float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Sample, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: dict[Sample, float], name: str, **labels: str) -> list[dict[str, str]]:
    """Label sets of the samples named ``name`` that carry all of ``labels``."""
    return [dict(lbls) for (n, lbls) in samples if n == name and set(labels.items()) <= set(lbls)]


def round_(
    *steps: tuple[Step, Status, Reason | None], source: str = "pod-a", target: str = "api"
) -> RoundResult:
    return RoundResult(
        target=target,
        source=source,
        started_at=T0,
        steps=tuple(StepResult(s, st, r, duration_s=0.02) for s, st, r in steps),
    )


def healthy(source: str = "pod-a", target: str = "api") -> RoundResult:
    return round_(
        (Step.DNS_CLUSTER, Status.OK, None),
        (Step.DNS_UPSTREAM, Status.OK, None),
        (Step.TCP_CONNECT, Status.OK, None),
        (Step.TLS_HANDSHAKE, Status.OK, None),
        (Step.HTTP_RESPONSE, Status.OK, None),
        (Step.PATH_TRACE, Status.SKIPPED, Reason.NOT_DUE),
        source=source,
        target=target,
    )


def dns_broken() -> RoundResult:
    return round_(
        (Step.DNS_CLUSTER, Status.FAIL, Reason.NXDOMAIN),
        (Step.DNS_UPSTREAM, Status.OK, None),
        (Step.TCP_CONNECT, Status.FAIL, Reason.CONN_TIMEOUT),
        (Step.TLS_HANDSHAKE, Status.SKIPPED, Reason.DEPENDENCY_FAILED),
        (Step.HTTP_RESPONSE, Status.SKIPPED, Reason.DEPENDENCY_FAILED),
        (Step.PATH_TRACE, Status.OK, None),
    )


def make() -> tuple[CollectorRegistry, Metrics]:
    registry = CollectorRegistry()
    return registry, Metrics(registry, version="1.2.3")


PAIR = {"source": "pod-a", "target": "api"}


def test_healthy_round_sets_up_counts_and_times_steps() -> None:
    registry, metrics = make()
    metrics.observe_round(healthy())
    s = scrape(registry)

    for step in ("dns_cluster", "dns_upstream", "tcp_connect", "tls_handshake", "http_response"):
        assert value(s, "egresswatch_step_up", **PAIR, step=step) == 1
        assert value(s, "egresswatch_step_duration_seconds_count", **PAIR, step=step) == 1
        assert value(s, "egresswatch_step_duration_seconds_sum", **PAIR, step=step) == 0.02
        bucket = dict(PAIR, step=step, le="0.025")
        assert value(s, "egresswatch_step_duration_seconds_bucket", **bucket) == 1
        assert value(s, "egresswatch_step_duration_seconds_bucket", **bucket | {"le": "0.01"}) == 0
        ok = dict(PAIR, step=step, status="ok", reason=NO_REASON)
        assert value(s, "egresswatch_step_results_total", **ok) == 1
    # A skipped step is counted, with its reason, but neither sets step_up nor is timed.
    skipped = dict(PAIR, step="path_trace", status="skipped", reason="not_due")
    assert value(s, "egresswatch_step_results_total", **skipped) == 1
    assert series(s, "egresswatch_step_up", step="path_trace") == []
    assert series(s, "egresswatch_step_duration_seconds_count", step="path_trace") == []
    # Nothing has ever failed: no first failing step series.
    assert series(s, "egresswatch_first_failing_step") == []


def test_first_failing_step_follows_the_latest_round() -> None:
    registry, metrics = make()
    metrics.observe_round(dns_broken())
    s = scrape(registry)
    assert value(s, "egresswatch_first_failing_step", **PAIR, step="dns_cluster") == 1
    assert series(s, "egresswatch_first_failing_step") == [dict(PAIR, step="dns_cluster")]
    assert value(s, "egresswatch_step_up", **PAIR, step="dns_cluster") == 0
    assert value(s, "egresswatch_step_up", **PAIR, step="tcp_connect") == 0
    nx = dict(PAIR, step="dns_cluster", status="fail", reason="nxdomain")
    assert value(s, "egresswatch_step_results_total", **nx) == 1

    metrics.set_first_failing_step("pod-a", "api", Step.TCP_CONNECT)
    s = scrape(registry)
    assert value(s, "egresswatch_first_failing_step", **PAIR, step="dns_cluster") == 0
    assert value(s, "egresswatch_first_failing_step", **PAIR, step="tcp_connect") == 1

    metrics.observe_round(healthy())
    s = scrape(registry)
    assert value(s, "egresswatch_first_failing_step", **PAIR, step="dns_cluster") == 0
    assert value(s, "egresswatch_first_failing_step", **PAIR, step="tcp_connect") == 0
    assert value(s, "egresswatch_step_up", **PAIR, step="dns_cluster") == 1
    assert value(s, "egresswatch_step_results_total", **nx) == 1  # counters keep counting


def test_first_failing_step_is_per_source_and_target() -> None:
    registry, metrics = make()
    metrics.set_first_failing_step("pod-a", "api", Step.DNS_CLUSTER)
    metrics.set_first_failing_step("pod-b", "api", Step.TLS_HANDSHAKE)
    metrics.set_first_failing_step("pod-a", "api", None)
    s = scrape(registry)
    assert value(s, "egresswatch_first_failing_step", **PAIR, step="dns_cluster") == 0
    b = {"source": "pod-b", "target": "api", "step": "tls_handshake"}
    assert value(s, "egresswatch_first_failing_step", **b) == 1


def test_skipped_path_trace_and_error_steps_leave_step_up_alone() -> None:
    registry, metrics = make()
    metrics.observe_round(dns_broken())  # path_trace ran: ok
    metrics.observe_round(
        round_(
            (Step.TLS_HANDSHAKE, Status.ERROR, Reason.PROBE_ERROR),
            (Step.PATH_TRACE, Status.SKIPPED, Reason.NOT_DUE),
        )
    )
    s = scrape(registry)
    assert value(s, "egresswatch_step_up", **PAIR, step="path_trace") == 1
    assert series(s, "egresswatch_step_up", step="tls_handshake") == []
    error = dict(PAIR, step="tls_handshake", status="error", reason="probe_error")
    assert value(s, "egresswatch_step_results_total", **error) == 1
    # An error step ran, so it is timed.
    assert value(s, "egresswatch_step_duration_seconds_count", **PAIR, step="tls_handshake") == 1


def test_change_timestamp_and_incidents() -> None:
    registry, metrics = make()
    metrics.set_step_last_change("pod-a", "api", Step.DNS_CLUSTER, T0)
    metrics.set_incidents_open("api", Suspect.CLUSTER_DNS, 1)
    metrics.set_incidents_open("api", Suspect.FIREWALL, 2)
    metrics.set_incidents_open("api", Suspect.FIREWALL, 0)
    s = scrape(registry)
    change = dict(PAIR, step="dns_cluster")
    assert value(s, "egresswatch_step_last_change_timestamp_seconds", **change) == T0.timestamp()
    assert value(s, "egresswatch_incidents_open", target="api", suspect="cluster_dns") == 1
    assert value(s, "egresswatch_incidents_open", target="api", suspect="firewall") == 0


def populate(metrics: Metrics) -> None:
    for source in ("pod-a", "node-1"):
        for target in ("api", "registry"):
            metrics.observe_round(healthy(source, target))
            metrics.set_first_failing_step(source, target, Step.HTTP_RESPONSE)
            metrics.set_step_last_change(source, target, Step.HTTP_RESPONSE, T0)
    metrics.set_incidents_open("api", Suspect.PROXY, 1)
    metrics.set_incidents_open("registry", Suspect.PROXY, 1)


PER_TARGET = (
    "egresswatch_step_up",
    "egresswatch_step_duration_seconds_bucket",
    "egresswatch_step_duration_seconds_count",
    "egresswatch_step_duration_seconds_sum",
    "egresswatch_step_results_total",
    "egresswatch_first_failing_step",
    "egresswatch_step_last_change_timestamp_seconds",
    "egresswatch_incidents_open",
)


def test_forget_target_removes_every_series_of_it_and_only_those() -> None:
    registry, metrics = make()
    populate(metrics)
    metrics.forget_target("api")
    s = scrape(registry)
    assert [lbls for (_, lbls) in s if ("target", "api") in lbls] == []
    for name in PER_TARGET:
        assert series(s, name, target="registry"), name
    # The target can come back: its series are simply created again.
    metrics.observe_round(healthy("pod-a", "api"))
    assert value(scrape(registry), "egresswatch_step_up", **PAIR, step="dns_cluster") == 1


def test_forget_targets_removes_several_in_one_call_and_only_those() -> None:
    """A reload that drops targets forgets them in one pass; they can come back."""
    registry, metrics = make()
    for name in ("a", "b", "c"):
        metrics.observe_round(healthy("pod-a", name))
    metrics.forget_targets({"a", "c"})
    s = scrape(registry)
    assert {dict(lbls).get("target") for (_, lbls) in s} - {None} == {"b"}
    metrics.observe_round(healthy("pod-a", "a"))
    assert (
        value(
            scrape(registry), "egresswatch_step_up", source="pod-a", target="a", step="dns_cluster"
        )
        == 1
    )


def test_forget_source_removes_every_series_of_it() -> None:
    registry, metrics = make()
    populate(metrics)
    metrics.forget_source("pod-a")
    s = scrape(registry)
    assert [lbls for (_, lbls) in s if ("source", "pod-a") in lbls] == []
    for name in PER_TARGET[:-1]:
        assert series(s, name, source="node-1"), name
    # incidents_open has no source label: a source leaving does not close incidents.
    assert value(s, "egresswatch_incidents_open", target="api", suspect="proxy") == 1


def test_health_metrics() -> None:
    registry, metrics = make()
    s = scrape(registry)
    assert value(s, "egresswatch_ingest_batches_total", outcome="error") == 0
    assert value(s, "egresswatch_config_reloads_total", outcome="rejected") == 0
    metrics.observe_lateness(0.003)
    metrics.observe_lateness(2.0)
    metrics.count_round_timeout()
    metrics.count_round_skipped()
    metrics.count_round_skipped()
    metrics.set_buffer_depth(17)
    metrics.count_ingest_batch("ok", rounds=40)
    metrics.count_ingest_batch("error", rounds=5)
    metrics.count_database_error()
    metrics.count_config_reload("ok")
    metrics.count_config_reload("rejected")
    s = scrape(registry)
    assert value(s, "egresswatch_scheduler_lateness_seconds_count") == 2
    assert value(s, "egresswatch_scheduler_lateness_seconds_bucket", le="0.005") == 1
    assert value(s, "egresswatch_scheduler_lateness_seconds_bucket", le="+Inf") == 2
    assert value(s, "egresswatch_round_timeouts_total") == 1
    assert value(s, "egresswatch_rounds_skipped_total") == 2
    assert value(s, "egresswatch_buffer_depth") == 17
    assert value(s, "egresswatch_ingest_batches_total", outcome="ok") == 1
    assert value(s, "egresswatch_ingest_batches_total", outcome="error") == 1
    assert value(s, "egresswatch_ingested_rounds_total") == 40
    assert value(s, "egresswatch_database_errors_total") == 1
    assert value(s, "egresswatch_config_reloads_total", outcome="ok") == 1
    assert value(s, "egresswatch_config_reloads_total", outcome="rejected") == 1
    assert value(s, "egresswatch_build_info", version="1.2.3") == 1


def test_no_global_registry() -> None:
    _, first = make()
    _, second = make()  # a global registry would refuse the duplicate names
    first.observe_round(healthy())
    second.observe_round(dns_broken())
    default = generate_latest(prometheus_client.REGISTRY).decode()
    assert "egresswatch_" not in default


def test_label_values_come_from_the_vocabularies() -> None:
    registry, metrics = make()
    metrics.observe_round(dns_broken())
    metrics.observe_round(healthy())
    vocab = {
        "step": {s.value for s in Step},
        "status": {s.value for s in Status},
        "reason": {r.value for r in Reason} | {NO_REASON},
    }
    for _, labels in scrape(registry):
        for name, val in labels:
            if name in vocab:
                assert val in vocab[name], (name, val)


def test_detail_per_source_kind() -> None:
    """`metrics.detail: source_kind`: the histogram and the results counter are per kind of
    source (their series no longer grow with the sources); the per-pair gauges stay."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, version="1.2.3", per_source_kind=True)
    for name in ("node-1", "node-2", "node-3"):
        metrics.observe_round(healthy(source=name), SourceKind.NODE)
    metrics.observe_round(dns_broken(), SourceKind.POD)  # source pod-a
    metrics.observe_round(healthy(source="newcomer"))  # its kind not known yet
    s = scrape(registry)
    tcp = {"target": "api", "step": "tcp_connect"}
    assert value(s, "egresswatch_step_duration_seconds_count", source_kind="node", **tcp) == 3
    assert value(s, "egresswatch_step_duration_seconds_count", source_kind="pod", **tcp) == 1
    assert value(s, "egresswatch_step_duration_seconds_count", source_kind="unknown", **tcp) == 1
    failed = dict(tcp, source_kind="pod", status="fail", reason="conn_timeout")
    assert value(s, "egresswatch_step_results_total", **failed) == 1
    assert series(s, "egresswatch_step_results_total", source="node-1") == []
    assert series(s, "egresswatch_step_duration_seconds_count", source="node-1") == []
    # The per-pair gauges keep their source.
    assert value(s, "egresswatch_step_up", source="node-2", **tcp) == 1
    assert value(s, "egresswatch_first_failing_step", source="pod-a", target="api",
                 step="dns_cluster") == 1  # fmt: skip
    metrics.forget_source("node-2")
    s = scrape(registry)
    assert series(s, "egresswatch_step_up", source="node-2") == []
    assert value(s, "egresswatch_step_duration_seconds_count", source_kind="node", **tcp) == 3


def test_no_created_series() -> None:
    """`_created` lines would double the per-pair counter and histogram lines; nothing reads
    them."""
    registry, metrics = make()
    metrics.observe_round(healthy())
    assert "_created" not in generate_latest(registry).decode()
