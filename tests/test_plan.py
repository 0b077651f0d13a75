"""The plan: one model from the controller's config to the agent's checklists.

What is checked: the JSON the controller serves parses back to the same plan; the agent
refuses a plan it cannot use, naming the field; each target's fields reach the round's
checklist; the local half (resolv.conf, CA, proxy credentials) never travels in the plan.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import egresswatch.agent.plan
from egresswatch.addresses import Nameserver
from egresswatch.agent.checklists import LocalSettings, checklist_plan
from egresswatch.agent.config_file import checklist_for
from egresswatch.agent.http_client import ControllerClient
from egresswatch.agent.plan import PlanError, PlanFollower, parse_plan
from egresswatch.controller.api.openapi import openapi_document
from egresswatch.controller.api.plan_adapter import PlanAdapter
from egresswatch.model import StatusRanges
from egresswatch.plan import Plan
from egresswatch.plan_config import plan_from_settings
from egresswatch.probes.checklist import TraceMode
from egresswatch.settings import Settings, settings_from_dict
from tests.support.agent_http import controller_client
from tests.support.apiserver import PROXY_PASSWORD, PROXY_URL_PASSWORD, config

NOW = datetime(2026, 11, 27, 7, 2, 11, tzinfo=UTC)


def settings(**changes: Any) -> Settings:
    data: dict[str, Any] = {
        "dns": {"upstream": "127.0.0.1#5353", "resolv_conf": "/etc/resolv.test"},
        "probes": {"interval": "10s", "timeout": "5s", "step_timeout": "2s"},
        "detection": {"recover_after": 3},
        "targets": [
            {"name": "shop", "url": "https://shop.example.test/", "expect_status": "200,204"},
            {
                "name": "db",
                "address": "db.example.test:5432",
                "pinned_ips": ["203.0.113.5"],
                "detection": {"recover_after": 5},
            },
        ],
        **changes,
    }
    return settings_from_dict(data)


def served(plan: Plan) -> Any:
    """What the agent decodes: the controller's answer body (routes.py)."""
    return json.loads(json.dumps(PlanAdapter().to_json(plan)))


def test_the_served_plan_parses_back_to_the_same_plan() -> None:
    plan = plan_from_settings(config(), source="pod-a", now=NOW)
    assert parse_plan(served(plan)) == plan
    assert served(plan)["generated_at"] == "2026-11-27T07:02:11Z"


def test_defaults_are_filled_in_per_target() -> None:
    shop, db = plan_from_settings(settings(), source="n", now=NOW).targets
    assert (shop.interval_s, shop.timeout_s, shop.step_timeout_s) == (10.0, 5.0, 2.0)
    assert str(shop.expect_status) == "200,204" and str(db.expect_status) == "200-399"
    assert (shop.recover_after, db.recover_after) == (3, 5)
    assert [str(ip) for ip in db.pinned_ips] == ["203.0.113.5"]


def test_the_plan_holds_no_secret() -> None:
    text = json.dumps(served(plan_from_settings(config(), source="pod-a", now=NOW)))
    for secret in (PROXY_PASSWORD, PROXY_URL_PASSWORD, "squid"):
        assert secret not in text


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d["targets"][0].pop("recover_after"), "targets[0].recover_after"),
        (lambda d: d["targets"][0].update(extra=1), "targets[0].extra"),
        (lambda d: d["targets"][0].update(url="ftp://x/"), "targets[0].url"),
        (lambda d: d["targets"][0].update(address="h:1"), "targets[0]"),
        (lambda d: d["targets"][0].update(interval_s=0), "targets[0].interval_s"),
        (lambda d: d["dns"].update(upstream="resolver.local"), "dns.upstream"),
        (lambda d: d.update(proxy={"url": "http://u:p@proxy:3128"}), "proxy.url"),
        # One per refusal class of wire.py and the plan's checks.
        (lambda d: d.update(targets={}), "targets"),
        (lambda d: d["targets"][0].update(name=7), "targets[0].name"),
        (lambda d: d["targets"][0].update(use_proxy=1), "targets[0].use_proxy"),
        (lambda d: d["targets"][0].update(trace_max_hops=3.0), "targets[0].trace_max_hops"),
        (lambda d: d["targets"][0].update(trace_max_hops=True), "targets[0].trace_max_hops"),
        (lambda d: d["targets"][0].update(trace_max_hops=65), "targets[0].trace_max_hops"),
        (lambda d: d["targets"][0].update(recover_after=0), "targets[0].recover_after"),
        (lambda d: d["targets"][0].update(timeout_s="5"), "targets[0].timeout_s"),
        (lambda d: d["targets"][0].update(method="POST"), "targets[0].method"),
        (lambda d: d["targets"][0].update(expect_status="600"), "targets[0].expect_status"),
        (lambda d: d["targets"][0].update(expect_status=None), "targets[0].expect_status"),
        (lambda d: d["targets"][0].update(role="spare"), "targets[0].role"),
        (
            lambda d: d["targets"][1].update(pinned_ips=["203.0.113"]),
            r"targets\[1\].pinned_ips\[0\]",
        ),
        (lambda d: d.update(generated_at="2026-11-27T07:02:11"), "generated_at"),
        (lambda d: d.update(generated_at="yesterday"), "generated_at"),
        (lambda d: d["dns"].update(upstream=5353), "dns.upstream"),
        (lambda d: d.update(proxy={"url": "http://proxy:3128", "spare": 1}), "proxy.spare"),
        (lambda d: d.update(proxy={"no_proxy": []}), "proxy.url"),
        (lambda d: d.update(__pydantic_config__={}), "__pydantic_config__"),  # a class's, no key
    ],
)
def test_an_unusable_plan_is_refused_naming_the_field(change: Any, named: str) -> None:
    document = served(plan_from_settings(settings(), source="n", now=NOW))
    change(document)
    with pytest.raises(PlanError, match=f"not usable: {named}[:.]".replace("[0]", r"\[0\]")):
        parse_plan(document)


def test_the_served_schemas_bounds_are_the_ones_the_agent_enforces() -> None:
    """One declaration: every bound and pattern the OpenAPI document states for a target is
    refused by the agent's reader just past it, and accepted at it."""
    schema = openapi_document()["components"]["schemas"]["PlanTarget"]["properties"]
    limits = {name: field for name, field in schema.items() if field.keys() & _LIMITS}
    assert set(limits) == {
        "interval_s", "timeout_s", "step_timeout_s", "trace_every_s",
        "trace_hop_timeout_s", "trace_max_hops", "recover_after", "method",
    }  # fmt: skip
    for name, field in limits.items():
        for value, usable in _edges(field):
            document = served(plan_from_settings(settings(), source="n", now=NOW))
            document["targets"][0][name] = value
            if usable:
                assert getattr(parse_plan(document).targets[0], name) == value
            else:
                with pytest.raises(PlanError, match=rf"targets\[0\]\.{name}: "):
                    parse_plan(document)


_LIMITS = {"exclusiveMinimum", "minimum", "maximum", "pattern"}


def _edges(field: dict[str, Any]) -> list[tuple[Any, bool]]:
    """Values at and just past each limit `field` states, and whether each is usable."""
    found: list[tuple[Any, bool]] = []
    if "exclusiveMinimum" in field:
        found += [(field["exclusiveMinimum"], False), (field["exclusiveMinimum"] + 0.5, True)]
    if "minimum" in field:
        found += [(field["minimum"] - 1, False), (field["minimum"], True)]
    if "maximum" in field:
        found += [(field["maximum"] + 1, False), (field["maximum"], True)]
    if "pattern" in field:
        found += [("HEAD", True), ("head", False), ("GET ", False)]
    return found


def test_a_time_with_an_offset_is_read_as_utc() -> None:
    document = served(plan_from_settings(settings(), source="n", now=NOW))
    document["generated_at"] = "2026-11-27T09:02:11+02:00"
    assert parse_plan(document).generated_at == NOW
    assert parse_plan(document).generated_at.tzinfo is UTC


def test_a_new_date_alone_is_the_same_work() -> None:
    first = plan_from_settings(settings(), source="n", now=NOW)
    assert first.same_work(plan_from_settings(settings(), source="n"))
    other = settings(proxy_from_environment=False)
    assert not first.same_work(plan_from_settings(other, source="n"))
    assert not first.same_work(None)


def test_the_checklist_has_the_plan_and_the_local_half() -> None:
    plan = parse_plan(served(plan_from_settings(config(), source="pod-a", now=NOW)))
    local = LocalSettings(
        resolv_conf=Path("/agent/resolv.conf"),
        ca_file=Path("/agent/ca.pem"),
        proxy_username="agent",
        proxy_password="agent-secret",
    )
    api = next(t for t in plan.targets if t.name == "api")
    checklist = checklist_plan(plan, api, local, trace=TraceMode.NEVER, environ={})
    assert checklist.resolv_conf == Path("/agent/resolv.conf")
    assert checklist.tls.ca_file == Path("/agent/ca.pem")
    assert checklist.upstream == Nameserver("168.63.129.16")
    assert checklist.expect == StatusRanges.parse("200-299")
    assert checklist.pinned_ips == ("203.0.113.10",)
    assert checklist.proxy is not None
    assert (checklist.proxy.address, checklist.proxy.username) == ("proxy.internal:3128", "agent")
    assert checklist.proxy.password == "agent-secret"
    db = next(t for t in plan.targets if t.name == "db")
    assert checklist_plan(plan, db, local, environ={}).proxy is None  # use_proxy: false


def test_one_config_file_gives_both_halves() -> None:
    """`egresswatch check` and `run`: the proxy's credentials come from the config file."""
    the_config = config()
    [api] = [t for t in the_config.targets if t.name == "api"]
    checklist = checklist_for(the_config, api, environ={})
    assert checklist.proxy is not None and checklist.proxy.username == "squid"
    assert checklist.proxy.password == PROXY_PASSWORD  # password_env wins over the URL's
    assert checklist.resolv_conf == the_config.dns.resolv_conf


async def _serve_in_pieces(body: bytes) -> tuple[web.AppRunner, str]:
    """A loopback server answering GET /api/v1/plan with `body`, written 4 KiB at a time (so
    the agent sees it arrive in many chunks, as a large plan does)."""

    async def plan(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(body), 4096):
            await response.write(body[start : start + 4096])
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/api/v1/plan", plan)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def _follower(client: ControllerClient) -> PlanFollower:
    return PlanFollower(client, source="n", token=lambda: None, on_plan=print)


async def test_a_plan_of_many_targets_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan past one read's chunk (here 600 targets, about 200 KB) arrives whole; one past
    the bound is refused, saying so."""
    targets = [{"name": f"t{i:03d}", "url": f"https://t{i:03d}.example.test/"} for i in range(600)]
    plan = plan_from_settings(settings(targets=targets), source="n", now=NOW)
    body = json.dumps(served(plan)).encode()
    assert len(body) > 150_000
    runner, url = await _serve_in_pieces(body)
    try:
        async with controller_client(url) as client:
            assert await _follower(client).fetch() == plan
            monkeypatch.setattr(egresswatch.agent.plan, "_PLAN_MAX", 100_000)
            with pytest.raises(PlanError, match="answered more than 100000 bytes"):
                await _follower(client).fetch()
    finally:
        await runner.cleanup()
