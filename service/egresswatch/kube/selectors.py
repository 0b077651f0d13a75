"""Kubernetes label selectors (matchLabels and matchExpressions), parsed from the API's JSON.

`LabelSelector.from_api` reads the camelCase object exactly as the API server serves it and
raises `SpecError` naming the field path for a shape the API server would have refused.
An empty selector (`{}`) selects everything; an absent one is the caller's business (a
NetworkPolicy peer without a podSelector means something else than `podSelector: {}`).

Pure: standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "LabelSelector",
    "Requirement",
    "SpecError",
    "each_of",
    "field_of",
    "list_of",
    "mapping_of",
]

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SpecError(ValueError):
    """An object that does not fit the API's shape: `path` names the field (`spec.egress[0]`),
    `problem` what is wrong with it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def mapping_of(value: object, path: str) -> Mapping[str, Any]:
    """`value` as a JSON object (None reads as an empty one); SpecError otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(path, f"expected an object, got {type(value).__name__}")
    return value


def list_of(value: object, path: str) -> list[Any]:
    """`value` as a JSON array (None reads as an empty one); SpecError otherwise."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(path, f"expected an array, got {type(value).__name__}")
    return value


def each_of(value: object, path: str, parse: Callable[[object, str], T]) -> tuple[T, ...]:
    """`parse(item, "path[i]")` for every item of the JSON array `value` (None: none)."""
    return tuple(parse(item, f"{path}[{i}]") for i, item in enumerate(list_of(value, path)))


def field_of(obj: Mapping[str, Any], key: str, path: str, kind: type) -> Any:
    """`obj[key]` when present and of `kind` (None when absent); SpecError otherwise."""
    value = obj.get(key)
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise SpecError(f"{path}.{key}", f"expected {kind.__name__}, got {type(value).__name__}")


def labels_of(value: object, path: str) -> dict[str, str]:
    """A label map: string keys to string values."""
    labels = mapping_of(value, path)
    for key, item in labels.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise SpecError(f"{path}.{key}", "label keys and values must be strings")
    return dict(labels)


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry: `key` `operator` (In, NotIn, Exists, DoesNotExist) `values`."""

    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """In: the label is present with one of the values; NotIn: absent, or none of them;
        Exists / DoesNotExist: the key is present / absent, whatever its value."""
        match self.operator:
            case "In":
                return self.key in labels and labels[self.key] in self.values
            case "NotIn":
                return self.key not in labels or labels[self.key] not in self.values
            case "Exists":
                return self.key in labels
            case _:
                return self.key not in labels

    @classmethod
    def from_api(cls, obj: object, path: str) -> Requirement:
        found = mapping_of(obj, path)
        key = field_of(found, "key", path, str)
        operator = field_of(found, "operator", path, str)
        values = list_of(found.get("values"), f"{path}.values")
        if not key:
            raise SpecError(f"{path}.key", "required")
        if operator not in _OPERATORS:
            raise SpecError(f"{path}.operator", f"{operator!r} is not one of {_OPERATORS}")
        if any(not isinstance(v, str) for v in values):
            raise SpecError(f"{path}.values", "values must be strings")
        if operator in ("In", "NotIn") and not values:
            raise SpecError(f"{path}.values", f"{operator} needs at least one value")
        if operator in ("Exists", "DoesNotExist") and values:
            raise SpecError(f"{path}.values", f"{operator} takes no values")
        return cls(key, operator, frozenset(values))


@dataclass(frozen=True)
class LabelSelector:
    """matchLabels and matchExpressions, ANDed; empty selects every object."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Every matchLabels pair is present and every expression holds."""
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            e.matches(labels) for e in self.expressions
        )

    @classmethod
    def from_api(cls, obj: object, path: str) -> LabelSelector:
        found = mapping_of(obj, path)
        labels = labels_of(found.get("matchLabels"), f"{path}.matchLabels")
        where = f"{path}.matchExpressions"
        expressions = each_of(found.get("matchExpressions"), where, Requirement.from_api)
        return cls(tuple(sorted(labels.items())), expressions)

    def __str__(self) -> str:
        """`app=web, tier notin (db)`: as kubectl writes a selector."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for e in self.expressions:
            match e.operator:
                case "Exists":
                    parts.append(e.key)
                case "DoesNotExist":
                    parts.append(f"!{e.key}")
                case operator:
                    parts.append(f"{e.key} {operator.lower()} ({','.join(sorted(e.values))})")
        return ", ".join(parts) or "(all)"
