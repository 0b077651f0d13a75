"""The demo's output: one timestamped line per thing that happens, then a summary.

Times are the local wall clock (HH:MM:SS), as a person compares them with their own clock.
Every line is flushed at once, so the output can be piped (`| tee`) and still arrive live.
The incidents are the headlines (`INCIDENT OPENED`, `INCIDENT UPDATED`, `INCIDENT CLOSED`);
the per-round lines say what a single round showed, before the hysteresis had its say.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import TextIO
from urllib.parse import quote

from egresswatch.controller.detection.incidents import Incident
from egresswatch.demo.endpoints import status_text
from egresswatch.demo.scenario import (
    BROKEN_STATUS,
    FAIL_AFTER,
    RECOVER_AFTER,
    Fault,
    FaultKind,
    Timeline,
)
from egresswatch.demo.watch import FaultRecord, IncidentSeen, Scoreboard, Seen, SeenKind, View
from egresswatch.evidence import TcpEvidence
from egresswatch.model import Endpoint, RoundResult, Status, Step, evidence_of
from egresswatch.report import render_text, round_document

INDENT = " " * 10  # continuation lines start under the text, past the timestamp
# The columns the summary shows, in the order of the API's incident documents.
INCIDENT_COLUMNS = "id, first_failing_step, suspect, started_at, detected_at, ended_at"
RECOVERED_NOTE = "closed: all sources recovered"  # the incident book's note for a recovery


def clock(at: datetime) -> str:
    return at.astimezone().strftime("%H:%M:%S")


def seconds(value: float) -> str:
    """`35 s`, `5 s`, `0.4 s`: tenths only where whole seconds would read as nothing."""
    tenths = round(max(value, 0.0), 1)
    return f"{tenths:.1f} s" if tenths < 10 and tenths != round(tenths) else f"{tenths:.0f} s"


def ordinal(n: int) -> str:
    """`1st`, `2nd`, `3rd`, `4th`, `11th`, `22nd`."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def incident_url(api: str, incident_id: str) -> str:
    """The API's URL of one incident; `api` is the service's base URL."""
    return f"{api}/api/v1/incidents/{quote(incident_id, safe='@')}"


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
            f"an incident should open at {f.expect_step}, and close after the repair"
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
            f"on {fault.target}'s next round, within {seconds(interval_s)}, and open an "
            f"incident at the {ordinal(FAIL_AFTER)} failed round in a row",
        )

    def repaired(self, fault: Fault, endpoint_url: str, address: str) -> None:
        what = {
            FaultKind.DNS: f"{Endpoint.parse(endpoint_url).host} answers {address} again",
            FaultKind.HTTP: f"{endpoint_url} answers 200 OK again",
        }[fault.kind]
        self.line(
            f"repairing: {what}",
            f"the incident should close at the {ordinal(RECOVER_AFTER)} good round in a row",
        )

    def seen(self, seen: Seen, endpoint: Endpoint, *, details: bool, incident_open: bool) -> None:
        """What one round showed flip; with `details`, the round's checklist under it."""
        target = seen.result.target
        since = clock(seen.since) if seen.since is not None else "?"
        step = f"{seen.step} ({seen.reason})" if seen.reason else str(seen.step)
        match seen.kind:
            case SeenKind.FIRST if seen.step is None:
                text = f"{target}: first round, all steps ok"
            case SeenKind.FIRST:
                text = f"{target}: first round, the checklist fails at {step}"
            case SeenKind.FAILING:
                text = f"{target}: a round fails at {step}; {FAIL_AFTER} in a row open an incident"
            case SeenKind.MOVED:
                text = f"{target}: the round now fails at {step} (failing since {since})"
            case _:
                failed = seconds(seen.failed_for_s or 0.0)
                text = f"{target}: a round with all steps ok again, after {failed}"
                if incident_open:
                    text += f"; {RECOVER_AFTER} in a row close the incident"
        # The whole checklist when it starts failing, and once at the start to show the steps.
        shown = details and (seen.step is not None or seen.kind is SeenKind.FIRST)
        more = [*_checklist(seen.result, endpoint), *_notes(seen.result)] if shown else []
        self.line(text, *more)

    def opened(self, incident: Incident, failed_rounds: int, api: str) -> None:
        after = f" after {failed_rounds} failed rounds" if failed_rounds else ""
        self.line(
            f"INCIDENT OPENED {incident.target}: first failing step "
            f"{incident.first_failing_step}, suspect {incident.suspect}",
            f"started {clock(incident.started_at)} (its first failed round), "
            f"detected {clock(incident.detected_at)}{after}",
            *_diagnosis(incident),
            f"id {incident.id}",
            f"   curl -s {incident_url(api, incident.id)}",
        )

    def updated(self, before: Incident | None, incident: Incident, notes: list[str]) -> None:
        """Only what the incident's history records as changed; with a new suspect, what the
        diagnosis says now."""
        suspect_changed = before is None or before.suspect is not incident.suspect
        self.line(
            f"INCIDENT UPDATED {incident.target}: {'; '.join(notes)}",
            *(_diagnosis(incident) if suspect_changed else []),
        )

    def closed(self, incident: Incident) -> None:
        ended = incident.ended_at or incident.started_at
        lasted = seconds((ended - incident.started_at).total_seconds())
        note = incident.history[-1].note if incident.history else ""
        recovered = note == RECOVERED_NOTE  # else a retirement, say, which the note explains
        self.line(
            f"INCIDENT CLOSED {incident.target} after {lasted} "
            f"(ended {clock(ended)}{', its first good round' if recovered else ''})",
            *([note] if note and not recovered else []),
        )

    def heartbeat(self, views: Mapping[str, View], open_targets: Collection[str]) -> None:
        parts = []
        for name, view in views.items():
            if view.step is not None and view.since is not None:
                part = f"{name} failing at {view.step} since {clock(view.since)}"
            else:
                part = f"{name} ok"
            parts.append(part + (", incident open" if name in open_targets else ""))
        counts = sorted({view.rounds for view in views.values()})
        rounds = (
            f"{counts[0]} rounds each"
            if len(counts) == 1
            else "rounds: " + ", ".join(f"{name} {view.rounds}" for name, view in views.items())
        )
        self.line(f"still watching: {'; '.join(parts)} ({rounds})")

    def summary(
        self,
        board: Scoreboard,
        views: Mapping[str, View],
        *,
        api: str,
        database: str,
        directory: str,
        cut_short: str | None = None,
    ) -> None:
        """The summary; `cut_short` says what ended the demo before the cycle was over."""
        rounds = ", ".join(f"{name} {view.rounds}" for name, view in views.items()) or "none"
        lines = ["", "summary", f"  rounds seen: {rounds}"]
        for record in board.records:
            lines += _fault_lines(record, cut_short)
        lines += [f"  unexpected: {text}" for text in board.unexpected]
        if board.complete:
            lines.append(
                "  egresswatch opened one incident per fault, at the expected first failing "
                "step, and closed it after the repair."
            )
        elif cut_short and not board.wrong:
            lines.append(f"  {cut_short} ended the demo before the whole cycle was seen.")
        else:
            lines.append("  egresswatch did not open and close the incidents as expected.")
        lines += [
            f"  incidents: the API served them while the demo ran: curl -s {api}/api/v1/incidents",
            "  the database keeps them:",
            f"    sqlite3 {database} 'select {INCIDENT_COLUMNS} from incidents'",
            f"  database: {database} (SQLite; tables rounds, step_results, changes, incidents)",
            f"  files kept in {directory}; remove them with: rm -r {directory}",
        ]
        self.plain(*lines)


def _at(start: float, offset_s: float) -> datetime:
    return datetime.fromtimestamp(start + offset_s, UTC)


def _diagnosis(incident: Incident) -> list[str]:
    """The diagnosis' evidence and the command it suggests, as the API has them."""
    lines = [f"evidence: {line}" for line in incident.evidence]
    if incident.next_command:
        lines.append(f"next: {incident.next_command}")
    return lines


def _checklist(result: RoundResult, endpoint: Endpoint) -> list[str]:
    """The round's steps as `egresswatch check` prints them, without its header and verdict."""
    lines = render_text(round_document(result, endpoint)).splitlines()[1:]
    return [line for line in lines if line.startswith(" ")]


def _notes(result: RoundResult) -> list[str]:
    """What a newcomer might miss in the checklist above."""
    tcp = result.step(Step.TCP_CONNECT)
    connected = evidence_of(tcp, TcpEvidence)
    if (
        tcp is not None
        and tcp.status is Status.OK
        and connected is not None
        and connected.ip_source in ("last_good", "pinned")
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
    repaired = (
        f", repaired {clock(record.repaired_at)}"
        if record.repaired_at is not None
        else " (not repaired: the demo ended first)"
    )
    yield f"    injected {clock(record.injected_at)}{repaired}"
    if not record.incidents:
        yield f"    no incident opened (expected one at {fault.expect_step})"
    if len(record.incidents) > 1:
        yield f"    {len(record.incidents)} incidents opened, expected one:"
    for seen in record.incidents:
        yield from _incident_lines(seen, record)


def _incident_lines(seen: IncidentSeen, record: FaultRecord) -> Iterable[str]:
    opened, latest, fault = seen.opened, seen.latest, record.fault
    wrong = "" if seen.step is fault.expect_step else f" (expected {fault.expect_step})"
    yield f"    incident {seen.id}"
    yield (
        f"      first failing step {opened.first_failing_step}{wrong}, "
        f"suspect {opened.suspect} (as it opened)"
    )
    if (latest.first_failing_step, latest.suspect) != (opened.first_failing_step, opened.suspect):
        # The API and the database hold the last values: say them too, so they match.
        when = "as it closed" if latest.ended_at is not None else "at the end"
        yield (
            f"      {when}: first failing step {latest.first_failing_step}, "
            f"suspect {latest.suspect}"
        )
    times = f"started {clock(latest.started_at)}, detected {clock(latest.detected_at)}"
    if latest.ended_at is None:
        yield f"      {times}, still open when the demo ended"
        return
    lasted = seconds((latest.ended_at - latest.started_at).total_seconds())
    yield f"      {times}, ended {clock(latest.ended_at)} ({lasted})"
    if seen.closed_seen_at is not None and (
        record.repaired_at is None or seen.closed_seen_at < record.repaired_at
    ):
        yield "      closed before the repair (unexpected)"
