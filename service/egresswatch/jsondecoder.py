"""A decoder written once per record class for its plain case: `Record.from_json`, unrolled.

Decoding agents' evidence was the largest part of the controller's CPU per ingested round
(docs/performance.md, "Issue 14, third pass"): the generic decoding (`jsonrecord._record`)
walks each class's layout and calls a check per value. `plain_decoder(cls)` writes, once, a
function with one statement per field that decodes the plain case: an object (a `dict`) with
only `cls`'s keys and every required one, each value null where the field allows it or of the
type the field declares (a string, a boolean, an integer within 64 bits, a finite float or an
integer within 64 bits for a float field, a list of strings, a nested record's object or a list
of them, each plain too).

It returns exactly the record the generic decoding returns for that input, strict or lenient
(the plain case reads the same in both), and raises `NotPlain` for anything else, which the
caller then hands to the generic decoding: that decides, with its errors and paths. So an
error never comes from here and cannot differ.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, get_args, get_origin

from egresswatch.jsonrecord import INT_MAX, INT_MIN, NotPlain, Record, field_types, optional_of

__all__ = ["plain_decoder"]

Decoder = Callable[[object], Record]


def plain_decoder(cls: type[Record], decoders: dict[type[Record], Decoder]) -> Decoder:
    """The plain-case decoder of `cls` (see the module), kept in `decoders` with those of the
    records nested in it."""
    found = decoders.get(cls)
    if found is not None:
        return found
    hints = field_types(cls)
    scope: dict[str, Any] = {
        "CLS": cls,
        "NAMES": frozenset(hints),
        "NOT_PLAIN": NotPlain,
        "MIN": INT_MIN,
        "MAX": INT_MAX,
        "isfinite": math.isfinite,
    }
    lines = [
        "def decode(data):",
        "    if type(data) is not dict or not data.keys() <= NAMES:",
        "        raise NOT_PLAIN",
    ]
    arguments = []
    for number, item in enumerate(dataclasses.fields(cls)):
        if not item.init or item.kw_only or item.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{item.name}: the plain decoder takes plain fields")
        scope[f"D{number}"] = item.default
        lines += _field_lines(number, item, hints[item.name], scope, decoders)
        arguments.append(f"a{number}")
    lines.append(f"    return CLS({', '.join(arguments)})")
    exec("\n".join(lines), scope)  # our own field names and constants: no outside text
    decode: Decoder = scope["decode"]
    decoders[cls] = decode
    return decode


def _field_lines(
    number: int,
    item: dataclasses.Field[Any],
    hint: Any,
    scope: dict[str, Any],
    decoders: dict[type[Record], Decoder],
) -> list[str]:
    """The statements that set `a{number}` from the object, or raise NotPlain."""
    name = item.name
    a = f"a{number}"
    if item.default is dataclasses.MISSING:  # required: missing is the generic path's error
        missing = ["        raise NOT_PLAIN"]
    else:
        missing = [f"        {a} = D{number}"]
    lines = [f"    v = data.get({name!r}, NOT_PLAIN)", "    if v is NOT_PLAIN:", *missing]
    if type(None) in get_args(hint):
        lines += ["    elif v is None:", f"        {a} = None"]
    plain = optional_of(hint)
    for test, value in _plain_cases(number, plain, scope, decoders):
        lines += [f"    elif {test}:", f"        {a} = {value}"]
    lines += ["    else:", "        raise NOT_PLAIN"]
    return lines


def _plain_cases(
    number: int, plain: Any, scope: dict[str, Any], decoders: dict[type[Record], Decoder]
) -> list[tuple[str, str]]:
    """(test of `v`, the value it decodes to) for a field of type `plain` (None not included)."""
    if plain is str:
        return [("type(v) is str", "v")]
    if plain is bool:
        return [("type(v) is bool", "v")]
    if plain is int:
        return [("type(v) is int and MIN <= v <= MAX", "v")]
    if plain is float:  # a float field takes an integer, as a float (`_scalar`)
        return [
            ("type(v) is float and isfinite(v)", "v"),
            ("type(v) is int and MIN <= v <= MAX", "float(v)"),
        ]
    if isinstance(plain, type) and issubclass(plain, Record):
        scope[f"R{number}"] = plain_decoder(plain, decoders)
        return [("type(v) is dict", f"R{number}(v)")]
    if get_origin(plain) is tuple:
        item = get_args(plain)[0]
        if item is str:
            return [("type(v) is list and all([type(x) is str for x in v])", "tuple(v)")]
        if isinstance(item, type) and issubclass(item, Record):
            scope[f"R{number}"] = plain_decoder(item, decoders)
            return [("type(v) is list", f"tuple([R{number}(x) for x in v])")]
    return []  # no plain case: any value present takes the generic path
