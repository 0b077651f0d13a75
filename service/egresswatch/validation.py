"""What the config (settings.py) and the plan (plan.py) share: the field types both validate,
how a validation error names its field, and the error a command reports for bad input.

Here, not in settings.py, so that the plan's model, which an agent parses, and the command
line do not build the whole config model on import: `egresswatch agent` never reads a config
file, and the config's validators and YAML reader cost it about 6 MiB of RSS
(docs/performance.md, "An agent's footprint"; tests/test_agent_imports.py).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

from egresswatch.model import StatusRanges

__all__ = ["ConfigError", "ExpectStatus", "field_path"]


class ConfigError(Exception):
    """A config that cannot be used. `problems` are `FILE: field.path: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _parse_status(value: object) -> StatusRanges:
    if isinstance(value, StatusRanges):
        return value
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise ValueError("expect_status is a string like '200-399' or '200,204'")
    return StatusRanges.parse(value)


ExpectStatus = Annotated[
    StatusRanges,
    BeforeValidator(_parse_status, json_schema_input_type=str | int | list[int]),
    PlainSerializer(str, return_type=str),
]


def field_path(loc: tuple[int | str, ...]) -> str:
    """Pydantic's error location as a field path people read: `targets[1].url`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in {"str", "int", "list[int]"}:
            continue  # union/validator branches pydantic puts in the location
        elif not _PLAIN_KEY.fullmatch(part):
            path += f"[{part!r}]"  # a key nobody meant (a newline, a space): shown as written
        else:
            path += f".{part}" if path else part
    return path


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
