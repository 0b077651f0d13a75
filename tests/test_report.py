"""The next manual command for each failing step."""

from __future__ import annotations

import pytest

from egresswatch.model import Endpoint, Step
from egresswatch.report import next_command

WEB = Endpoint.parse("https://shop.example.test:8443/health")


@pytest.mark.parametrize(
    ("step", "kwargs", "expected"),
    [
        (None, {}, None),
        (Step.DNS_CLUSTER, {}, "nslookup shop.example.test"),
        (
            Step.DNS_UPSTREAM,
            {"upstream": "168.63.129.16"},
            "nslookup shop.example.test 168.63.129.16",
        ),
        (
            Step.DNS_UPSTREAM,
            {"upstream": "127.0.0.1:5353"},
            "nslookup -port=5353 shop.example.test 127.0.0.1",
        ),
        (Step.DNS_UPSTREAM, {"upstream": "[::1]:53"}, "nslookup shop.example.test ::1"),
        (Step.DNS_UPSTREAM, {}, "nslookup shop.example.test UPSTREAM_DNS_IP"),
        (Step.TCP_CONNECT, {"address": "203.0.113.7"}, "nc -z -v -w 5 203.0.113.7 8443"),
        (  # through a proxy the round connected to the proxy: its port, not the endpoint's
            Step.TCP_CONNECT,
            {"address": "198.51.100.4", "port": 3128},
            "nc -z -v -w 5 198.51.100.4 3128",
        ),
        (Step.TLS_HANDSHAKE, {}, "curl -Iv https://shop.example.test:8443/health"),
        (
            Step.HTTP_RESPONSE,
            {"proxy": "http://198.51.100.4:3128"},
            "curl -Iv --proxy http://198.51.100.4:3128 https://shop.example.test:8443/health",
        ),
        (Step.PATH_TRACE, {"address": "203.0.113.7"}, "traceroute -T -p 8443 203.0.113.7"),
    ],
)
def test_next_command(step: Step | None, kwargs: dict[str, object], expected: str | None) -> None:
    assert next_command(step, WEB, **kwargs) == expected  # type: ignore[arg-type]
