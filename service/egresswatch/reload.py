"""Config reload: the config file read again on SIGHUP, on request, or when it changes on disk.

A valid file replaces the running settings, except the fields a running process cannot change
in place (RESTART_ONLY): those keep their running values, with a warning that names them. An
invalid file is refused: each problem is logged with its field path, and the running settings
stay. Every reload is counted in `egresswatch_config_reloads_total` (`ok` or `rejected`).

The reloader does not know what a new config changes: its owner passes `apply`, which puts the
new settings in place (the scheduler's jobs, the runner's targets, the stored target list).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from egresswatch.metrics import Metrics
from egresswatch.settings import ConfigError, Settings, load_settings

__all__ = ["CONFIG_POLL_S", "RESTART_ONLY", "ConfigReloader", "keep_restart_only"]

log = logging.getLogger(__name__)

RESTART_ONLY = ("listen", "database", "source", "metrics")  # fields a reload cannot change in place
CONFIG_POLL_S = 1.0  # how often the config file is looked at for changes


class ConfigReloader:
    """Reloads one config file (`path`, read with `overrides`, the command line's flags).

    `current` returns the running settings; `apply` is awaited with each accepted new one. With
    no `path` there is nothing to reload: `reload()` answers False.
    """

    def __init__(
        self,
        path: Path | None,
        overrides: Mapping[str, Any],
        *,
        current: Callable[[], Settings],
        apply: Callable[[Settings], Awaitable[None]],
        metrics: Metrics,
        poll_s: float = CONFIG_POLL_S,
    ) -> None:
        self._path = path
        self._overrides = dict(overrides)
        self._current = current
        self._apply = apply
        self._metrics = metrics
        self._poll_s = poll_s
        # One reload at a time: a signal and a file change at once must not interleave.
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._stamp: tuple[int, int] | None = None
        self._pending: set[asyncio.Task[bool]] = set()

    async def reload(self) -> bool:
        """Re-read the file: True when its settings were applied, False if refused (or no file)."""
        if self._path is None:
            return False
        async with self._lock:
            try:
                new = load_settings(self._path, self._overrides)
            except ConfigError as exc:
                self._metrics.count_config_reload("rejected")
                for line in exc.problems:
                    log.error("config reload refused", extra={"problem": line})
                return False
            new = keep_restart_only(self._current(), new)
            await self._apply(new)
            self._metrics.count_config_reload("ok")
            log.info("config reloaded", extra={"targets": [t.name for t in new.targets]})
            return True

    def reload_soon(self) -> None:
        """Reload in a task of its own: for a signal handler, which cannot await."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="egresswatch-reload")
        self._pending.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._pending.discard)

    def watch(self) -> None:
        """Look at the file every poll_s from now on: a new mtime or size reloads it."""
        if self._path is None or self._watcher is not None:
            return
        self._stamp = _stamp(self._path)
        self._watcher = asyncio.create_task(self._watch(self._path), name="egresswatch-config")

    async def close(self) -> None:
        """Stop watching the file (a reload the watcher started is cancelled with it)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def _watch(self, path: Path) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            stamp = _stamp(path)
            # A file being replaced may be missing for a moment: wait for it, do not reload.
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                await self.reload()


def keep_restart_only(running: Settings, new: Settings) -> Settings:
    """`new`, with the RESTART_ONLY fields put back to their `running` values (logged)."""
    changed = [f for f in RESTART_ONLY if getattr(new, f) != getattr(running, f)]
    if not changed:
        return new
    log.warning("config fields need a restart to change", extra={"fields": changed})
    return new.model_copy(update={f: getattr(running, f) for f in changed})


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size
