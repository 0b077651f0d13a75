"""The agent's buffer flags: `--buffer-mib`, `--spill-file`/`--spill-dir`, `--spill-mib`,
`--batch-interval`.

:func:`add_buffer_flags` puts them on the `egresswatch agent` parser; :func:`buffer_options`
reads them into AgentOptions fields, raising UsageError (naming the flag) for a bad value or a
spill file this agent cannot use (not a spill file, another source's, unreadable).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from egresswatch.agent.identity import SourceIdentity, UsageError
from egresswatch.agent.sink_types import DEFAULT_BUFFER_MIB, MIB, MIN_BUFFER_BYTES, SinkTuning
from egresswatch.agent.spill import DEFAULT_SPILL_MIB, SpillError, SpillFile

__all__ = ["add_buffer_flags", "buffer_options", "spill_file_name"]

_MIN_SPILL_BYTES = 64 * 1024
_MAX_BATCH_INTERVAL_S = 300.0  # past that the controller would judge rounds minutes late


def add_buffer_flags(agent: argparse.ArgumentParser) -> None:
    agent.add_argument(
        "--buffer-mib",
        type=float,
        default=DEFAULT_BUFFER_MIB,
        metavar="MIB",
        help="memory for rounds the controller has not taken yet, in MiB (default "
        f"{DEFAULT_BUFFER_MIB}: fits a pod limited to 128 MiB); past it the oldest go to the "
        "spill file, or without one are dropped",
    )
    where = agent.add_mutually_exclusive_group()
    where.add_argument(
        "--spill-file",
        type=Path,
        metavar="PATH",
        help="keep undelivered rounds in this file (an emptyDir in a cluster): they survive a "
        "restart and are sent first, in order, once",
    )
    where.add_argument(
        "--spill-dir",
        type=Path,
        metavar="DIR",
        help="as --spill-file, the file named after this source in DIR",
    )
    agent.add_argument(
        "--spill-mib",
        type=float,
        default=DEFAULT_SPILL_MIB,
        metavar="MIB",
        help=f"bound of the spill file in MiB (default {DEFAULT_SPILL_MIB}); past it the "
        "oldest rounds in it are dropped, counted",
    )
    default_s = SinkTuning().batch_interval_s
    agent.add_argument(
        "--batch-interval",
        type=float,
        default=default_s,
        metavar="SECONDS",
        help=f"how long a round waits for others to join its batch (default {default_s:g}; a "
        "whole batch goes at once): longer costs less CPU, shorter shows rounds sooner",
    )


def spill_file_name(source: str) -> str:
    """The spill file's name in --spill-dir for `source` (a pod source holds a slash)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", source) + ".spill"


def buffer_options(args: argparse.Namespace, identity: SourceIdentity) -> dict[str, Any]:
    """AgentOptions fields from the flags; UsageError names the flag that is wrong. The spill
    file is opened and closed again, so that a file of another source is refused here."""
    buffer_bytes = _mib(args.buffer_mib, "--buffer-mib", MIN_BUFFER_BYTES)
    spill_bytes = _mib(args.spill_mib, "--spill-mib", _MIN_SPILL_BYTES)
    path: Path | None = args.spill_file
    flag = "--spill-file"
    if args.spill_dir is not None:
        flag = "--spill-dir"
        if not args.spill_dir.is_dir():
            raise UsageError(f"--spill-dir: {args.spill_dir} is not a directory")
        path = args.spill_dir / spill_file_name(identity.name)
    interval_s = args.batch_interval
    if not 0 < interval_s <= _MAX_BATCH_INTERVAL_S:
        raise UsageError(
            f"--batch-interval: {interval_s:g} is out of range: more than 0, at most "
            f"{_MAX_BATCH_INTERVAL_S:g} seconds"
        )
    tuning = SinkTuning(buffer_max_bytes=buffer_bytes, batch_interval_s=interval_s)
    fields: dict[str, Any] = {
        "sink": tuning,
        "spill_file": path,
        "spill_max_bytes": spill_bytes,
    }
    if path is not None:
        spill = SpillFile(
            path,
            source=identity.name,
            source_kind=identity.kind.value,
            max_bytes=spill_bytes,
            flag=flag,
        )
        try:
            spill.open()
        except SpillError as exc:
            raise UsageError(str(exc)) from None
        spill.close()
    return fields


def _mib(value: float, flag: str, least_bytes: int) -> int:
    bytes_ = int(value * MIB)
    if bytes_ < least_bytes:
        raise UsageError(f"{flag}: {value} is too small: at least {least_bytes / MIB:g} MiB")
    return bytes_
