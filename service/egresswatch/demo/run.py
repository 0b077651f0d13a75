"""`egresswatch demo`: start the endpoints, run the service against them, break and repair.

Contract:

- Nothing leaves 127.0.0.1: the service gets the demo's own resolv.conf and upstream resolver
  (`dns.upstream: 127.0.0.1#PORT`), the demo CA, and `proxy_from_environment: false`.
- The files (resolv.conf, ca.pem, egresswatch.yaml, egresswatch.db) go to a new temporary
  directory (under $TMPDIR) that is kept afterwards, so the config and the database can be
  looked at; its path is printed at the start and in the summary.
- The headlines are the service's own incidents (its `on_incident` hook): opened with their
  first failing step, suspect, evidence and next command, updated, closed. The per-round lines
  (its `on_round` hook) show the first round and the checklist of the first failed round.
- It ends by itself after `duration_s` (default: the whole cycle, see `scenario`), or on
  SIGINT/SIGTERM: the demo waits (briefly) for the service to write its changes and incidents,
  stops it (its writer flushes the rounds), then the endpoints.
- Exit status: 0 when every fault opened exactly one incident, at the expected first failing
  step, that closed after the repair (also when a signal came after that); 1 when something
  was not as expected; 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM) when a signal
  stopped it before the cycle was seen; 2 when it cannot start (bad options, `--listen`
  address busy).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import prometheus_client

from egresswatch.addresses import parse_listen
from egresswatch.controller.detection.incidents import IncidentEvent, IncidentEventKind
from egresswatch.controller.detection.pipeline import Pipeline
from egresswatch.demo.dns import HOST
from egresswatch.demo.endpoints import ZONE, DemoEndpoints
from egresswatch.demo.files import CONTROL_TARGET, SHOP_TARGET, write_files
from egresswatch.demo.printer import Printer, seconds
from egresswatch.demo.scenario import BROKEN_STATUS, Fault, FaultKind, Timeline, timeline
from egresswatch.demo.watch import Scoreboard, View, new_notes, with_round
from egresswatch.model import Endpoint, RoundResult
from egresswatch.settings import load_settings
from egresswatch.wiring import CONTROLLER_TICK_S, Service, StartupError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
HEARTBEAT_ROUNDS = 6  # with nothing else to say for this many intervals, say it is still on
# How long the end waits for the service to write what detection produced: it does so once a
# controller tick, and `Service.stop` does not, yet the summary points at the database.
WRITE_WAIT_S = 3 * CONTROLLER_TICK_S
WRITE_POLL_S = 0.05
# The pipeline's log events for incident events ("incident opened"...), see _not_incident_events.
INCIDENT_LOG_EVENTS = frozenset(f"incident {kind.value}" for kind in IncidentEventKind)


@dataclass(frozen=True)
class DemoOptions:
    """The command's options; `duration_s` None means "until the whole cycle was seen"."""

    duration_s: float | None = None
    listen: str = "127.0.0.1:9108"
    break_after_s: float = 60.0
    interval_s: float = 5.0

    def problem(self) -> str | None:
        """What is wrong with the options, for a person, or None."""
        if self.duration_s is not None and not self.duration_s > 0:
            return "--duration must be more than 0 seconds"
        if not self.break_after_s >= 0:
            return "--break-after must be 0 seconds or more"
        if not 1.0 <= self.interval_s <= 3600:
            return "--interval must be between 1 and 3600 seconds"
        try:
            parse_listen(self.listen)
        except ValueError as exc:
            return f"--listen: {exc}"
        return None


def run_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """Run the demo to its end; the exit status of the module docstring."""
    problem = options.problem()
    if problem is not None:
        print(f"egresswatch demo: {problem}", file=sys.stderr)
        return EXIT_USAGE
    # The *_created series double what a scrape carries and say nothing a newcomer needs.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        return asyncio.run(_Demo(options, out or sys.stdout).main())
    except KeyboardInterrupt:  # Ctrl-C in the instant before our handler was in place
        print("egresswatch demo: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def listen_problem(listen: str) -> str | None:
    """Why the API cannot listen on `listen` (checked before anything starts), or None."""
    host, port = parse_listen(listen)
    if port == 0:
        return None
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (
                f"{listen} is already in use (another egresswatch?). Choose another address "
                f"for the API and /metrics, e.g. --listen {host}:{port + 1}, or --listen "
                f"{host}:0 for any free port."
            )
        return f"cannot listen on {listen}: {exc.strerror or exc}"
    return None


class _Demo:
    def __init__(self, options: DemoOptions, out: TextIO) -> None:
        self._options = options
        self._timeline: Timeline = timeline(
            break_after_s=options.break_after_s, interval_s=options.interval_s
        )
        self._printer = Printer(out)
        self._board = Scoreboard(self._timeline.faults)
        # Seeded in config order, so summaries list the targets in that order.
        self._views: dict[str, View] = {SHOP_TARGET: View(), CONTROL_TARGET: View()}
        self._endpoints: dict[str, Endpoint] = {}
        self._api = f"http://{options.listen}"  # the real port once the service listens
        self._stop = asyncio.Event()
        self._signal: int | None = None

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        with contextlib.ExitStack() as handlers:
            # The demo prints every incident event itself; the service's warning about each
            # would say it twice, in another format, on the same terminal. Asked for more
            # (--log-level info or debug), the log stays whole.
            pipeline_log = logging.getLogger(Pipeline.__module__)
            if not pipeline_log.isEnabledFor(logging.INFO):
                pipeline_log.addFilter(_not_incident_events)
                handlers.callback(pipeline_log.removeFilter, _not_incident_events)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
                handlers.callback(loop.remove_signal_handler, sig)
            code = await self._run()
        if code != EXIT_OK:
            return code
        if self._board.complete:
            return EXIT_OK
        return 128 + self._signal if self._signal is not None else EXIT_FAILED

    def _on_signal(self, sig: int) -> None:
        if self._signal is None:
            self._signal = sig
            self._printer.line(f"{self._cut_short()}: stopping")
        self._stop.set()

    async def _run(self) -> int:
        """Start, watch until the end, stop; EXIT_USAGE if it cannot start, else EXIT_OK."""
        problem = listen_problem(self._options.listen)
        if problem is not None:
            print(f"egresswatch demo: {problem}", file=sys.stderr)
            return EXIT_USAGE
        self._printer.plain(
            "egresswatch demo: egresswatch watching its own endpoints on loopback "
            "(nothing leaves 127.0.0.1).",
            "It breaks one endpoint on purpose, repairs it, and shows what egresswatch sees. "
            "Ctrl-C stops it.",
            "",
        )
        directory = Path(tempfile.mkdtemp(prefix="egresswatch-demo-"))
        endpoints = await DemoEndpoints.start()
        try:
            config = write_files(
                directory,
                endpoints,
                listen=self._options.listen,
                interval_s=self._options.interval_s,
            )
            settings = load_settings(config)  # the file as written is what runs
            self._endpoints = {t.name: t.endpoint for t in settings.targets}
            self._show_files(directory, config, endpoints)
            service = Service(
                settings,
                migrate=True,
                on_round=self._on_round,
                on_incident=self._on_incident,
                watch_config=False,
            )
            try:
                await service.start()
                self._show_service(service, config)
                await self._watch(endpoints)
                await self._written(service.pipeline)
            except StartupError as exc:
                print(f"egresswatch demo: {_startup_problem(exc)}", file=sys.stderr)
                return EXIT_USAGE
            finally:
                await service.stop()  # the writer flushes every round it holds
        finally:
            await endpoints.stop()
        self._printer.line("stopped: egresswatch (its results are written), then the endpoints")
        self._printer.summary(
            self._board,
            self._views,
            api=self._api,
            database=str(directory / "egresswatch.db"),
            directory=str(directory),
            cut_short=self._cut_short(),
        )
        return EXIT_OK

    def _cut_short(self) -> str | None:
        """What ended the demo before the whole cycle, if anything did."""
        if self._signal is not None:
            return "Ctrl-C" if self._signal == signal.SIGINT else signal.Signals(self._signal).name
        if self._duration_s < self._timeline.end_s:
            return "--duration"
        return None

    @property
    def _duration_s(self) -> float:
        return self._options.duration_s or self._timeline.end_s

    async def _watch(self, endpoints: DemoEndpoints) -> None:
        """Run the timeline until the duration is up or a signal came."""
        duration = self._duration_s
        self._printer.plan(self._timeline, datetime.now(UTC), duration)
        scenario = asyncio.create_task(self._scenario(endpoints), name="egresswatch-demo:scenario")
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), duration)
        finally:
            scenario.cancel()
            await asyncio.gather(scenario, return_exceptions=True)
        if self._signal is None:
            self._printer.line(f"the demo's time is up ({seconds(duration)}): stopping")

    async def _scenario(self, endpoints: DemoEndpoints) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for at_s, fault, breaking in self._timeline.actions():
            await asyncio.sleep(max(0.0, start + at_s - loop.time()))
            now = datetime.now(UTC)
            if breaking:
                _inject(endpoints, fault)
                self._board.injected(fault, now)
                self._printer.injected(fault, endpoints.shop.url, self._timeline.interval_s)
            else:
                _repair(endpoints, fault)
                self._board.repaired(fault, now)
                self._printer.repaired(fault, endpoints.shop.url, HOST)

    async def _written(self, pipeline: Pipeline) -> None:
        """Give the service's controller tick the time to write its changes and incidents."""
        # Polled: the pipeline has no event to wait on, and this runs once, at the end.
        for _ in range(round(WRITE_WAIT_S / WRITE_POLL_S)):
            if not pipeline.pending:
                return
            await asyncio.sleep(WRITE_POLL_S)
        if pipeline.pending:
            self._printer.line(
                f"{pipeline.pending} changes or incidents not written yet: the database misses them"
            )

    def _on_round(self, result: RoundResult) -> None:
        """Every round the service runs passes here (the service's `on_round` hook)."""
        seen = with_round(self._views, result)
        if seen is not None:
            endpoint = self._endpoints[result.target]
            self._printer.seen(
                seen,
                endpoint,
                details=result.target == SHOP_TARGET,
                incident_open=result.target in self._board.open_targets(),
            )
            return
        quiet_s = (datetime.now(UTC) - self._printer.last_line_at).total_seconds()
        if quiet_s >= HEARTBEAT_ROUNDS * self._timeline.interval_s:
            self._printer.heartbeat(self._views, self._board.open_targets())

    def _on_incident(self, event: IncidentEvent) -> None:
        """The service's `on_incident` hook. It is called while the service judges a round,
        before that round reaches `_on_round`: printed on the next turn of the loop, the
        incident comes after the round that caused it, and counts it among the failed ones."""
        asyncio.get_running_loop().call_soon(self._incident, event, datetime.now(UTC))

    def _incident(self, event: IncidentEvent, at: datetime) -> None:
        incident = event.incident
        before = self._board.latest(incident.id)
        self._board.incident(event, at)
        notes = new_notes(before, incident)
        if event.kind is IncidentEventKind.OPENED:
            view = self._views.get(incident.target, View())
            self._printer.opened(incident, view.failed_rounds, self._api)
            return
        if notes:  # none: only the evidence's wording changed, nothing a person needs
            self._printer.updated(before, incident, notes)
        if event.kind is IncidentEventKind.CLOSED:
            self._printer.closed(incident)

    def _show_files(self, directory: Path, config: Path, endpoints: DemoEndpoints) -> None:
        dns, shop, control = endpoints.dns, endpoints.shop, endpoints.control
        self._printer.line(
            f"endpoints started on {HOST}:",
            f"dns      {HOST}#{dns.port} (UDP and TCP), answers for {ZONE}",
            f"shop     {shop.url}  (role endpoint: this one will break)",
            f"control  {control.url}  (role control: stays fine)",
        )
        self._printer.line(
            f"files in {directory} (kept afterwards):",
            f"config    {config}  <- the config egresswatch runs with",
            f"resolv    {directory / 'resolv.conf'}  (dns_cluster resolves through it)",
            f"ca        {directory / 'ca.pem'}  (the demo CA, made just now)",
            f"database  {directory / 'egresswatch.db'}",
        )

    def _show_service(self, service: Service, config: Path) -> None:
        host, port = service.listening or parse_listen(self._options.listen)
        base = self._api = f"http://{host}:{port}"
        detection = service.settings.detection
        self._printer.line(
            f"egresswatch running: every {seconds(self._options.interval_s)} a round of the "
            "checklist per target",
            f"an incident opens after {detection.fail_after} failed rounds in a row, closes "
            f"after {detection.recover_after} good ones",
            f"incidents  curl -s {base}/api/v1/incidents",
            f"metrics    curl -s {base}/metrics | grep -E 'step_up|first_failing|incidents_open'",
            f"health     {base}/healthz",
            f"by hand    egresswatch check {SHOP_TARGET} --config {config}",
        )


def _not_incident_events(record: logging.LogRecord) -> bool:
    return record.getMessage() not in INCIDENT_LOG_EVENTS


def _inject(endpoints: DemoEndpoints, fault: Fault) -> None:
    if fault.kind is FaultKind.DNS:
        endpoints.break_dns()
    else:
        endpoints.break_http(BROKEN_STATUS)


def _repair(endpoints: DemoEndpoints, fault: Fault) -> None:
    if fault.kind is FaultKind.DNS:
        endpoints.repair_dns()
    else:
        endpoints.repair_http()


def _startup_problem(exc: StartupError) -> str:
    text = str(exc)
    if "cannot listen" in text:
        return f"{text}. Choose another address with --listen HOST:PORT (port 0: any free one)."
    return text
