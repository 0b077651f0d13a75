"""The demo's output: one timestamped line per thing that happens, then a summary.

Times are the local wall clock (HH:MM:SS), as a person compares them with their own clock.
Every line is flushed at once, so the output can be piped (`| tee`) and still arrive live.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TextIO

from egresswatch.demo.endpoints import status_text
from egresswatch.demo.scenario import BROKEN_STATUS, Fault, FaultKind, Timeline
from egresswatch.demo.watch import FaultRecord, Scoreboard, Seen, SeenKind, View
from egresswatch.model import Endpoint, RoundResult, Status, Step
from egresswatch.report import render_text, round_document

INDENT = " " * 10  # continuation lines start under the text, past the timestamp


def clock(at: datetime) -> str:
    return at.astimezone().strftime("%H:%M:%S")


def seconds(value: float) -> str:
    """`35 s`, `5 s`, `0.4 s`: tenths only where whole seconds would read as nothing."""
    tenths = round(max(value, 0.0), 1)
    return f"{tenths:.1f} s" if tenths < 10 and tenths != round(tenths) else f"{tenths:.0f} s"


class Printer:
    """Writes the demo's lines to `out`; `now` is the wall clock (injected for tests)."""

    def __init__(
        self, out: TextIO, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._out = out
        self._now = now
        self.last_line_at = now()

    def line(self, text: str, *more: str) -> None:
        """`HH:MM:SS  text`, then each of `more` indented beneath it."""
        self.last_line_at = self._now()
        lines = [f"{clock(self.last_line_at)}  {text}", *(INDENT + m for m in more)]
        self.plain(*lines)

    def plain(self, *lines: str) -> None:
        print("\n".join(lines), file=self._out, flush=True)

    def plan(self, timeline: Timeline, started: datetime, end_s: float) -> None:
        at = started.timestamp()
        steps = [
            f"{clock(_at(at, f.break_at_s))}  {f.title} until {clock(_at(at, f.repair_at_s))}: "
            f"egresswatch should see {f.expect_step} fail"
            for f in timeline.faults
        ]
        ending = f"{clock(_at(at, end_s))}  the demo ends (Ctrl-C stops it sooner)"
        if end_s < timeline.end_s:
            ending += f"; --duration ends it before the whole cycle ({seconds(timeline.end_s)})"
        self.line("the plan:", *steps, ending)

    def injected(self, fault: Fault, endpoint_url: str, interval_s: float) -> None:
        what = {
            FaultKind.DNS: f"{Endpoint.parse(endpoint_url).host} now answers NXDOMAIN",
            FaultKind.HTTP: f"{endpoint_url} now answers {status_text(BROKEN_STATUS)}",
        }[fault.kind]
        self.line(
            f"breaking: {what}",
            f"egresswatch should see {fault.expect_step} fail ({fault.expect_reason}) "
            f"on {fault.target}'s next round, within {seconds(interval_s)}",
        )

    def repaired(self, fault: Fault, endpoint_url: str, address: str) -> None:
        what = {
            FaultKind.DNS: f"{Endpoint.parse(endpoint_url).host} answers {address} again",
            FaultKind.HTTP: f"{endpoint_url} answers 200 OK again",
        }[fault.kind]
        self.line(f"repairing: {what}")

    def seen(self, seen: Seen, endpoint: Endpoint, *, details: bool) -> None:
        """What egresswatch saw flip; with `details`, the round's checklist under it."""
        target = seen.result.target
        since = clock(seen.since) if seen.since is not None else "?"
        step = f"{seen.step} ({seen.reason})" if seen.reason else str(seen.step)
        match seen.kind:
            case SeenKind.FIRST if seen.step is None:
                text = f"{target}: first round, all steps ok"
            case SeenKind.FIRST:
                text = f"{target}: first round, the checklist fails at {step}"
            case SeenKind.FAILING:
                text = f"{target}: checklist fails at {step} since {since} (first failed round)"
            case SeenKind.MOVED:
                text = f"{target}: checklist now fails at {step} (failing since {since})"
            case _:
                text = f"{target}: all steps ok again, after {seconds(seen.failed_for_s or 0.0)}"
        # The whole checklist when it starts failing, and once at the start to show the steps.
        shown = details and (seen.step is not None or seen.kind is SeenKind.FIRST)
        more = [*_checklist(seen.result, endpoint), *_notes(seen.result)] if shown else []
        self.line(text, *more)

    def heartbeat(self, views: Mapping[str, View]) -> None:
        parts = [
            f"{name} failing at {view.step} since {clock(view.since)}"
            if view.step is not None and view.since is not None
            else f"{name} ok"
            for name, view in views.items()
        ]
        counts = sorted({view.rounds for view in views.values()})
        rounds = (
            f"{counts[0]} rounds each"
            if len(counts) == 1
            else "rounds: " + ", ".join(f"{name} {view.rounds}" for name, view in views.items())
        )
        self.line(f"still watching: {', '.join(parts)} ({rounds})")

    def summary(
        self,
        board: Scoreboard,
        views: Mapping[str, View],
        database: str,
        directory: str,
        *,
        cut_short: str | None = None,
    ) -> None:
        """The summary; `cut_short` says what ended the demo before the cycle was over."""
        rounds = ", ".join(f"{name} {view.rounds}" for name, view in views.items()) or "none"
        lines = ["", "summary", f"  rounds seen: {rounds}"]
        for record in board.records:
            lines += _fault_lines(record, cut_short)
        lines += [f"  unexpected: {text}" for text in board.unexpected]
        if board.complete:
            lines.append("  egresswatch saw every break and recovery as expected.")
        elif cut_short and not board.wrong:
            lines.append(f"  {cut_short} ended the demo before the whole cycle was seen.")
        else:
            lines.append("  egresswatch did not see every break and recovery as expected.")
        lines += [
            f"  database: {database} (SQLite; tables rounds and step_results)",
            f"  files kept in {directory}; remove them with: rm -r {directory}",
        ]
        self.plain(*lines)


def _at(start: float, offset_s: float) -> datetime:
    return datetime.fromtimestamp(start + offset_s, UTC)


def _checklist(result: RoundResult, endpoint: Endpoint) -> list[str]:
    """The round's steps as `egresswatch check` prints them, without its header and verdict."""
    lines = render_text(round_document(result, endpoint)).splitlines()[1:]
    return [line for line in lines if line.startswith(" ")]


def _notes(result: RoundResult) -> list[str]:
    """What a newcomer might miss in the checklist above."""
    tcp = result.step(Step.TCP_CONNECT)
    if (
        tcp is not None
        and tcp.status is Status.OK
        and tcp.evidence.get("ip_source") in ("last_good", "pinned")
    ):
        return [
            "note: tcp_connect still reached the IP it knew: the network works, only the name "
            "is broken"
        ]
    return []


def _fault_lines(record: FaultRecord, cut_short: str | None) -> Iterable[str]:
    fault = record.fault
    if record.as_expected:
        verdict = "as expected"
    elif cut_short and not record.wrong:
        verdict = f"not over when {cut_short} ended the demo"
    else:
        verdict = "NOT as expected"
    yield f"  {fault.title}: {verdict}"
    if record.injected_at is None:
        yield "    not injected: the demo ended first"
        return
    yield f"    {clock(record.injected_at)}  injected"
    if record.seen_at is None or record.seen_step is None:
        yield f"              not seen failing (expected {fault.expect_step})"
    else:
        later = seconds((record.seen_at - record.injected_at).total_seconds())
        wrong = "" if record.seen_step is fault.expect_step else f", expected {fault.expect_step}"
        yield (
            f"    {clock(record.seen_at)}  seen failing at {record.seen_step} "
            f"({record.seen_reason}), {later} later{wrong}"
        )
    if record.early_recovery:
        yield "              all steps ok again before the repair (unexpected)"
    if record.repaired_at is None:
        yield "              not repaired: the demo ended first"
        return
    yield f"    {clock(record.repaired_at)}  repaired"
    if record.recovered_at is None:
        yield "              not seen recovered"
    else:
        later = seconds((record.recovered_at - record.repaired_at).total_seconds())
        yield f"    {clock(record.recovered_at)}  all steps ok again, {later} later"
