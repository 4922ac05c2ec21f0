"""Go encoding/json-compatible normalisation (quest IDs hash its output)."""

from __future__ import annotations

import json
import random
from typing import Any, NoReturn

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmcore import jsonnorm
from dmcore.jsonnorm import (
    MAX_DEPTH,
    MAX_QUEST_PAYLOAD,
    MAX_RESULT_NORMALISED,
    MAX_RESULT_RAW,
    JsonError,
    normalize,
    normalize_object,
    normalize_result,
)

# --- known vectors ------------------------------------------------------------


def test_dm_vectors() -> None:
    assert normalize('{  "key"  :  ["value"]}') == '{"key":["value"]}'
    assert normalize('{"key":["value"], "abc": true}') == '{"abc":true,"key":["value"]}'
    assert normalize("{  }") == "{}"


def test_limits() -> None:
    assert (MAX_RESULT_RAW, MAX_RESULT_NORMALISED, MAX_QUEST_PAYLOAD) == (288_358, 262_144, 262_144)


# --- structure ------------------------------------------------------------------


def test_compact_output() -> None:
    raw = ' \t\n\r{ "a" :\n[ 1 ,\t2 , { } , [ ] ] ,\r\n "b" : null , "c" : false } \n'
    assert normalize(raw) == '{"a":[1,2,{},[]],"b":null,"c":false}'


def test_keys_sorted() -> None:
    assert normalize('{"b":1,"a":2,"B":3,"ab":4,"":5}') == '{"":5,"B":3,"a":2,"ab":4,"b":1}'


def test_keys_sorted_by_utf8_bytes() -> None:
    # UTF-8: EF BF BF < F0 9F 98 80, and EF BC 81 < F0 9F 98 80, although in
    # UTF-16 (as JavaScript would sort) U+1F600 (D83D DE00) sorts first.
    raw = json.dumps({"\U0001f600": 1, "\uffff": 2, "\uff01": 3, "\u00e9": 4, "z": 5})
    assert normalize(raw) == '{"z":5,"\u00e9":4,"\uff01":3,"\uffff":2,"\U0001f600":1}'


def test_nested_objects_sorted() -> None:
    raw = '{"z":{"y":{"b":1,"a":2},"x":0},"a":[{"d":1,"c":[{"f":1,"e":2}]},{"b":0,"a":0}]}'
    assert normalize(raw) == (
        '{"a":[{"c":[{"e":2,"f":1}],"d":1},{"a":0,"b":0}],"z":{"x":0,"y":{"a":2,"b":1}}}'
    )


def test_duplicate_keys_last_wins() -> None:
    assert normalize('{"b":1,"a":2,"b":{"x":1},"c":3,"a":[4]}') == '{"a":[4],"b":{"x":1},"c":3}'
    # No merging of duplicate nested objects.
    assert normalize('{"a":{"x":1},"a":{"y":2}}') == '{"a":{"y":2}}'


def test_scalars_inside() -> None:
    assert (
        normalize('{"t":true,"f":false,"n":null,"s":"x"}')
        == '{"f":false,"n":null,"s":"x","t":true}'
    )


# --- numbers --------------------------------------------------------------------


def test_number_literals_preserved() -> None:
    raw = '{"a":1.0,"b":1e5,"c":-0,"d":1E+2,"e":[0.10,-1.5e-07,12345678901234567890123]}'
    assert normalize(raw) == raw


@pytest.mark.parametrize(
    "literal",
    ["01", "-01", "00", "+1", ".5", "-.5", "1.", "1.e5", "1e", "1e+", "-", "--1", "0x10", "1_0"],
)
def test_invalid_numbers_rejected(literal: str) -> None:
    with pytest.raises(JsonError, match="invalid number literal"):
        normalize('{"a":' + literal + "}")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_rejected(literal: str) -> None:
    with pytest.raises(JsonError, match=f"{literal} is not allowed"):
        normalize('{"a":' + literal + "}")


# --- string output escaping -------------------------------------------------------


def _s(value: str) -> str:
    """Normalise {"k": value} and return the emitted string token."""
    out = normalize(json.dumps({"k": value}))
    assert out.startswith('{"k":') and out.endswith("}")
    return out[5:-1]


def test_html_characters_escaped() -> None:
    assert _s("<a href='x'>&</a>") == r'"\u003ca href=' + "'x'" + r'\u003e\u0026\u003c/a\u003e"'


def test_line_and_paragraph_separators_escaped() -> None:
    assert _s("a\u2028b\u2029c") == r'"a\u2028b\u2029c"'


def test_short_escapes() -> None:
    assert _s('"\\\n\r\t') == r'"\"\\\n\r\t"'


def test_backspace_formfeed_and_controls_as_unicode_escapes() -> None:
    assert _s("\b\f") == r'"\u0008\u000c"'
    assert _s("\x00\x01\x1b\x1f") == r'"\u0000\u0001\u001b\u001f"'


def test_slash_del_and_non_ascii_raw() -> None:
    assert normalize(r'{"k":"a\/b/c"}') == '{"k":"a/b/c"}'
    assert _s("\x7f") == '"\x7f"'
    assert _s("\u00e9\u4e2d\U0001f600\ufffd\u2027") == '"\u00e9\u4e2d\U0001f600\ufffd\u2027"'


def test_keys_escaped_too() -> None:
    assert normalize(r'{"<\n\u2028\b":1}') == r'{"\u003c\n\u2028\u0008":1}'


# --- string input parsing -----------------------------------------------------------


def test_input_escapes_decoded() -> None:
    raw = r'{"k":"\"\\\/\b\f\n\r\t\u0041\u00E9\u00e9"}'
    assert normalize(raw) == r'{"k":"\"\\/\u0008\u000c\n\r\tA' + "\u00e9\u00e9" + '"}'


def test_surrogate_pair_combined() -> None:
    assert normalize(r'{"k":"\ud83d\ude00\uD83D\uDE00"}') == '{"k":"\U0001f600\U0001f600"}'


@pytest.mark.parametrize(
    ("escaped", "expected"),
    [
        (r"\ud83d", "\ufffd"),
        (r"\ude00", "\ufffd"),
        (r"\ude00\ud83d", "\ufffd\ufffd"),
        (r"\ud83dx", "\ufffdx"),
        (r"\ud83d\u0041", "\ufffdA"),
        (r"\ud83d\n", "\ufffd\\n"),
        (r"\ud83d\ud83d\ude00", "\ufffd\U0001f600"),
    ],
)
def test_lone_surrogate_escape_replaced(escaped: str, expected: str) -> None:
    assert normalize('{"k":"' + escaped + '"}') == '{"k":"' + expected + '"}'


@pytest.mark.parametrize("escape", [r"\x41", r"\u12", r"\u12G4", r"\U0041", r"\a", r"\'", "\\"])
def test_invalid_escape_rejected(escape: str) -> None:
    with pytest.raises(JsonError, match=r"invalid escape|unterminated string"):
        normalize('{"k":"' + escape + '"}')


@pytest.mark.parametrize("char", ["\x00", "\n", "\t", "\x1f"])
def test_raw_control_char_in_string_rejected(char: str) -> None:
    with pytest.raises(JsonError, match="control character"):
        normalize('{"k":"a' + char + 'b"}')


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff", "\ufffd"),
        (b"\x80", "\ufffd"),
        (b"\xe2\x82", "\ufffd\ufffd"),  # truncated: one U+FFFD per byte (Go)
        (b"\xe2\x82A", "\ufffd\ufffdA"),
        (b"\xc0\x80", "\ufffd\ufffd"),  # overlong
        (b"\xed\xa0\x80", "\ufffd\ufffd\ufffd"),  # encoded surrogate
        (b"\xf4\x90\x80\x80", "\ufffd" * 4),  # above U+10FFFF
        (b"\xc3\xa9\xff\xe2\x82\xac", "\u00e9\ufffd\u20ac"),
        (b"\xf0\x9f\x98", "\ufffd" * 3),
    ],
)
def test_invalid_utf8_replaced(raw: bytes, expected: str) -> None:
    assert normalize(b'{"k":"' + raw + b'"}') == '{"k":"' + expected + '"}'
    assert normalize(b'{"' + raw + b'":1}') == '{"' + expected + '":1}'


def test_invalid_utf8_outside_string_rejected() -> None:
    with pytest.raises(JsonError, match="unexpected byte 0xff"):
        normalize(b'{"a":1\xff}')


def test_str_input_with_lone_surrogate() -> None:
    assert normalize('{"k":"a\ud800b"}') == '{"k":"a\ufffdb"}'


def test_utf8_bom_rejected() -> None:
    with pytest.raises(JsonError, match="byte order mark"):
        normalize(b'\xef\xbb\xbf{"a":1}')
    with pytest.raises(JsonError, match="byte order mark"):
        normalize('\ufeff{"a":1}')


# --- top level and syntax errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("[]", "array"),
        ('[{"a":1}]', "array"),
        ("1", "number"),
        ("-0.5", "number"),
        ('"s"', "string"),
        ("true", "boolean"),
        ("false", "boolean"),
    ],
)
def test_top_level_must_be_object(raw: str, kind: str) -> None:
    with pytest.raises(JsonError, match=f"JSON must be an object, got {kind}"):
        normalize(raw)


def test_top_level_null() -> None:
    assert normalize("null") == "null"
    assert normalize(" null\n") == "null"
    with pytest.raises(JsonError, match="must be an object, got null"):
        normalize("null", allow_null=False)
    with pytest.raises(JsonError, match="must be an object, got null"):
        normalize_object("null")
    with pytest.raises(JsonError, match="must be an object, got null"):
        normalize_result("null")


@pytest.mark.parametrize("raw", ['{"a":1} x', "{}{}", "{} ,", "{}]", "{}}", "null null", "{}\x00"])
def test_trailing_junk_rejected(raw: str) -> None:
    with pytest.raises(JsonError, match="extra data after the top-level value at byte"):
        normalize(raw)


def test_trailing_whitespace_allowed() -> None:
    assert normalize('{"a":1} \t\r\n') == '{"a":1}'


@pytest.mark.parametrize("raw", ["", b"", " ", " \t\r\n "])
def test_empty_input_rejected(raw: str | bytes) -> None:
    with pytest.raises(JsonError, match="empty input"):
        normalize(raw)


def test_non_json_whitespace_not_skipped() -> None:
    with pytest.raises(JsonError, match="unexpected"):
        normalize('\x0c{"a":1}')
    with pytest.raises(JsonError, match="unexpected"):
        normalize('\u00a0{"a":1}')


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ('{"a":1', "unexpected end of input"),
        ('{"a":', "unexpected end of input"),
        ('{"a"', "unexpected end of input"),
        ('{"a', "unterminated string"),
        ("{", "unexpected end of input"),
        ('{"a" 1}', "expected ':'"),
        ('{"a":1,}', "expected a string object key"),
        ('{"a":[1,]}', "looking for a value"),
        ('{"a":[1 2]}', "expected ',' or ']'"),
        ('{"a":1 "b":2}', "expected ',' or '}'"),
        ("{a:1}", "expected a string object key"),
        ("{'a':1}", "expected a string object key"),
        ('{"a":tru}', "invalid literal"),
        ('{"a":True}', "unexpected character 'T'"),
        ('{"a":1}//c', "extra data"),
        ('{"a":[}', "looking for a value"),
        ('{"a":{]}', "expected a string object key"),
    ],
)
def test_syntax_errors(raw: str, fragment: str) -> None:
    with pytest.raises(JsonError, match=fragment):
        normalize(raw)


def test_wrong_input_type() -> None:
    with pytest.raises(JsonError, match="str or bytes"):
        normalize(42)  # type: ignore[arg-type]


def test_deep_nesting_limit() -> None:
    deep_ok = '{"a":' * (MAX_DEPTH - 1) + "[]" + "}" * (MAX_DEPTH - 1)
    assert normalize(deep_ok) == deep_ok
    arrays = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert normalize('{"a":' + arrays + "}") == '{"a":' + arrays + "}"
    too_deep = '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)
    with pytest.raises(JsonError, match="nesting depth exceeds 10000"):
        normalize(too_deep)
    with pytest.raises(JsonError, match="nesting depth exceeds 10000"):
        normalize('{"a":' + "[" * 100_000)


def test_large_input() -> None:
    rnd = random.Random(7)
    doc = {
        f"key{i}\u00e9<": [{"x": rnd.random(), "y": "s\u2028\n" * 3, "z": None, "w": i}]
        for i in range(3000)
    }
    raw = json.dumps(doc)
    assert len(raw) > 256 * 1024
    out = normalize(raw)
    assert json.loads(out) == doc
    assert out == jsonnorm._normalize_slow(raw)


# --- JsonResult ---------------------------------------------------------------------------


def test_result_empty() -> None:
    assert normalize_result("") == ("", 0)


def test_result_normalised_and_size_recomputed() -> None:
    assert normalize_result('{ "b" : 1 ,  "a" : "\u00e9" }') == ('{"a":"\u00e9","b":1}', 16)


def test_result_raw_limit() -> None:
    at_limit = "{}" + " " * (MAX_RESULT_RAW - 2)
    assert normalize_result(at_limit) == ("{}", 2)
    with pytest.raises(JsonError, match="289359 bytes exceeds the limit of 288358"):
        normalize_result(at_limit + " " * 1001)
    # Measured in UTF-8 bytes, not characters.
    with pytest.raises(JsonError, match="exceeds the limit of 288358"):
        normalize_result('{"a":"' + "\u00e9" * 144_176 + '"}')


def test_result_normalised_limit() -> None:
    exact = '{"a":"' + "x" * (MAX_RESULT_NORMALISED - 8) + '"}'
    assert normalize_result(exact) == (exact, MAX_RESULT_NORMALISED)
    with pytest.raises(JsonError, match=r"normalised result JSON is too large.*262144"):
        normalize_result('{"a":"' + "x" * (MAX_RESULT_NORMALISED - 7) + '"}')
    # Escaping can push a small raw input over the normalised limit.
    with pytest.raises(JsonError, match="300008 bytes exceeds the limit of 262144"):
        normalize_result('{"a":"' + "<" * 50_000 + '"}')


def test_result_rejects_non_objects() -> None:
    with pytest.raises(JsonError, match="got array"):
        normalize_result("[1]")
    with pytest.raises(JsonError, match="invalid JSON"):
        normalize_result("{")


# --- property tests -----------------------------------------------------------------------

_SPECIAL = '<>&"\\/\x00\x08\x0c\n\r\t\x1f\x7f\u2028\u2029\u00e9\uffff\U0001f600'
_TEXT = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(_SPECIAL)), max_size=10
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    _TEXT,
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
_OBJECTS = st.dictionaries(_TEXT, _VALUES, max_size=6)
_FAST = settings(max_examples=200, deadline=None)


def _go_string(s: str) -> str:
    """Go's HTML-safe string encoding, written out rule by rule."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ch in "<>&\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _go_marshal(value: Any) -> str:
    """Reference output for a decoded Python value (numbers via json.dumps, as in the input)."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-8"))
        return "{" + ",".join(_go_string(k) + ":" + _go_marshal(v) for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_go_marshal(v) for v in value) + "]"
    if isinstance(value, str):
        return _go_string(value)
    return json.dumps(value)


def _dump_shuffled(value: Any, rnd: random.Random) -> str:
    """Serialise with random key order, random whitespace and random ASCII escaping."""

    def ws() -> str:
        return "".join(rnd.choice(" \t\n\r") for _ in range(rnd.randrange(3)))

    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        body = ",".join(
            ws()
            + json.dumps(k, ensure_ascii=rnd.random() < 0.5)
            + ws()
            + ":"
            + ws()
            + _dump_shuffled(v, rnd)
            + ws()
            for k, v in items
        )
        return "{" + body + ws() + "}"
    if isinstance(value, list):
        return "[" + ",".join(ws() + _dump_shuffled(v, rnd) + ws() for v in value) + ws() + "]"
    return json.dumps(value, ensure_ascii=rnd.random() < 0.5)


@_FAST
@given(_OBJECTS, st.booleans())
def test_prop_matches_reference(obj: dict[str, Any], ascii_only: bool) -> None:
    raw = json.dumps(obj, ensure_ascii=ascii_only)
    out = normalize(raw)
    assert out == _go_marshal(obj)
    assert json.loads(out) == json.loads(raw)


@_FAST
@given(_OBJECTS, st.booleans())
def test_prop_idempotent(obj: dict[str, Any], ascii_only: bool) -> None:
    once = normalize(json.dumps(obj, ensure_ascii=ascii_only))
    assert normalize(once) == once
    assert normalize(once.encode("utf-8")) == once


@_FAST
@given(_OBJECTS, st.randoms(use_true_random=False))
def test_prop_key_order_and_whitespace_irrelevant(obj: dict[str, Any], rnd: random.Random) -> None:
    assert normalize(_dump_shuffled(obj, rnd)) == normalize(json.dumps(obj))


def _go_decode_rune(b: bytes, i: int) -> tuple[str, int]:
    """Go's utf8.DecodeRune, byte-range by byte-range; (U+FFFD, 1) when invalid."""
    first = b[i]
    if first < 0x80:
        return chr(first), 1
    if 0xC2 <= first <= 0xDF:
        size, lo, hi = 2, 0x80, 0xBF
    elif 0xE0 <= first <= 0xEF:
        size = 3
        lo, hi = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F)}.get(first, (0x80, 0xBF))
    elif 0xF0 <= first <= 0xF4:
        size = 4
        lo, hi = {0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(first, (0x80, 0xBF))
    else:
        return "\ufffd", 1
    if i + size > len(b) or not lo <= b[i + 1] <= hi:
        return "\ufffd", 1
    if any(not 0x80 <= c <= 0xBF for c in b[i + 2 : i + size]):
        return "\ufffd", 1
    return b[i : i + size].decode("utf-8"), size


@_FAST
@given(st.binary(max_size=40))
def test_prop_invalid_utf8_like_go(payload: bytes) -> None:
    body = bytes(c for c in payload if c >= 0x20 and c not in b'"\\')
    expected, i = [], 0
    while i < len(body):
        ch, size = _go_decode_rune(body, i)
        expected.append(ch)
        i += size
    assert normalize(b'{"k":"' + body + b'"}') == '{"k":' + _go_string("".join(expected)) + "}"


@_FAST
@given(st.one_of(st.binary(max_size=60), st.text(st.characters(codec=None), max_size=60)))
def test_prop_only_json_error_escapes(raw: str | bytes) -> None:
    try:
        out = normalize(raw)
    except JsonError:
        return
    assert isinstance(out, str)


_TOKENS = [
    "{", "}", "[", "]", ":", ",", " ", "\t", '"', "\\", '"a"', '"b"', '"\\u00e9"', '"\\ud800"',
    '"x\\y"', '"\\/"', "1", "-0", "1.5e3", "01", "1.", ".5", "+1", "-", "true", "null", "nul",
    "NaN", "-Infinity", "\x7f",
]  # fmt: skip


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(name)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=12).map("".join))
def test_prop_accepts_what_strict_json_accepts(raw: str) -> None:
    """Python's json (strict, no NaN) agrees with Go on what is valid JSON."""
    try:
        expected = json.loads(raw, parse_constant=_reject_constant)
        python_ok = expected is None or isinstance(expected, dict)
    except ValueError:
        python_ok = False
    try:
        out = normalize(raw)
    except JsonError:
        assert not python_ok
        return
    assert python_ok
    if "\\ud800" not in raw:  # Python keeps lone surrogates; Go gives U+FFFD
        assert json.loads(out) == expected


def _outcome(fn: Any, raw: str | bytes) -> str | None:
    try:
        out: str = fn(raw)
    except JsonError:
        return None
    return out


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        st.lists(st.sampled_from(_TOKENS), max_size=14).map("".join),
        _OBJECTS.map(json.dumps),
        st.builds(_dump_shuffled, _OBJECTS, st.randoms(use_true_random=False)),
    ),
    st.booleans(),
)
def test_prop_fast_path_agrees_with_own_parser(raw: str, as_bytes: bool) -> None:
    """normalize() takes the C parser when it can; the output must not change by it."""
    text: str | bytes = raw.encode("utf-8", "surrogatepass") if as_bytes else raw
    assert _outcome(normalize, text) == _outcome(jsonnorm._normalize_slow, text)


# --- the plain path (ASCII without escapes, in C) ------------------------------------------

_PLAIN_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7F, exclude_characters='"\\'),
        st.sampled_from("<>&-0"),
    ),
    max_size=8,
)
_PLAIN_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**40), max_value=10**40),
        st.floats(allow_nan=False, allow_infinity=False),
        _PLAIN_TEXT,
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_PLAIN_TEXT, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        st.dictionaries(_PLAIN_TEXT, _PLAIN_VALUES, max_size=6).map(
            lambda o: json.dumps(o, ensure_ascii=False)
        ),
        st.builds(
            _dump_shuffled,
            st.dictionaries(_PLAIN_TEXT, _PLAIN_VALUES, max_size=6),
            st.randoms(use_true_random=False),
        ),
        st.lists(st.sampled_from(_TOKENS), max_size=14).map("".join),
    ),
    st.booleans(),
)
def test_prop_plain_path_agrees_with_own_parser(raw: str, as_bytes: bool) -> None:
    """The C-only path for plain ASCII gives our parser's bytes, or steps aside."""
    _assert_plain_agrees(raw.encode("utf-8", "surrogatepass") if as_bytes else raw)


def _assert_plain_agrees(text: str | bytes) -> None:
    """The plain path gives our parser's bytes where it answers, and normalize() its outcome."""
    plain = jsonnorm._plain(text)
    if plain is not None:
        assert plain == jsonnorm._normalize_slow(text)
    assert _outcome(normalize, text) == _outcome(jsonnorm._normalize_slow, text)


def test_plain_path_takes_the_common_case_and_leaves_the_rest() -> None:
    """A quest's usual parameters go through the C path; what Go writes otherwise does not."""
    leaf = '{"name": "leaf1", "return_stage": {"retval": 1}, "ok": [true, null, -3]}'
    assert (
        jsonnorm._plain(leaf) == '{"name":"leaf1","ok":[true,null,-3],"return_stage":{"retval":1}}'
    )
    assert jsonnorm._plain(leaf.encode()) == jsonnorm._normalize_slow(leaf)
    assert jsonnorm._plain("{}") == "{}"
    for other in ('{"a": 1.0}', '{"a": 1e2}', '{"a": -0}', '{"a": "<"}', '{"a": "\\n"}',
                  '{"a": "\u00e9"}', '[]', 'null', '{"a": NaN}', '{"a": 1'):  # fmt: skip
        assert jsonnorm._plain(other) is None, other
    assert normalize('{"a": 1e2, "b": -0}') == '{"a":1e2,"b":-0}'


_NO_FLOAT_TOKENS = [
    "{", "}", "[", "]", ":", ",", " ", "\t", "\n", "\r", "\x0b", "\x0c", '"a"', '"b"', '"a b"',
    '"\x01"', '"\x1f"', '"/"', '"\x7f"', '"e1"', "0", "1", "12", "-1", "01", "-", "00",
    "1" + "0" * 40, "-" + "9" * 30, "true", "false", "null", "nul", "tru", "x",
]  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(
        st.lists(st.sampled_from(_NO_FLOAT_TOKENS), max_size=16).map("".join),
        st.builds(
            lambda keys, n: "{" + ",".join(f'"{k}":' + "[" * n + "]" * n for k in keys) + "}",
            st.lists(st.sampled_from("abc"), max_size=3),
            st.integers(0, 1100),
        ),
    ),
    st.booleans(),
)
def test_prop_plain_path_without_floats_agrees_with_own_parser(raw: str, as_bytes: bool) -> None:
    """Plain text without a float literal goes through msgspec: the same bytes as our
    parser (raw control characters, odd whitespace, repeated keys, big ints, deep
    nesting), or it steps aside."""
    _assert_plain_agrees(raw.encode() if as_bytes else raw)


def test_plain_path_reads_a_float_look_alike_in_a_string() -> None:
    """ "v1.2" or "1e" inside a string is no number: still the plain path, still exact."""
    raw = '{"tag": "v1.2", "k": "1e", "n": 12}'
    assert jsonnorm._FLOAT_LIKE.search(raw) is not None  # the scanner's branch
    assert jsonnorm._plain(raw) == '{"k":"1e","n":12,"tag":"v1.2"}' == jsonnorm._normalize_slow(raw)
    assert jsonnorm._plain('{"b": 2, "a": [1, {"d": null, "c": true}]}') == (
        '{"a":[1,{"c":true,"d":null}],"b":2}'
    )
