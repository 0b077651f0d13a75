"""CPU per plan read by an agent (`agent.plan.parse_plan` on the JSON the controller serves), for
plans of ``--targets`` sizes; an agent reads its plan again every 30 s (not a test).

The plan is built from a config of loopback and `.test` targets, served as the controller
serves it (`PlanAdapter.to_json`, through JSON text), then read repeatedly; process CPU
(user + system) per read is printed. Run it under the benchmark lock.

    python benchmarks/plan_parse.py [--targets 50,1000]
"""

from __future__ import annotations

import argparse
import json
import resource
from datetime import UTC, datetime
from typing import Any

from egresswatch.agent.plan import parse_plan
from egresswatch.controller.api.plan_adapter import PlanAdapter
from egresswatch.plan_config import plan_from_settings
from egresswatch.settings import settings_from_dict


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def served_plan(count: int) -> Any:
    """A plan of `count` targets, half by URL, half by address, as an agent decodes it."""
    targets = [
        {"name": f"t{i}", "url": f"https://h{i}.example.test/"}
        if i % 2
        else {"name": f"t{i}", "address": f"127.0.0.{1 + i % 200}:{1000 + i}"}
        for i in range(count)
    ]
    settings = settings_from_dict({"targets": targets})
    plan = plan_from_settings(settings, source="bench", now=datetime.now(UTC))
    return json.loads(json.dumps(PlanAdapter().to_json(plan)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="50,1000", help="plan sizes, comma-separated")
    args = parser.parse_args()
    for count in (int(n) for n in args.targets.split(",")):
        document = served_plan(count)
        parse_plan(document)  # the readers' first-use costs aside
        reads = max(5, 20000 // count)
        start = cpu_s()
        for _ in range(reads):
            parse_plan(document)
        per_read = (cpu_s() - start) / reads * 1000
        print(f"{count} targets: {per_read:.2f} ms CPU per plan read ({reads} reads)")


if __name__ == "__main__":
    main()
