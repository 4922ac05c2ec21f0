"""The SQLite store's document codec: msgspec reads back exactly what Python's json would.

Differential: every body the store can write, and JSON texts it cannot write but an
older store or a hand edit may hold (NaN, escaped lone surrogates, float spellings),
decode to the same values, down to int versus float, the sign of zero, and key order.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmcore.store import sqlite as sq

_SETTINGS = settings(max_examples=300, deadline=None)

_KEYS = st.text(st.characters(codec="utf-8"), max_size=8)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # any size: beyond 64 bits too
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=20)
)
_DOCS = st.dictionaries(
    _KEYS,
    st.recursive(
        _SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
        max_leaves=20,
    ),
    max_size=8,
)
_NUMBER_TEXT = st.from_regex(
    r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0, -0.0 is not 0.0),
    with keys in the same order; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@_SETTINGS
@given(_DOCS)
def test_what_the_store_writes_reads_back_as_json_would(doc: dict[str, Any]) -> None:
    body = sq._encode(doc)
    assert same(sq._decode(body), json.loads(body))
    assert same(sq._decode(body), doc)


@_SETTINGS
@given(_DOCS, st.booleans())
def test_other_spellings_are_read_by_msgspec_as_json_would(
    doc: dict[str, Any], ascii_only: bool
) -> None:
    # \u escapes (ensure_ascii) and other spacing: msgspec itself reads them, the same.
    body = json.dumps(doc, ensure_ascii=ascii_only, indent=1 if ascii_only else None)
    assert same(sq._DECODER.decode(body), json.loads(body))
    assert same(sq._decode(body), json.loads(body))


@_SETTINGS
@given(_DOCS, st.sampled_from(["nan", "inf", "lone"]))
def test_texts_msgspec_refuses_are_read_as_json_would(doc: dict[str, Any], odd: str) -> None:
    # NaN and infinities (written by an encoder that allows them), an escaped lone
    # surrogate: msgspec refuses each, the store falls back to json.
    value = {"nan": math.nan, "inf": -math.inf, "lone": "\ud800x\udfff"}[odd]
    body = json.dumps({**doc, odd: value})  # ensure_ascii: the surrogates as \u escapes
    with pytest.raises(msgspec.DecodeError):
        sq._DECODER.decode(body)
    assert same(sq._decode(body), json.loads(body))


@_SETTINGS
@given(st.lists(_NUMBER_TEXT, min_size=1, max_size=6))
def test_number_spellings_read_as_json_would(numbers: list[str]) -> None:
    # Long mantissas, exponents, 1e400 (infinity to json, refused by msgspec), -0.
    body = '{"n":[' + ",".join(numbers) + "]}"
    assert same(sq._decode(body), json.loads(body))


def test_big_ints_and_duplicate_keys() -> None:
    for body in (
        '{"a":18446744073709551616,"b":-9223372036854775809,"c":123456789012345678901234567890}',
        '{"a":1,"a":2.0}',
        '{"a":' + "[" * 200 + "]" * 200 + "}",
    ):
        assert same(sq._DECODER.decode(body), json.loads(body))
        assert same(sq._decode(body), json.loads(body))


@_SETTINGS
@given(_DOCS, st.lists(_KEYS, max_size=6, unique=True), st.booleans())
def test_parts_read_as_the_whole_document_cut(
    doc: dict[str, Any], fields: list[str], refused: bool
) -> None:
    # peek_many's decoder: only ``fields`` (None where absent), the same values as the
    # whole document's; also for a body msgspec refuses (read by json, then cut).
    if refused:
        doc = {**doc, "nan": math.nan, "lone": "\ud800x\udfff"}
        body = json.dumps(doc).replace('"\ud800x\udfff"', '"\\ud800x\\udfff"')
    else:
        body = sq._encode(doc)
    whole = json.loads(body)
    asked = tuple(dict.fromkeys([*fields, "nan"]))
    assert same(sq._part_decoder(asked)(body), {f: whole.get(f) for f in asked})
