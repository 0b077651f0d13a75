"""Numbers from agents never reach the database unchecked: NaN, Infinity, -Infinity and
1e400 (JSON tokens Python's parser takes, and a float that overflows) anywhere in a batch, and
integers past 64 bits, are a 400 naming the field, on SQLite and on PostgreSQL; a 500 would
make the agent retry the same batch for ever.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from egresswatch.model import Endpoint, Reason, Step
from egresswatch.report import round_document
from tests.support.apiserver import (  # noqa: F401
    NODE,
    NOW,
    TOKEN,
    ApiWorld,
    api_client_fixture,
    api_world_fixture,
    make_round,
)
from tests.support.databases import migrated_engine_fixture  # noqa: F401

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
MARK = "__NUMBER__"
BAD = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]
TOO_BIG = ["9223372036854775808", "-9223372036854775809", "123456789012345678901234567890"]


def body_with(where: str) -> tuple[str, str]:
    """A valid batch (a failed tcp_connect with evidence) with MARK in place of one number, and
    the path of that number."""
    at = NOW - timedelta(seconds=30)
    document = round_document(
        make_round("api", NODE, at, failing=Step.TCP_CONNECT, reason=Reason.CONN_TIMEOUT),
        Endpoint.parse("example.test:443"),
    )
    round_ = {k: document[k] for k in ("target", "source", "started_at", "steps")}
    steps: list[dict[str, Any]] = round_["steps"]
    tcp = next(s for s in steps if s["step"] == "tcp_connect")
    if where == "duration_ms":
        tcp["duration_ms"] = MARK
    elif where == "evidence.port":
        tcp["evidence"]["port"] = MARK
    else:
        tcp["evidence"]["attempts"][0]["ms"] = MARK
    index = steps.index(tcp)
    text = json.dumps({"source": NODE, "batch_id": f"n-{where}", "rounds": [round_]})
    return text.replace(f'"{MARK}"', MARK), f"rounds[0].steps[{index}].{where}"


@pytest.mark.parametrize("where", ["duration_ms", "evidence.attempts[0].ms", "evidence.port"])
async def test_non_finite_and_overflowing_numbers_are_a_400_naming_the_field(
    api_client: Any, api_world: ApiWorld, where: str
) -> None:
    template, path = body_with(where)
    numbers = BAD + (TOO_BIG if where == "evidence.port" else [])
    for number in numbers:
        response = await api_client.post(
            "/api/v1/results", data=template.replace(MARK, number), headers=AUTH
        )
        assert response.status == 400, (where, number, await response.text())
        body = await response.json(content_type=None)
        assert [p["name"] for p in body["invalid_params"]] == [path], (number, body)
    assert api_world.ingested == []
    ok = await api_client.post("/api/v1/results", data=template.replace(MARK, "443"), headers=AUTH)
    assert ok.status == 200, await ok.text()
