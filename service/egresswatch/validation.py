"""What the config (settings.py) and the command line share: how a validation error names its
field, and the error a command reports for bad input. The field type the config and the plan
both validate, an expected status, is `StatusRanges` itself (model.py; its pydantic schema is
its own, so that the plan, which an agent reads without pydantic, can use it too).

Here, not in settings.py, so that the command line does not build the whole config model on
import: `egresswatch agent` never reads a config file, and the config's validators and YAML
reader cost it about 6 MiB of RSS (docs/performance.md, "An agent's footprint";
tests/test_agent_imports.py).
"""

from __future__ import annotations

import re

__all__ = ["ConfigError", "field_path"]


class ConfigError(Exception):
    """A config that cannot be used. `problems` are `FILE: field.path: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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
