"""What one benchmark measured, and how it is shown: medians with their spread (pure).

Each (round kind, rate) is measured N times; each time is a :class:`Run`, an egresswatch
window and the blackbox_exporter window right after it. The table shows, for every number,
the median of the N runs and, when they differ, the spread ``(min-max)``. The ratio is the
median of the N runs' own ratios (each egresswatch window over the blackbox window that
followed it), so a load that changed between runs moves both sides of one ratio alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

HEADER = (
    "| round kind | rate/s | runs | egresswatch CPU-ms/round | blackbox CPU-ms/round | ratio"
    " | egresswatch RSS MiB | blackbox RSS MiB | egresswatch rounds | shed | failed steps"
    " | lateness ms (mean) | blackbox probes | blackbox failed |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


@dataclass(frozen=True)
class Sample:
    """One process's cost over one measured window.

    `rounds` is what it did in the window: rounds egresswatch ran (started, not shed), probes
    blackbox_exporter answered. `failed` is egresswatch's steps with status `fail`, or
    blackbox_exporter's probes that failed or got no answer; `shed` and `lateness_ms` (the mean
    scheduler lateness) are egresswatch's only.
    """

    rounds: int
    cpu_s: float
    rss_mib: float
    failed: int = 0
    shed: int = 0
    lateness_ms: float = 0.0

    @property
    def cpu_ms_per_round(self) -> float:
        return self.cpu_s * 1000 / max(self.rounds, 1)

    def document(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "cpu_s": round(self.cpu_s, 4),
            "cpu_ms_per_round": round(self.cpu_ms_per_round, 4),
            "rss_mib": round(self.rss_mib, 1),
            "failed": self.failed,
            "shed": self.shed,
            "lateness_ms": round(self.lateness_ms, 2),
        }


@dataclass(frozen=True)
class Run:
    """One egresswatch window and the blackbox_exporter window measured right after it."""

    ours: Sample
    theirs: Sample

    @property
    def ratio(self) -> float:
        """egresswatch's CPU per round over blackbox_exporter's (under 1: ours is cheaper)."""
        return self.ours.cpu_ms_per_round / max(self.theirs.cpu_ms_per_round, 1e-9)


@dataclass(frozen=True)
class Spread:
    """The median of some values and their range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("Spread.of: no values")
        return cls(statistics.median(values), min(values), max(values))

    def text(self, digits: int) -> str:
        """``median`` alone when every value was the same, else ``median (min-max)``."""
        median = f"{self.median:.{digits}f}"
        low, high = f"{self.low:.{digits}f}", f"{self.high:.{digits}f}"
        return median if low == high else f"{median} ({low}-{high})"

    def document(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high}


# The table's columns after kind, rate and runs: (JSON name, read from a run, digits shown).
COLUMNS: tuple[tuple[str, Callable[[Run], float], int], ...] = (
    ("egresswatch_cpu_ms_per_round", lambda r: r.ours.cpu_ms_per_round, 2),
    ("blackbox_cpu_ms_per_round", lambda r: r.theirs.cpu_ms_per_round, 2),
    ("ratio", lambda r: r.ratio, 2),
    ("egresswatch_rss_mib", lambda r: r.ours.rss_mib, 0),
    ("blackbox_rss_mib", lambda r: r.theirs.rss_mib, 0),
    ("egresswatch_rounds", lambda r: r.ours.rounds, 0),
    ("egresswatch_rounds_shed", lambda r: r.ours.shed, 0),
    ("egresswatch_failed_steps", lambda r: r.ours.failed, 0),
    ("egresswatch_lateness_ms", lambda r: r.ours.lateness_ms, 1),
    ("blackbox_probes", lambda r: r.theirs.rounds, 0),
    ("blackbox_failed", lambda r: r.theirs.failed, 0),
)


@dataclass(frozen=True)
class Row:
    """Every run of one (round kind, rate)."""

    kind: str
    rate: int
    runs: tuple[Run, ...]

    def spreads(self) -> dict[str, Spread]:
        """Each column's median and range over the runs, by its JSON name."""
        return {name: Spread.of([read(run) for run in self.runs]) for name, read, _ in COLUMNS}

    def line(self) -> str:
        """The row of the Markdown table under :data:`HEADER`."""
        spreads = self.spreads()
        cells = [self.kind, str(self.rate), str(len(self.runs))]
        cells += [spreads[name].text(digits) for name, _, digits in COLUMNS]
        return "| " + " | ".join(cells) + " |"

    def document(self) -> dict[str, Any]:
        """The row as JSON: the medians and ranges, and every run's own numbers."""
        return {
            "kind": self.kind,
            "rate": self.rate,
            **{name: spread.document() for name, spread in self.spreads().items()},
            "runs": [
                {"egresswatch": r.ours.document(), "blackbox": r.theirs.document()}
                for r in self.runs
            ],
        }


def load_text(load: Sequence[float]) -> str:
    """A load average as `uptime` prints it: 1, 5 and 15 minutes."""
    return ", ".join(f"{value:.2f}" for value in load)
