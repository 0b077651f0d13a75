"""Logging helpers: `Sparse` keeps a flood of one event to a line per window."""

from __future__ import annotations

import logging

import pytest

from egresswatch.logs import Sparse


def test_a_flood_is_one_line_per_window_with_its_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    sparse = Sparse(
        logging.getLogger("test.sparse"), "rounds cut", every_s=10.0, clock=lambda: now[0]
    )
    caplog.set_level(logging.WARNING, logger="test.sparse")
    for step in range(300):  # 300 events over 30 s
        now[0] = 100.0 + step * 0.1
        sparse.note(job=f"node-1/t{step}")
    lines = [r for r in caplog.records if r.name == "test.sparse"]
    assert [r.getMessage() for r in lines] == ["rounds cut"] * 3
    assert [r.__dict__["count"] for r in lines] == [1, 100, 100]  # the first at once
    assert lines[1].__dict__["job"] == "node-1/t100"
