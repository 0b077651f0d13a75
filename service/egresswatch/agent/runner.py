"""The agent's rounds: one job per target of the plan, each round handed to a sink.

The agent never imports storage or the controller: where a round goes (the local writer in
`egresswatch run`, the controller over HTTP in a cluster) is the sink's business.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from egresswatch.agent.checklists import LocalSettings, checklist_plan
from egresswatch.model import RoundResult, Status, Step
from egresswatch.plan import Plan
from egresswatch.probes.checklist import ChecklistPlan, TraceMode, run_checklist
from egresswatch.probes.overload import Stalls
from egresswatch.probes.tls import TlsContexts
from egresswatch.schedule import RoundJob

log = logging.getLogger(__name__)

Sink = Callable[[RoundResult], None]

# The scheduler's hard cut comes this long after the round's own budget: the round normally
# ends by itself (with its steps recorded), the cut is only for a probe that ignores its budget.
HARD_CUT_GRACE_S = 1.0
SHED_SHARE = 0.5  # of min(interval, timeout): see shed_after


@dataclass(frozen=True)
class _Target:
    plan: ChecklistPlan
    interval_s: float
    timeout_s: float
    trace_every_s: float
    traces_to_confirm: int  # ok traces owed after a failed one: the step's recover_after


class RoundRunner:
    """Turns a plan into round jobs for one source, and runs them.

    `apply()` swaps in a new plan (from the controller, or a config reload): rounds in flight
    finish with the checklist they started with, the next rounds use the new one, and a
    target's run callable stays the same object across plans so the scheduler keeps its phase.
    A config file's targets are applied by agent/config_file.py's `follow_config`.
    """

    def __init__(
        self,
        *,
        source: str,
        sink: Sink,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        stalls: Stalls | None = None,
        watch: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self._source = source
        self._stalls = stalls  # the process's event loop stalls: overload is not a `fail`
        self._watch = watch  # held while a round runs: the stall sampler's fast period
        self._sink = sink
        self._environ = environ
        self._clock = clock
        self._targets: dict[str, _Target] = {}
        self._runs: dict[str, Callable[[], Awaitable[RoundResult | None]]] = {}
        self._known_good: dict[str, str] = {}
        self._last_trace: dict[str, float] = {}
        self._traces_owed: dict[str, int] = {}  # target -> ok traces owed after a failed one
        self._tls = TlsContexts()  # one context per trust, across rounds and plans

    @property
    def source(self) -> str:
        return self._source

    def apply(self, plan: Plan, local: LocalSettings) -> None:
        """Run `plan` from now on; see the class docstring. ValueError: a malformed proxy
        variable in the environment (nothing changed then)."""
        targets: dict[str, _Target] = {}
        for target in plan.targets:
            checklist = checklist_plan(
                plan, target, local, environ=self._environ, tls_contexts=self._tls
            )
            targets[target.name] = _Target(
                plan=_with_budget(checklist, target.timeout_s),
                interval_s=target.interval_s,
                timeout_s=target.timeout_s,
                trace_every_s=target.trace_every_s,
                traces_to_confirm=target.recover_after,
            )
        for gone in set(self._targets) - set(targets):
            self._runs.pop(gone, None)
            self._known_good.pop(gone, None)
            self._last_trace.pop(gone, None)
            self._traces_owed.pop(gone, None)
        for new in set(targets) - set(self._targets):
            # A new runner (an agent that restarted) cannot know whether its last trace
            # failed; the controller may still hold path_trace failing. Confirming costs
            # recover_after traces, and an incident then never waits for trace_every.
            self._traces_owed[new] = targets[new].traces_to_confirm
        self._targets = targets

    def jobs(self) -> list[RoundJob]:
        """One job per target, keyed `source/target`."""
        return [
            RoundJob(
                key=f"{self._source}/{name}",
                interval_s=target.interval_s,
                timeout_s=target.timeout_s + HARD_CUT_GRACE_S,
                run=self._run_callable(name),
                shed_after_s=shed_after(target.interval_s, target.timeout_s),
            )
            for name, target in self._targets.items()
        ]

    def _run_callable(self, name: str) -> Callable[[], Awaitable[RoundResult | None]]:
        if name not in self._runs:

            async def run() -> RoundResult | None:
                return await self.run_round(name)

            self._runs[name] = run
        return self._runs[name]

    def _owe_traces(self, name: str, target: _Target, *, failed: bool) -> None:
        owed = _owed_after(self._traces_owed.get(name), target.traces_to_confirm, failed=failed)
        if owed:
            self._traces_owed[name] = owed
        else:
            self._traces_owed.pop(name, None)

    async def run_round(self, name: str) -> RoundResult | None:
        """Run one round of `name` now and hand it to the sink; None if it left the config."""
        target = self._targets.get(name)
        if target is None:
            return None
        now = self._clock()
        due = now - self._last_trace.get(name, float("-inf")) >= target.trace_every_s
        # After a failed trace, trace every round until as many traces worked as recover a
        # step: else, once the other steps recover, the trace's failure would stand until
        # trace_every, and so would the incident.
        due = due or name in self._traces_owed
        with self._watch():
            result = await run_checklist(
                target.plan,
                source=self._source,
                known_good=self._known_good,
                stalls=self._stalls,
                trace=TraceMode.ALWAYS if due else TraceMode.ON_FAILURE,  # no plan copy a round
            )
        trace = result.step(Step.PATH_TRACE)
        if trace is not None and trace.status is not Status.SKIPPED:
            self._last_trace[name] = now
            self._owe_traces(name, target, failed=trace.status is Status.FAIL)
        try:
            self._sink(result)
        except Exception:  # a sink's bug must not stop the rounds
            log.exception("round sink failed", extra={"target": name})
        return result


def shed_after(interval_s: float, timeout_s: float) -> float:
    """How late a round may start before it is shed (not run, counted): half of the shorter
    of its interval and its timeout. Later than that, the process is saturated: running the
    round late would measure our lateness, and the next one is due soon anyway."""
    return SHED_SHARE * min(interval_s, timeout_s)


def _owed_after(owed: int | None, confirm: int, *, failed: bool) -> int:
    """Ok traces still owed after one more trace (0: back to tracing on schedule)."""
    if failed:
        return confirm
    return max((owed or 0) - 1, 0)


def _with_budget(plan: ChecklistPlan, timeout_s: float) -> ChecklistPlan:
    return replace(plan, round_timeout_s=timeout_s)
