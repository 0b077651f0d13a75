"""Query parameters of the v1 API, read strictly, and the errors that name what was wrong.

Every bad parameter becomes a 400 problem document whose `invalid_params` member names it
(RFC 9457 §3.1's example extension): `[{"name": "since", "reason": "..."}]`. Unknown and
repeated query parameters are refused too, so a misspelled filter never silently returns
unfiltered data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from multidict import MultiMapping

from egresswatch.model import Step

E = TypeVar("E", bound=StrEnum)

NAME_PATTERN = r"^[^\u0000-\u001f\u007f]+$"  # names and filters: no control characters
NAME_MAX = 253  # sources and targets are named like hosts (storage.tables.Name)
LIMIT_DEFAULT = 100
LIMIT_MAX = 1000

# RFC 3339 §5.6 date-time: a full date, a time with seconds, and an offset (Z or +hh:mm).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
# Times are clamped to these, so that arithmetic on them (a default range, a lookback) never
# leaves datetime's years: no data lies outside them anyway.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)
_LOST_PLUS = re.compile(r" (\d{2}:\d{2})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INTEGER = re.compile(r"[+-]?\d{1,18}", re.ASCII)


@dataclass(frozen=True)
class InvalidParam:
    name: str
    reason: str


class ApiError(Exception):
    """An answer other than success, as a problem document (raised by handlers and helpers)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        invalid_params: Iterable[InvalidParam] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.invalid_params = tuple(invalid_params)
        self.headers = dict(headers or {})

    def fields(self) -> dict[str, Any]:
        """The extension members of the problem document."""
        if not self.invalid_params:
            return {}
        return {
            "invalid_params": [{"name": p.name, "reason": p.reason} for p in self.invalid_params]
        }


def bad_request(invalid: Iterable[InvalidParam], status: int = 400) -> ApiError:
    """A 400 (or `status`) naming every invalid parameter."""
    params = tuple(invalid)
    names = ", ".join(p.name for p in params)
    detail = "; ".join(f"{p.name}: {p.reason}" for p in params)
    title = "Bad Request" if status == 400 else "Unprocessable Content"
    return ApiError(status, title, detail or f"invalid: {names}", invalid_params=params)


def not_found(detail: str) -> ApiError:
    return ApiError(404, "Not Found", detail)


def parse_time(text: str) -> datetime:
    """An RFC 3339 date-time with a timezone -> an aware UTC datetime; ValueError says why.

    Times before EARLIEST or after LATEST become those (see there).
    """
    if not _RFC3339.fullmatch(text):
        raise ValueError(
            f"{text[:64]!r} is not an RFC 3339 date-time with a timezone, e.g. 2024-05-01T12:00:00Z"
        )
    try:
        moment = datetime.fromisoformat(text.upper().replace(" ", "T"))
    except ValueError:
        raise ValueError(f"{text[:64]!r} is not a valid date and time") from None
    try:
        return min(max(moment.astimezone(UTC), EARLIEST), LATEST)
    except OverflowError:  # a valid RFC 3339 time whose UTC falls outside datetime's years
        offset = moment.utcoffset()
        return EARLIEST if offset is not None and offset > timedelta(0) else LATEST


def iso(moment: datetime) -> str:
    """An aware datetime as RFC 3339 in UTC with a `Z`."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_or_none(moment: datetime | None) -> str | None:
    return iso(moment) if moment is not None else None


@dataclass
class Query:
    """The query string of one request, read parameter by parameter.

    Each reader records what is wrong instead of raising, so one answer names every bad
    parameter; `done()` then raises the 400 (unknown and repeated parameters included).
    """

    params: MultiMapping[str]
    problems: list[InvalidParam] = field(default_factory=list)
    _known: set[str] = field(default_factory=set)

    def _one(self, name: str) -> str | None:
        self._known.add(name)
        values = self.params.getall(name, [])
        if len(values) > 1:
            self.problems.append(InvalidParam(name, "given more than once"))
            return None
        return values[0] if values else None

    def text(self, name: str, *, required: bool = False, max_length: int = NAME_MAX) -> str | None:
        value = self._one(name)
        if value is None:
            if required and name not in self.params:
                self.problems.append(InvalidParam(name, "required"))
            return None
        if not value:
            self.problems.append(InvalidParam(name, "must not be empty"))
            return None
        if _CONTROL.search(value):
            self.problems.append(InvalidParam(name, "holds a control character"))
            return None
        if len(value) > max_length:
            self.problems.append(InvalidParam(name, f"longer than {max_length} characters"))
            return None
        return value

    def time(self, name: str) -> datetime | None:
        value = self._one(name)
        if value is None:
            return None
        if not _RFC3339.fullmatch(value):
            # An unencoded `+` in a query string arrives as a space (`since=...T10:00+01:00`
            # typed into curl): that is what the sender meant.
            value = _LOST_PLUS.sub(r"+\1", value)
        try:
            return parse_time(value)
        except ValueError as exc:
            self.problems.append(InvalidParam(name, str(exc)))
            return None

    def choice(self, name: str, vocabulary: type[E]) -> E | None:
        value = self._one(name)
        if value is None:
            return None
        try:
            return vocabulary(value)
        except ValueError:
            allowed = ", ".join(member.value for member in vocabulary)
            self.problems.append(InvalidParam(name, f"{value[:64]!r} is not one of: {allowed}"))
            return None

    def step(self, name: str = "step") -> Step | None:
        return self.choice(name, Step)

    def boolean(self, name: str) -> bool | None:
        value = self._one(name)
        if value is None:
            return None
        if value in ("true", "false"):
            return value == "true"
        self.problems.append(InvalidParam(name, f"{value[:64]!r} is not true or false"))
        return None

    def integer(self, name: str, *, default: int, low: int, high: int) -> int:
        value = self._one(name)
        if value is None:
            return default
        if not _INTEGER.fullmatch(value) or not low <= int(value) <= high:
            self.problems.append(
                InvalidParam(name, f"{value[:64]!r} is not an integer from {low} to {high}")
            )
            return default
        return int(value)

    def limit(self) -> int:
        return self.integer("limit", default=LIMIT_DEFAULT, low=1, high=LIMIT_MAX)

    def ordered(self, early: str, late: str, start: datetime | None, end: datetime | None) -> None:
        """Record a problem when both times are given and `early` is not before `late`."""
        if start is not None and end is not None and start >= end:
            self.problems.append(InvalidParam(early, f"must be before {late}"))

    def done(self) -> None:
        """Raise the 400 for everything recorded, and for parameters no reader asked for."""
        for name in sorted(set(self.params) - self._known):
            self.problems.append(InvalidParam(name[:64], "unknown query parameter"))
        if self.problems:
            raise bad_request(self.problems)
