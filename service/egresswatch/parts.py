"""What every part of the controller reads, made once by wiring.py and handed to the modules
that make the rest (detection_wiring.py, kube_wiring.py, leadership.py, api_wiring.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from egresswatch.metrics import Metrics
from egresswatch.settings import Settings
from egresswatch.storage import History, Outage, Store


@dataclass(frozen=True)
class Core:
    """The current settings (a reload swaps them: read them at each use), the store and the
    history on one engine, the process's metrics, its one outage record, and the clock."""

    settings: Callable[[], Settings]
    store: Store
    history: History
    metrics: Metrics
    outage: Outage
    clock: Callable[[], datetime]
