"""The round runner's trace schedule after a failed trace (the plan's recover_after)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import egresswatch.probes.tls
from egresswatch.agent.config_file import follow_config
from egresswatch.agent.runner import RoundRunner, _owed_after
from egresswatch.model import Reason, RoundResult, Status, Step
from egresswatch.settings import settings_from_dict
from tests.support.https import LocalServers, Pki, local_servers, pki
from tests.support.tcpservers import TcpServer, accept_server

__all__ = ["accept_server", "local_servers", "pki"]  # fixtures, imported explicitly

__all__ = ["accept_server"]  # fixture


@pytest.mark.parametrize(
    ("owed", "confirm", "failed", "after"),
    [
        (None, 2, True, 2),  # a failed trace: trace every round until 2 worked
        (1, 3, True, 3),  # failing again starts the count over
        (2, 2, False, 1),
        (1, 2, False, 0),  # the last owed trace worked: back to trace_every
        (None, 2, False, 0),  # nothing owed, nothing changes
    ],
)
def test_traces_owed_after_a_failed_trace(
    owed: int | None, confirm: int, failed: bool, after: int
) -> None:
    assert _owed_after(owed, confirm, failed=failed) == after


async def test_a_new_runner_traces_until_recover_after_traces_worked(
    accept_server: TcpServer,
) -> None:
    """After a (re)start the runner owes recover_after traces, then traces on schedule."""
    settings = settings_from_dict(
        {
            "probes": {"trace_every": "1h", "trace_max_hops": 2, "trace_hop_timeout": "200ms"},
            "detection": {"recover_after": 3},
            "targets": [{"name": "db", "address": f"{accept_server.host}:{accept_server.port}"}],
        }
    )
    rounds: list[RoundResult] = []
    runner = RoundRunner(source="node-1", sink=rounds.append)
    follow_config(runner, settings)
    for _ in range(5):
        await runner.run_round("db")
    traces = [r.step(Step.PATH_TRACE) for r in rounds]
    assert [t.status if t else None for t in traces] == [Status.OK] * 3 + [Status.SKIPPED] * 2
    assert all(t is not None and t.reason is Reason.NOT_DUE for t in traces[3:])


async def test_rounds_of_every_target_build_one_tls_context(
    pki: Pki, local_servers: LocalServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS contexts are built once per trust for every round and target of a runner (and
    kept across plans), not once per step of every round."""
    built = []
    new_context = egresswatch.probes.tls._new_context

    def counted(*args: object) -> object:
        built.append(args)
        return new_context(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(egresswatch.probes.tls, "_new_context", counted)
    server = await local_servers.https()
    url = f"https://127.0.0.1:{server.port}/"
    settings = settings_from_dict(
        {
            "probes": {"ca_file": str(pki.ca_file), "trace_every": "1h"},
            "targets": [{"name": "a", "url": url}, {"name": "b", "url": url + "b"}],
        }
    )
    rounds: list[RoundResult] = []
    runner = RoundRunner(source="node-1", sink=rounds.append)
    follow_config(runner, settings)
    for _ in range(3):
        for name in ("a", "b"):
            await runner.run_round(name)
    follow_config(runner, settings)  # a reload keeps the contexts
    await runner.run_round("a")
    assert len(rounds) == 7
    for result in rounds:
        for step in (Step.TLS_HANDSHAKE, Step.HTTP_RESPONSE):
            got = result.step(step)
            assert got is not None and got.status is Status.OK, got
    assert len(built) == 1


async def test_the_stall_sampler_watches_each_round_while_it_runs(
    accept_server: TcpServer,
) -> None:
    """The runner holds `watch` (the agent's LoopLag.watching: its fast period) from a
    round's start to its end, and not once the round is handed on."""
    settings = settings_from_dict(
        {
            "probes": {"trace_every": "1h"},
            "targets": [{"name": "db", "address": f"{accept_server.host}:{accept_server.port}"}],
        }
    )
    held: list[str] = []
    rounds: list[RoundResult] = []

    @contextmanager
    def watch() -> Iterator[None]:
        held.append("start")
        yield
        held.append(f"end after {len(rounds)} rounds handed on")

    def sink(result: RoundResult) -> None:
        held.append("handed on")
        rounds.append(result)

    runner = RoundRunner(source="node-1", sink=sink, watch=watch)
    follow_config(runner, settings)
    await runner.run_round("db")
    assert held == ["start", "end after 0 rounds handed on", "handed on"]
    tcp = rounds[0].step(Step.TCP_CONNECT)
    assert tcp is not None and tcp.status is Status.OK
