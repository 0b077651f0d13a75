"""Frozen dataclasses read strictly from decoded JSON, without pydantic.

The plan (plan.py) is written once as frozen dataclasses. The controller hands them to
pydantic (a `TypeAdapter`) for the JSON it serves and the OpenAPI schemas; an agent reads them
here, so that it never imports pydantic (about 9 MiB of RSS; docs/performance.md, "An agent's
footprint"). Both read the same declarations:

- a field's bounds and pattern are `dataclasses.field(metadata={...})` with pydantic's own
  `Field` keys, `gt`, `ge`, `le`, `pattern` (and `description`, for the schema only): pydantic
  takes a dataclass field's metadata as `Field` arguments, and the class's `__post_init__`
  calls `check_fields(self)`, so that every construction (this reader's, the controller's from
  its config) enforces them;
- checks across fields, or that need a parser (an endpoint, a nameserver), are in the same
  `__post_init__`, raising `FieldProblem` to name the field;
- `__pydantic_config__` (a plain dict) is pydantic's alone; unknown keys are refused here too.

`read(cls, data)` raises `WireError` naming the field by its JSON path (`targets[0].url`).
Types read: str, int, float (an int is accepted), bool, `X | None`, `tuple[X, ...]`, nested
dataclasses, string enums (by value), `datetime` (RFC 3339 with an offset; made UTC), IPv4 and
IPv6 addresses, and a class with a `from_wire(value)` classmethod (ValueError when unusable).
Standard library only.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
import math
import re
import types
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from egresswatch.jsonrecord import INT_MAX, INT_MIN, json_kind, json_path

__all__ = ["FieldProblem", "WireError", "check_fields", "read"]

T = TypeVar("T")

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class WireError(ValueError):
    """A document that does not fit its type. `field` is the JSON path of the problem (empty
    for the document itself), `problem` what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


class FieldProblem(WireError):
    """Raised by a dataclass's `__post_init__` for one of its fields (`field` empty: the
    object as a whole); `read` puts the object's path in front. pydantic sees a ValueError."""


def read(cls: type[T], data: object) -> T:
    """The `cls` dataclass `data` holds; WireError names the field when it does not fit."""
    value: T = _object(cls, data, "")
    return value


def _object(cls: Any, data: object, path: str) -> Any:
    if not isinstance(data, Mapping):
        raise WireError(path, f"expected an object, got {json_kind(data)}")
    fields = _fields(cls)
    for key in data:
        if key not in fields:
            names = ", ".join(fields)
            raise WireError(json_path(path, str(key)), f"unknown key; {cls.__name__} has {names}")
    values: dict[str, Any] = {}
    for name, (hint, required) in fields.items():
        where = json_path(path, name)
        if name not in data:
            if required:
                raise WireError(where, "missing")
            continue
        values[name] = _value(hint, data[name], where)
    try:
        return cls(**values)
    except FieldProblem as exc:
        raise WireError(json_path(path, exc.field) if exc.field else path, exc.problem) from None


# A plan of 10,000 targets reads PlanTarget 10,000 times: its fields' types are resolved once
# (annotations are strings here). A memo: the classes never change.
@functools.cache
def _fields(cls: Any) -> dict[str, tuple[Any, bool]]:
    """Each field's name: (its type, whether it is required), in field order."""
    hints = get_type_hints(cls)
    return {item.name: (hints[item.name], _required(item)) for item in dataclasses.fields(cls)}


def _required(item: dataclasses.Field[Any]) -> bool:
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING


def check_fields(record: Any) -> None:
    """The bounds and pattern in the metadata of `record`'s fields (pydantic's `Field` keys,
    the same meaning); FieldProblem names the first field out of them. For `__post_init__`."""
    for item in dataclasses.fields(record):
        limits, value = item.metadata, getattr(record, item.name)
        if "gt" in limits and not value > limits["gt"]:
            raise FieldProblem(item.name, f"should be greater than {limits['gt']}")
        if "ge" in limits and not value >= limits["ge"]:
            raise FieldProblem(item.name, f"should be greater than or equal to {limits['ge']}")
        if "le" in limits and not value <= limits["le"]:
            raise FieldProblem(item.name, f"should be less than or equal to {limits['le']}")
        if "pattern" in limits and not re.search(limits["pattern"], value):
            raise FieldProblem(item.name, f"should match the pattern {limits['pattern']!r}")


def _value(hint: Any, value: object, path: str) -> Any:
    origin = get_origin(hint)
    if hint == _IP:
        return _address(value, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return _value(inner, value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise WireError(path, f"expected an array, got {json_kind(value)}")
        item_hint = get_args(hint)[0]
        return tuple(_value(item_hint, item, json_path(path, n)) for n, item in enumerate(value))
    if hasattr(hint, "from_wire"):  # before the dataclasses: such a class reads itself
        return _parsed(hint.from_wire, value, path)
    if dataclasses.is_dataclass(hint):
        return _object(hint, value, path)
    return _scalar(hint, value, path)


def _scalar(hint: Any, value: object, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise WireError(path, f"expected true or false, got {json_kind(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX:
            return value
        raise WireError(path, f"expected an integer within 64 bits, got {json_kind(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise WireError(path, f"expected a finite number, got {json_kind(value)}")
    if not isinstance(value, str):
        raise WireError(path, f"expected a string, got {json_kind(value)}")
    if hint is str:
        return value
    if hint is datetime:
        return _parsed(_time, value, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _parsed(hint, value, path)
    raise TypeError(f"field {path} has a type the reader does not know: {hint!r}")


def _parsed(parse: Any, value: object, path: str) -> Any:
    """`parse(value)`, its ValueError as a WireError at `path`."""
    try:
        return parse(value)
    except ValueError as exc:
        raise WireError(path, str(exc)) from None


def _time(text: str) -> datetime:
    """An RFC 3339 time with its offset, as UTC (a time without one is refused, not guessed)."""
    found = datetime.fromisoformat(text)
    if found.tzinfo is None:
        raise ValueError("expected a time with its UTC offset (RFC 3339)")
    return found.astimezone(UTC)


def _address(value: object, path: str) -> _IP:
    if not isinstance(value, str):
        raise WireError(path, f"expected an IP address as a string, got {json_kind(value)}")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise WireError(path, f"not an IPv4 or IPv6 address: {value!r}") from None
