"""Shared test settings. Fixtures for servers live in tests/support/ and are imported explicitly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A proxy set on the machine running the tests must not leak into a probe under test."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    yield
