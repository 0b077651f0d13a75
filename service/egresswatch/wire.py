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
from collections.abc import Callable, Mapping
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


Reader = Callable[[object, str], Any]  # (the JSON value, its path for errors) -> the field's value


def _object(cls: Any, data: object, path: str) -> Any:
    if not isinstance(data, Mapping):
        raise WireError(path, f"expected an object, got {json_kind(data)}")
    fields = _fields(cls)
    for key in data:
        if key not in fields:
            names = ", ".join(fields)
            raise WireError(json_path(path, str(key)), f"unknown key; {cls.__name__} has {names}")
    values: dict[str, Any] = {}
    for name, (reader, required) in fields.items():
        if name in data:
            values[name] = reader(data[name], json_path(path, name))
        elif required:
            raise WireError(json_path(path, name), "missing")
    try:
        return cls(**values)
    except FieldProblem as exc:
        raise WireError(json_path(path, exc.field) if exc.field else path, exc.problem) from None


# A plan of 10,000 targets reads PlanTarget 10,000 times: each field's reader is chosen once
# (annotations are strings here, resolved once too). Memos: the classes never change.
@functools.cache
def _fields(cls: Any) -> dict[str, tuple[Reader, bool]]:
    """Each field's name: (its reader, whether it is required), in field order."""
    hints = get_type_hints(cls)
    return {
        item.name: (_reader(hints[item.name]), _required(item)) for item in dataclasses.fields(cls)
    }


def _required(item: dataclasses.Field[Any]) -> bool:
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING


@functools.cache
def _limits(cls: Any) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    """The fields with a bound or a pattern, and their metadata."""
    keys = {"gt", "ge", "le", "pattern"}
    return tuple((f.name, f.metadata) for f in dataclasses.fields(cls) if keys & f.metadata.keys())


def check_fields(record: Any) -> None:
    """The bounds and pattern in the metadata of `record`'s fields (pydantic's `Field` keys,
    the same meaning); FieldProblem names the first field out of them. For `__post_init__`."""
    kind: Any = type(record)
    for name, limits in _limits(kind):
        value = getattr(record, name)
        if "gt" in limits and not value > limits["gt"]:
            raise FieldProblem(name, f"should be greater than {limits['gt']}")
        if "ge" in limits and not value >= limits["ge"]:
            raise FieldProblem(name, f"should be greater than or equal to {limits['ge']}")
        if "le" in limits and not value <= limits["le"]:
            raise FieldProblem(name, f"should be less than or equal to {limits['le']}")
        if "pattern" in limits and not re.search(limits["pattern"], value):
            raise FieldProblem(name, f"should match the pattern {limits['pattern']!r}")


@functools.cache
def _reader(hint: Any) -> Reader:
    """The function that reads a JSON value into `hint` (see the module for the types)."""
    origin = get_origin(hint)
    if hint == _IP:
        return _address
    if origin in (Union, types.UnionType):
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return functools.partial(_optional, _reader(inner))
    if origin is tuple:
        return functools.partial(_array, _reader(get_args(hint)[0]))
    if hasattr(hint, "from_wire"):  # before the dataclasses: such a class reads itself
        return functools.partial(_parsed, hint.from_wire)
    if dataclasses.is_dataclass(hint):
        return functools.partial(_object, hint)
    if hint in _SCALARS:
        return _SCALARS[hint]
    if hint is datetime:
        return functools.partial(_parsed_text, _time)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return functools.partial(_parsed_text, hint)
    raise TypeError(f"a field's type the reader does not know: {hint!r}")


def _optional(inner: Reader, value: object, path: str) -> Any:
    return None if value is None else inner(value, path)


def _array(item: Reader, value: object, path: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise WireError(path, f"expected an array, got {json_kind(value)}")
    return tuple(item(entry, json_path(path, n)) for n, entry in enumerate(value))


def _bool(value: object, path: str) -> bool:
    if isinstance(value, bool):
        return value
    raise WireError(path, f"expected true or false, got {json_kind(value)}")


def _int(value: object, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX:
        return value
    raise WireError(path, f"expected an integer within 64 bits, got {json_kind(value)}")


def _float(value: object, path: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise WireError(path, f"expected a finite number, got {json_kind(value)}")


def _str(value: object, path: str) -> str:
    if isinstance(value, str):
        return value
    raise WireError(path, f"expected a string, got {json_kind(value)}")


_SCALARS: Mapping[Any, Reader] = {bool: _bool, int: _int, float: _float, str: _str}


def _parsed_text(parse: Any, value: object, path: str) -> Any:
    """`parse` of a string value (an enum's, a time's)."""
    return _parsed(parse, _str(value, path), path)


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
