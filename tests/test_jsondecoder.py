"""The decoders written per record class (jsondecoder.py) give exactly what the generic decoding
(`jsonrecord._record`) gives: the same record (its repr: a 1 is not a 1.0), or the same error at
the same path, strict and lenient, for values that fit each field and for any others."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Union, get_args, get_origin

from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch import jsonrecord
from egresswatch.jsonrecord import INT_MAX, INT_MIN, EvidenceError, Record, field_types
from tests.test_copy_binary import EVIDENCE_TYPES as KINDS
from tests.test_evidence_decoding import JSON


def _fitting(hint: Any, plain: bool) -> st.SearchStrategy[Any]:
    """JSON values of the field type `hint`; unless `plain`, numbers at 64 bits' edges (and
    past them) and floats that are not finite too."""
    if get_origin(hint) in (Union, types.UnionType):
        (inner,) = [a for a in get_args(hint) if a is not type(None)]
        return st.none() | _fitting(inner, plain)
    if get_origin(hint) is tuple:
        return st.lists(_fitting(get_args(hint)[0], plain), max_size=3)
    if isinstance(hint, type) and issubclass(hint, Record):
        return _objects(hint, plain)
    integers = st.integers(INT_MIN, INT_MAX)
    floats = st.floats(allow_nan=False, allow_infinity=False)
    if not plain:
        integers |= st.sampled_from([INT_MIN - 1, INT_MAX + 1, 2**70])
        floats = st.floats()
    return {
        str: st.text(max_size=5),
        bool: st.booleans(),
        int: integers,
        float: floats | integers,
    }[hint]


def _objects(kind: type[Record], plain: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """Objects of `kind`: its required keys mostly there, values that fit (or, unless `plain`,
    now and then any JSON value), now and then an unknown key."""
    hints = field_types(kind)

    def value(name: str) -> st.SearchStrategy[Any]:
        fits = _fitting(hints[name], plain)
        return fits if plain else st.one_of(fits, fits, fits, JSON)

    required = {
        f.name: value(f.name) for f in dataclasses.fields(kind) if f.default is dataclasses.MISSING
    }
    optional = {f.name: value(f.name) for f in dataclasses.fields(kind) if f.name not in required}
    objects = st.fixed_dictionaries(required, optional=optional)
    if plain:
        return objects
    damaged = st.fixed_dictionaries({}, optional={**required, **optional, "stranger": JSON})
    return st.one_of(objects, objects, damaged)


def _outcome(decode: Any) -> object:
    try:
        return repr(decode())
    except EvidenceError as error:
        return ("error", error.field, error.problem)
    except (TypeError, OverflowError) as error:  # what the generic decoding raises, if it does
        return ("raised", type(error).__name__)


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(KINDS), strict=st.booleans(), data=st.data())
def test_the_written_decoders_decode_as_the_generic_decoding(
    kind: type[Record], strict: bool, data: st.DataObject
) -> None:
    value = data.draw(_objects(kind), label="object")
    assert _outcome(lambda: kind.from_json(value, strict=strict)) == _outcome(
        lambda: jsonrecord._record(kind, value, strict, "")
    )


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_values_that_fit_take_the_written_decoder(kind: type[Record], data: st.DataObject) -> None:
    """So the common case is fast: its decoder never hands it to the generic decoding."""
    value = data.draw(_objects(kind, plain=True), label="object")
    decode = jsonrecord._PLAIN_DECODERS.get(kind) or jsonrecord._plain_decoder(kind)
    assert repr(decode(value)) == repr(jsonrecord._record(kind, value, True, ""))
