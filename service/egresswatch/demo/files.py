"""The files the demo writes and keeps: resolv.conf, ca.pem and the service's config.

The config has the shape of config/demo.yaml, with this run's ports and absolute paths, and
keeps everything on loopback: the demo's resolv.conf and upstream resolver, the demo CA, and
no proxy taken from the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from egresswatch.demo.dns import HOST
from egresswatch.demo.endpoints import ZONE, DemoEndpoints
from egresswatch.demo.scenario import FAIL_AFTER, RECOVER_AFTER, round_timeout_s
from egresswatch.settings import format_duration

SOURCE = "demo-node"
SHOP_TARGET, CONTROL_TARGET = "shop", "control"


def write_files(
    directory: Path, endpoints: DemoEndpoints, *, listen: str, interval_s: float
) -> Path:
    """Write resolv.conf, ca.pem and egresswatch.yaml into `directory`; the config's path."""
    (directory / "resolv.conf").write_text(
        "# Written by `egresswatch demo`: dns_cluster asks the demo's DNS server.\n"
        f"nameserver {HOST}#{endpoints.dns.port}\n"
        f"search {ZONE}\n"
        "options ndots:1 timeout:1 attempts:1\n"
    )
    (directory / "ca.pem").write_bytes(endpoints.ca_pem)
    data = demo_config(
        directory,
        dns_port=endpoints.dns.port,
        shop_url=endpoints.shop.url,
        control_url=endpoints.control.url,
        listen=listen,
        interval_s=interval_s,
    )
    config = directory / "egresswatch.yaml"
    config.write_text(
        "# Written by `egresswatch demo`: the config it runs egresswatch with, on loopback\n"
        "# only. The ports are the ones the demo's endpoints got this time.\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    return config


def demo_config(
    directory: Path,
    *,
    dns_port: int,
    shop_url: str,
    control_url: str,
    listen: str,
    interval_s: float,
) -> dict[str, Any]:
    """The service's config for the demo (the shape of config/demo.yaml, with real values)."""
    # A round must end before the next is due; each step gets at most a second on loopback.
    timeout = round_timeout_s(interval_s)
    return {
        "source": {"name": SOURCE, "kind": "node"},
        "listen": listen,
        "database": f"sqlite+aiosqlite:///{directory / 'egresswatch.db'}",
        "dns": {
            "resolv_conf": str(directory / "resolv.conf"),
            "upstream": f"{HOST}#{dns_port}",
        },
        "proxy_from_environment": False,
        "probes": {
            "interval": format_duration(interval_s),
            "timeout": format_duration(timeout),
            "step_timeout": format_duration(min(1.0, timeout)),
            "trace_every": "1m",
            "trace_max_hops": 4,
            "trace_hop_timeout": "200ms",
            "ca_file": str(directory / "ca.pem"),
        },
        # Set here, not left to the defaults, because the timeline is built around them.
        "detection": {"fail_after": FAIL_AFTER, "recover_after": RECOVER_AFTER},
        "targets": [
            {"name": SHOP_TARGET, "url": shop_url, "role": "endpoint"},
            {"name": CONTROL_TARGET, "url": control_url, "role": "control"},
        ],
    }
