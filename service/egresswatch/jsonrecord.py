"""Frozen dataclasses that are JSON objects: one key per field, decoded strictly or leniently.

`Record.to_json` gives the object (tuples as arrays, nested records as objects),
`Record.to_json_text` the same object as compact JSON text (`json_text(record.to_json())`, built
directly: what storage writes for every step); `Record.from_json` takes it back:

- strict: an unknown key, a wrong type, a non-finite number or an integer past 64 bits raises
  `EvidenceError` naming the field by its JSON path (`attempts[0].ms`);
- lenient: unknown keys are ignored, a value of the wrong type takes the field's default and an
  unreadable entry of a list is left out (a required field still raises).

A missing key takes the field's default in both modes; a field without a default is required.
Field types: str, int, float (an int is accepted), bool, `X | None` (null), `tuple[X, ...]`
(an array) and nested records. `json_schema` gives the JSON Schema of the strict form.
Standard library only.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar, Union, cast, get_args, get_origin, get_type_hints

__all__ = [
    "OMITTED_BY_DEFAULT",
    "EvidenceError",
    "Record",
    "json_kind",
    "json_path",
    "json_schema",
    "json_text",
]

# Field metadata: the key is left out of the JSON while the field holds its default (the
# probes wrote such keys only when they had something to say; the stored shape keeps that).
OMITTED_BY_DEFAULT = {"omit_default": True}
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # integers are signed 64-bit, as the databases store them

# Compact JSON text, non-ASCII kept; a stray non-JSON value (an IP address object, a datetime)
# becomes its text rather than failing the batch it travels in. One encoder, reused: building
# one per value costs more than encoding a small dict.
_TEXT = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":"))
_STRING: Any = json.encoder.encode_basestring  # the C function behind _TEXT's strings


def json_text(value: Any) -> str:
    """`value` as compact JSON text: no spaces, non-ASCII as is, a non-JSON value as its str."""
    return _TEXT.encode(value)


class EvidenceError(ValueError):
    """Evidence (a record) that does not fit its type. `field` is the JSON path inside the evidence
    (empty for the evidence object itself), `problem` what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Record:
    """A frozen value that is a JSON object: one key per field, in field order."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object (lists for tuples, objects for nested records)."""
        found: dict[str, Any] = {}
        for name, omit_default, default, shape, _ in _layout(type(self)):
            value = getattr(self, name)
            if omit_default and value == default:
                continue
            if shape is _Shape.PLAIN or value is None:
                found[name] = value
            elif shape is _Shape.RECORDS:
                found[name] = [item.to_json() for item in value]
            else:
                found[name] = _encode(value)
        return found

    def to_json_text(self) -> str:
        """`json_text(self.to_json())`, the same text, without building the dicts first."""
        cls = type(self)
        encode = _TEXT_ENCODERS.get(cls)
        if encode is None:
            encode = _TEXT_ENCODERS[cls] = _text_encoder(cls)
        return encode(self)

    @classmethod
    def from_json(cls, data: object, *, strict: bool = True) -> Self:
        """The record `data` holds; `EvidenceError` when it does not fit (see the module)."""
        decode = _PLAIN_DECODERS.get(cls) or _plain_decoder(cls)
        try:
            return cast(Self, decode(data))
        except NotPlain:
            # Not the plain case (or wrong): the generic decoding decides, with its errors.
            return _record(cls, data, strict, "")


# --- the codec -------------------------------------------------------------------------------

R = TypeVar("R", bound=Record)


_HINTS: dict[type[Record], dict[str, Any]] = {}  # a memo: the classes never change
# Each class's decoder for its plain case (jsondecoder.py), written once: a memo.
_PLAIN_DECODERS: dict[type[Record], Callable[[object], Record]] = {}


def _plain_decoder(cls: type[Record]) -> Callable[[object], Record]:
    # Imported here: jsondecoder is built on this module's types.
    from egresswatch.jsondecoder import plain_decoder

    return plain_decoder(cls, _PLAIN_DECODERS)


class NotPlain(Exception):
    """Raised by a plain-case decoder (jsondecoder.py): decode the input the generic way."""


def field_types(cls: type[Record]) -> dict[str, Any]:
    """The fields' types, resolved once per class (annotations are strings here)."""
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = get_type_hints(cls)
    return found


class _Shape(enum.Enum):
    """How `to_json` encodes a field, decided once per class from its type."""

    PLAIN = 1  # str, int, float, bool (or None): the value itself
    RECORDS = 2  # tuple[SomeRecord, ...]: a list of objects
    OTHER = 3  # a nested record, a tuple of scalars: `_encode`


# Every stored step's evidence is encoded: `dataclasses.fields` on each was a sixth of the
# ingest's CPU, and an isinstance per value another fifth. A memo: the classes never change.
_LAYOUTS: dict[type[Record], tuple[tuple[str, bool, Any, _Shape, str], ...]] = {}


def _layout(cls: type[Record]) -> tuple[tuple[str, bool, Any, _Shape, str], ...]:
    """(name, omitted while default, default, shape, `"name":` as JSON) of each field."""
    found = _LAYOUTS.get(cls)
    if found is None:
        hints = field_types(cls)
        found = _LAYOUTS[cls] = tuple(
            (
                item.name,
                bool(item.metadata.get("omit_default")),
                item.default,
                _shape(hints[item.name]),
                _STRING(item.name) + ":",
            )
            for item in dataclasses.fields(cls)
        )
    return found


# Every stored step's evidence is encoded, and walking the layout per value was half of
# ingest's client CPU: each class gets a function written once from its layout, one statement
# per field (docs/performance.md, "Issue 14, continued"). A memo: the classes never change.
_TEXT_ENCODERS: dict[type[Record], Callable[[Record], str]] = {}


def _text_encoder(cls: type[Record]) -> Callable[[Record], str]:
    """`to_json_text` for `cls`: the loop over `_layout(cls)` unrolled, same text.

    Each field tests first for None and then for the type its annotation declares, written as
    constants where the text is known (`"name":null`): a call to `_value_text` per value was
    most of the encoding (docs/performance.md, "Issue 14, third pass"). Anything else, such as
    a value of another type, still goes through `_value_text`.
    """
    lines = ["def to_json_text(self):", "    parts = []", "    add = parts.append"]
    scope: dict[str, Any] = {
        "STRING": _STRING,
        "value_text": _value_text,
        "INT": int.__repr__,
        "FLOAT": float.__repr__,
        "isfinite": math.isfinite,
    }
    hints = field_types(cls)
    for number, (name, omit_default, default, shape, key) in enumerate(_layout(cls)):
        scope[f"K{number}"], scope[f"D{number}"] = key, default
        indent = "    "
        lines.append(f"    v = self.{name}")
        if omit_default:
            lines.append(f"    if not (v == D{number}):")
            indent = "        "
        lines.extend(indent + line for line in _field_lines(number, key, hints[name], shape))
    lines.append('    return "{" + ",".join(parts) + "}"')
    exec("\n".join(lines), scope)  # our own layout and names: no outside text
    encode: Callable[[Record], str] = scope["to_json_text"]
    return encode


def _field_lines(number: int, key: str, hint: Any, shape: _Shape) -> list[str]:
    """The statements that add field `number` (its value in `v`, `"name":` in `K{number}`)."""
    k = f"K{number}"
    lines = ["if v is None:", f"    add({(key + 'null')!r})", "elif type(v) is str:"]
    lines.append(f"    add({k} + STRING(v))")
    kinds = {arg for arg in get_args(hint)} | {hint}
    if int in kinds or float in kinds:  # a float field takes an int too
        lines += ["elif type(v) is int:", f"    add({k} + INT(v))"]
    if float in kinds:
        lines += ["elif type(v) is float and isfinite(v):", f"    add({k} + FLOAT(v))"]
    if bool in kinds:
        lines += ["elif v is True:", f"    add({(key + 'true')!r})"]
        lines += ["elif v is False:", f"    add({(key + 'false')!r})"]
    if shape is _Shape.RECORDS:
        items = '",".join([item.to_json_text() for item in v])'
        lines += ["elif type(v) is tuple:", f'    add({k} + "[" + {items} + "]")']
    elif get_origin(optional_of(hint)) is tuple:
        # Mostly texts (addresses, names): each as `_value_text` writes it, strings directly.
        items = '",".join([STRING(x) if type(x) is str else value_text(x) for x in v])'
        lines += ["elif type(v) is tuple:", f'    add({k} + "[" + {items} + "]")']
    lines += ["else:", f"    add({k} + value_text(v))"]
    return lines


def optional_of(hint: Any) -> Any:
    """`X` of `X | None`; `hint` itself otherwise."""
    if get_origin(hint) in (Union, types.UnionType):
        inner = [arg for arg in get_args(hint) if arg is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return hint


def _shape(hint: Any) -> _Shape:
    if get_origin(hint) in (Union, types.UnionType):
        (hint,) = [arg for arg in get_args(hint) if arg is not type(None)]
    if hint in (str, int, float, bool):
        return _Shape.PLAIN
    if get_origin(hint) is tuple:
        item = get_args(hint)[0]
        if isinstance(item, type) and issubclass(item, Record):
            return _Shape.RECORDS
    return _Shape.OTHER


def _value_text(value: object) -> str:
    """A field's value as `json_text` writes it (exact types first: a subclass, such as an
    enum member, goes through the encoder like any other value)."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if isinstance(value, int) and kind is int:
        return int.__repr__(value)
    if isinstance(value, float) and kind is float and math.isfinite(value):
        return float.__repr__(value)
    if isinstance(value, Record):
        return value.to_json_text()
    if isinstance(value, tuple) and kind is tuple:
        return "[" + ",".join(_value_text(item) for item in value) + "]"
    return _TEXT.encode(_encode(value))


def _encode(value: object) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, tuple):
        return [_encode(item) for item in value]
    return value


def _required(item: dataclasses.Field[Any]) -> bool:
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING


def json_path(path: str, key: str | int) -> str:
    """`key` of the value at `path`, as a JSON path: `attempts[0].ms`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _record(cls: type[R], data: object, strict: bool, path: str) -> R:
    if type(data) is not dict and not isinstance(data, Mapping):  # an ABC's check is slow
        raise EvidenceError(path, f"expected an object, got {json_kind(data)}")
    hints = field_types(cls)
    if strict and not data.keys() <= hints.keys():
        key = next(key for key in data if key not in hints)
        where = json_path(path, str(key))
        names = ", ".join(item.name for item in dataclasses.fields(cls))
        raise EvidenceError(where, f"unknown key; {cls.__name__} has {names}")
    values: dict[str, Any] = {}
    for name, required, hint, quick in _decoding(cls):
        if name not in data:
            if required:
                raise EvidenceError(json_path(path, name), "missing")
            continue
        value = data[name]
        found = _SLOW if quick is None else quick(value)
        if found is _SLOW:  # not the plain case: `_value` decodes it, or says what is wrong
            try:
                found = _value(hint, value, strict, json_path(path, name))
            except EvidenceError:
                if strict or required:
                    raise
                continue  # lenient: the default stands in for a value this version cannot read
        values[name] = found
    return cls(**values)


# Decoding agents' evidence was most of the controller's CPU per ingested round: each value
# went through `_value`'s type inspection and had its JSON path built. Each field now gets a
# quick check for its plain case (a string, a finite float, an integer within 64 bits, a list of
# strings, or null where allowed), which returns exactly what `_value` returns for it, or _SLOW
# for anything else: `_value` then decides, with the same errors as before.
_SLOW = object()
Quick = Callable[[object], object]
_DECODING: dict[type[Record], tuple[tuple[str, bool, Any, Quick | None], ...]] = {}


def _decoding(cls: type[Record]) -> tuple[tuple[str, bool, Any, Quick | None], ...]:
    """(name, required, type, quick check) of each field of `cls`; a memo."""
    found = _DECODING.get(cls)
    if found is None:
        hints = field_types(cls)
        found = _DECODING[cls] = tuple(
            (item.name, _required(item), hints[item.name], _quick(hints[item.name]))
            for item in dataclasses.fields(cls)
        )
    return found


def _quick(hint: Any) -> Quick | None:
    """The quick check for a field of type `hint` (see _SLOW), None when it has none."""
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
    plain = optional_of(hint)
    if plain is str:
        check: Quick = lambda v: v if type(v) is str else _SLOW  # noqa: E731
    elif plain is int:
        check = lambda v: v if type(v) is int and INT_MIN <= v <= INT_MAX else _SLOW  # noqa: E731
    elif plain is float:
        check = lambda v: v if type(v) is float and math.isfinite(v) else _SLOW  # noqa: E731
    elif plain is bool:
        check = lambda v: v if type(v) is bool else _SLOW  # noqa: E731
    elif get_origin(plain) is tuple and get_args(plain)[0] is str:
        check = _strings
    else:
        return None
    if not optional:
        return check
    return lambda v: None if v is None else check(v)


def _strings(value: object) -> object:
    if type(value) is list and all(type(item) is str for item in value):
        return tuple(value)
    return _SLOW


def _value(hint: Any, value: object, strict: bool, path: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return _value(inner, value, strict, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise EvidenceError(path, f"expected an array, got {json_kind(value)}")
        item_hint = get_args(hint)[0]
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_value(item_hint, item, strict, json_path(path, index)))
            except EvidenceError:
                if strict:
                    raise
                # lenient: an unreadable entry is left out, the rest of the list stays
        return tuple(items)
    if isinstance(hint, type) and issubclass(hint, Record):
        return _record(hint, value, strict, path)
    return _scalar(hint, value, path)


def _scalar(hint: Any, value: object, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise EvidenceError(path, f"expected true or false, got {json_kind(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            # Past 64 bits no database column, index or JSON reader holds it the same way.
            if not INT_MIN <= value <= INT_MAX:
                raise EvidenceError(path, "expected an integer within 64 bits")
            return value
        raise EvidenceError(path, f"expected an integer, got {json_kind(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise EvidenceError(path, "expected a finite number")
            return float(value)
        raise EvidenceError(path, f"expected a number, got {json_kind(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise EvidenceError(path, f"expected a string, got {json_kind(value)}")
    raise TypeError(f"evidence field {path} has a type the codec does not know: {hint!r}")


def json_kind(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


# --- JSON Schema, for the OpenAPI document ---------------------------------------------------

_SCALARS: Mapping[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def json_schema(cls: type[Record]) -> dict[str, Any]:
    """The JSON Schema of the records `cls.from_json` takes strictly (the ingest contract)."""
    hints = field_types(cls)
    properties = {item.name: _schema(hints[item.name]) for item in dataclasses.fields(cls)}
    required = [item.name for item in dataclasses.fields(cls) if _required(item)]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    return schema


def _schema(hint: Any) -> dict[str, Any]:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        found = _schema(inner)
        if "type" in found and isinstance(found["type"], str):
            return {**found, "type": [found["type"], "null"]}
        return {"oneOf": [found, {"type": "null"}]}
    if origin is tuple:
        return {"type": "array", "items": _schema(get_args(hint)[0])}
    if isinstance(hint, type) and issubclass(hint, Record):
        return json_schema(hint)
    if hint is int:
        return {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX}
    return {"type": _SCALARS[hint]}
