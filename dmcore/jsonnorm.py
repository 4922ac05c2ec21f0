"""Go ``encoding/json``-compatible JSON normalisation.

LUCI Dungeon Master hashed quest parameters after a Go ``json.Decoder``
(``UseNumber``) into ``map[string]interface{}`` followed by ``json.Marshal``.
Quest IDs depend on those exact bytes, so this module reproduces that output:
compact, object keys sorted by their UTF-8 bytes, number literals kept verbatim,
Go's HTML-safe string escaping, and invalid UTF-8 / lone surrogates replaced by
U+FFFD the way Go's decoder does it.
"""

from __future__ import annotations

import _json
import json
import re
from collections.abc import Iterator
from itertools import repeat
from typing import Any, Final, TypeAlias, cast

import msgspec

__all__ = [
    "MAX_DEPTH",
    "MAX_QUEST_PAYLOAD",
    "MAX_RESULT_NORMALISED",
    "MAX_RESULT_RAW",
    "JsonError",
    "normalize",
    "normalize_object",
    "normalize_result",
]

MAX_DEPTH: Final = 10_000  # Go's scanner maxNestingDepth
MAX_RESULT_RAW: Final = 288_358
MAX_RESULT_NORMALISED: Final = 262_144
MAX_QUEST_PAYLOAD: Final = 262_144


class JsonError(ValueError):
    """The input is not JSON that DM would accept."""


class _Literal:
    """A number, ``true``, ``false`` or ``null``: re-emitted verbatim."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


_Value: TypeAlias = "dict[str, _Value] | list[_Value] | str | _Literal"

_TRUE: Final = _Literal("true")
_FALSE: Final = _Literal("false")
_NULL: Final = _Literal("null")
_KEYWORDS: Final = ((b"true", _TRUE), (b"false", _FALSE), (b"null", _NULL))

_WS: Final = re.compile(rb"[ \t\n\r]*")
_NUMBER: Final = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# Bytes that may not directly follow a number (they would make it malformed).
_NUMBER_TAIL: Final = frozenset(
    b"0123456789.eE+-_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_STR_CHUNK: Final = re.compile(rb'[^"\\\x00-\x1f]*')
_HEX4: Final = re.compile(rb"[0-9a-fA-F]{4}")
# A run of well-formed UTF-8 sequences (same acceptance as Go's utf8.DecodeRune).
_VALID_UTF8: Final = re.compile(
    rb"(?:[\x00-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]"
    rb"|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2})*"
)
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")
_SIMPLE_ESCAPES: Final = {
    ord('"'): '"',
    ord("\\"): "\\",
    ord("/"): "/",
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
}

# Output escaping, as Go's encodeState.string with escapeHTML (pre Go 1.22,
# which escapes \b and \f as \u0008 and \u000c).
_ESCAPE_TABLE: Final[dict[int, str]] = {c: f"\\u{c:04x}" for c in range(0x20)}
_ESCAPE_TABLE.update(
    {
        ord('"'): '\\"',
        ord("\\"): "\\\\",
        ord("\n"): "\\n",
        ord("\r"): "\\r",
        ord("\t"): "\\t",
        ord("<"): "\\u003c",
        ord(">"): "\\u003e",
        ord("&"): "\\u0026",
        0x2028: "\\u2028",
        0x2029: "\\u2029",
    }
)


def _syntax(msg: str, pos: int) -> JsonError:
    return JsonError(f"invalid JSON: {msg} at byte {pos}")


def _describe(c: int) -> str:
    if 0x20 < c < 0x7F:
        return f"character {chr(c)!r}"
    return f"byte 0x{c:02x}"


def _skip_ws(data: bytes, i: int) -> int:
    m = _WS.match(data, i)
    return m.end() if m else i


def _decode_utf8(chunk: bytes) -> str:
    """Decode like Go: each byte that does not start a valid sequence is one U+FFFD."""
    try:
        return chunk.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out: list[str] = []
    i, n = 0, len(chunk)
    while i < n:
        m = _VALID_UTF8.match(chunk, i)
        j = m.end() if m else i
        if j > i:
            out.append(chunk[i:j].decode("utf-8"))
            i = j
        if i < n:
            out.append("\ufffd")
            i += 1
    return "".join(out)


def _to_bytes(raw: str | bytes) -> bytes:
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    if isinstance(raw, str):
        try:
            return raw.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATE.sub("\ufffd", raw).encode("utf-8")
    raise JsonError(f"expected JSON text as str or bytes, got {type(raw).__name__}")


class _Parser:
    """Iterative (no recursion) parser over UTF-8 bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.n = len(data)

    def document(self) -> _Value:
        data = self.data
        if data.startswith(b"\xef\xbb\xbf"):
            raise _syntax("a byte order mark (BOM) is not allowed", 0)
        i = _skip_ws(data, 0)
        if i >= self.n:
            raise JsonError("empty input: expected a JSON object")
        value, i = self.value(i)
        i = _skip_ws(data, i)
        if i < self.n:
            raise _syntax("extra data after the top-level value", i)
        return value

    def _eof(self, what: str) -> JsonError:
        return _syntax(f"unexpected end of input {what}", self.n)

    def value(self, i: int) -> tuple[_Value, int]:
        data, n = self.data, self.n
        stack: list[dict[str, _Value] | list[_Value]] = []
        keys: list[str] = []  # parallel to stack: pending key ("" for arrays)
        while True:
            # Expecting a value at i.
            i = _skip_ws(data, i)
            if i >= n:
                raise self._eof("looking for a value")
            c = data[i]
            value: _Value
            if c in b"{[":
                if len(stack) >= MAX_DEPTH:
                    raise _syntax(f"nesting depth exceeds {MAX_DEPTH}", i)
                close = 0x7D if c == 0x7B else 0x5D
                j = _skip_ws(data, i + 1)
                if j < n and data[j] == close:
                    value = {} if c == 0x7B else []
                    i = j + 1
                elif c == 0x7B:
                    key, i = self.key(j)
                    stack.append({})
                    keys.append(key)
                    continue
                else:
                    stack.append([])
                    keys.append("")
                    i = j
                    continue
            elif c == 0x22:
                value, i = self.string(i)
            else:
                value, i = self.scalar(i)

            # Store the value in its container; close finished containers.
            while True:
                if not stack:
                    return value, i
                top = stack[-1]
                is_obj = isinstance(top, dict)
                if isinstance(top, dict):
                    top[keys[-1]] = value  # duplicate keys: last one wins
                else:
                    top.append(value)
                i = _skip_ws(data, i)
                if i >= n:
                    raise self._eof("inside an object" if is_obj else "inside an array")
                c = data[i]
                if c == 0x2C:
                    if is_obj:
                        keys[-1], i = self.key(i + 1)
                    else:
                        i += 1
                    break
                if c == (0x7D if is_obj else 0x5D):
                    i += 1
                    value = stack.pop()
                    keys.pop()
                    continue
                expected = "',' or '}'" if is_obj else "',' or ']'"
                raise _syntax(f"unexpected {_describe(c)}, expected {expected}", i)

    def key(self, i: int) -> tuple[str, int]:
        """Parse `"key" :` starting at i (whitespace allowed); return key and next index."""
        data = self.data
        i = _skip_ws(data, i)
        if i >= self.n:
            raise self._eof("looking for an object key")
        if data[i] != 0x22:
            raise _syntax(f"unexpected {_describe(data[i])}, expected a string object key", i)
        key, i = self.string(i)
        i = _skip_ws(data, i)
        if i >= self.n:
            raise self._eof("after an object key")
        if data[i] != 0x3A:
            raise _syntax(f"unexpected {_describe(data[i])} after an object key, expected ':'", i)
        return key, i + 1

    def scalar(self, i: int) -> tuple[_Literal, int]:
        data, n = self.data, self.n
        c = data[i]
        if c == 0x2D or 0x30 <= c <= 0x39:
            if data.startswith(b"-Infinity", i):
                raise _syntax("-Infinity is not allowed", i)
            m = _NUMBER.match(data, i)
            if m is None or (m.end() < n and data[m.end()] in _NUMBER_TAIL):
                raise _syntax("invalid number literal", i)
            return _Literal(m.group().decode("ascii")), m.end()
        for word, literal in _KEYWORDS:
            if data.startswith(word, i):
                return literal, i + len(word)
        if data.startswith(b"NaN", i):
            raise _syntax("NaN is not allowed", i)
        if data.startswith(b"Infinity", i):
            raise _syntax("Infinity is not allowed", i)
        if c in b"+.":
            raise _syntax("invalid number literal", i)
        if c in b"tfn":
            raise _syntax("invalid literal", i)
        raise _syntax(f"unexpected {_describe(c)} looking for a value", i)

    def string(self, start: int) -> tuple[str, int]:
        """Parse the string whose opening quote is at start."""
        data, n = self.data, self.n
        parts: list[str] = []
        i = start + 1
        while True:
            m = _STR_CHUNK.match(data, i)
            j = m.end() if m else i
            if j > i:
                parts.append(_decode_utf8(data[i:j]))
            if j >= n:
                raise _syntax("unterminated string starting", start)
            c = data[j]
            if c == 0x22:
                return "".join(parts), j + 1
            if c != 0x5C:
                raise _syntax(f"control character 0x{c:02x} in string", j)
            if j + 1 >= n:
                raise _syntax("unterminated string starting", start)
            e = data[j + 1]
            simple = _SIMPLE_ESCAPES.get(e)
            if simple is not None:
                parts.append(simple)
                i = j + 2
                continue
            if e != 0x75 or not _HEX4.match(data, j + 2):
                raise _syntax("invalid escape sequence in string", j)
            cp = int(data[j + 2 : j + 6], 16)
            i = j + 6
            if 0xD800 <= cp < 0xE000:
                # Go: a valid high+low pair combines; anything else is U+FFFD.
                lo = -1
                if data.startswith(b"\\u", i) and _HEX4.match(data, i + 2):
                    lo = int(data[i + 2 : i + 6], 16)
                if cp < 0xDC00 and 0xDC00 <= lo < 0xE000:
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                    i += 6
                else:
                    cp = 0xFFFD
            parts.append(chr(cp))


def _quote(s: str) -> str:
    return '"' + s.translate(_ESCAPE_TABLE) + '"'


def _utf8_key(item: tuple[str, _Value]) -> bytes:
    return item[0].encode("utf-8")


def _emit(root: _Value) -> str:
    """Compact output with sorted keys; iterative so deep nesting is fine."""
    out: list[str] = []
    stack: list[tuple[Iterator[tuple[str | None, _Value]], str]] = []
    value = root
    first = True  # no element emitted yet in the innermost open container
    while True:
        if isinstance(value, dict):
            out.append("{")
            items = sorted(value.items(), key=_utf8_key)
            stack.append((iter(items), "}"))
            first = True
        elif isinstance(value, list):
            out.append("[")
            stack.append((zip(repeat(None), value), "]"))
            first = True
        elif isinstance(value, str):
            out.append(_quote(value))
        else:
            out.append(value.text)
        while stack:
            pending, close = stack[-1]
            item = next(pending, None)
            if item is None:
                out.append(close)
                stack.pop()
                first = False
                continue
            if not first:
                out.append(",")
            first = False
            key, value = item
            if key is not None:
                out.append(_quote(key))
                out.append(":")
            break
        else:
            return "".join(out)


def _type_name(value: _Value) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value.text in ("true", "false"):
        return "boolean"
    if value.text == "null":
        return "null"
    return "number"


def _reject_constant(name: str) -> _Value:
    raise ValueError(name)


def _fast_parse(raw: str | bytes) -> _Value | None:
    """The common case through the C parser; None whenever it might differ from Go.

    Only ASCII text without ``\\u`` escapes qualifies: there the C parser and
    ours agree on every string, and ``parse_int``/``parse_float`` hand over the
    number literals as written. Anything it rejects (or nests too deeply for
    it) goes to :class:`_Parser`, which also words the error.
    """
    if isinstance(raw, str):
        if not raw.isascii() or "\\u" in raw:
            return None
    elif not isinstance(raw, bytes) or not raw.isascii() or b"\\u" in raw:
        return None
    try:
        value: _Value = json.loads(
            raw,
            parse_int=_Literal,
            parse_float=_Literal,
            parse_constant=_reject_constant,
            object_hook=_literal_keywords,
        )
    except (ValueError, RecursionError):
        return None
    return value  # a dict has been through object_hook; anything else is not used


def _literal_keywords(container: Any) -> Any:
    """Turn the parser's True/False/None inside ``container`` into literals (in place)."""
    items = container.items() if isinstance(container, dict) else enumerate(container)
    for k, v in items:
        if v is None or v is True or v is False:
            container[k] = _NULL if v is None else _TRUE if v else _FALSE
        elif isinstance(v, list):
            _literal_keywords(v)
    return container


def _reject_float(text: str) -> Any:
    raise _NotPlain(text)


class _NotPlain(ValueError):
    """A float literal: Python would re-write it (``1e2`` as ``100.0``), Go keeps it."""


def _unencodable(value: object) -> Any:
    raise TypeError(type(value).__name__)  # never reached: decoded JSON only


# Both in C (CPython's own accelerator, which json uses too): the scanner hands floats
# to _reject_float (ints and keywords round-trip exactly: a JSON int has no leading
# zero, and "-0" is kept off this path); the encoder is built once (json.dumps with
# options builds one a call, half of its time).
_PLAIN_SCAN: Final = _json.make_scanner(
    cast(Any, json.JSONDecoder(parse_float=_reject_float, parse_constant=_reject_float))
)
_PLAIN_ENCODE: Final = _json.make_encoder(
    None, _unencodable, _json.encode_basestring, None, ":", ",", True, False, False
)


_FLOAT_LIKE: Final = re.compile("[0-9][.eE]")
_MSGSPEC_DECODE: Final = msgspec.json.Decoder().decode
_MSGSPEC_ENCODE: Final = msgspec.json.Encoder(order="sorted").encode


def _plain(raw: str | bytes) -> str | None:
    """The most common case, entirely in C; None whenever it might differ from Go.

    Only ASCII text without a backslash (so no escape at all: every string is
    written back as it came), without ``<``, ``>``, ``&`` (which Go escapes),
    without ``-0`` (kept verbatim by Go, ``0`` by Python) and without a float
    literal (the scanner refuses those). There Python's compact, key-sorted output
    is Go's byte for byte: ASCII keys sort the same as strings and as UTF-8; so is
    msgspec's, which reads and writes the text when no float can be in it.
    """
    if raw == "{}":
        return raw  # distributor parameters, most of the time
    if isinstance(raw, bytes):
        if not raw.isascii():
            return None
        raw = raw.decode("ascii")
    elif not isinstance(raw, str) or not raw.isascii():
        return None
    if "\\" in raw or "<" in raw or ">" in raw or "&" in raw or "-0" in raw:
        return None
    if _FLOAT_LIKE.search(raw) is None:
        # No float literal (a digit then ".", "e" or "E", wherever it is): msgspec
        # reads and writes it ~5x faster than the scanner and encoder below, to the
        # same bytes (ints of any size exact, the last of two equal keys, keys sorted
        # as str), and refuses what they refuse (too deep: RecursionError).
        try:
            value = _MSGSPEC_DECODE(raw)
        except (msgspec.DecodeError, RecursionError):
            return None  # the other paths decide and word the error
        return _MSGSPEC_ENCODE(value).decode() if isinstance(value, dict) else None
    text = raw.strip(" \t\n\r")
    try:
        value, end = _PLAIN_SCAN(text, 0)
        if end != len(text) or not isinstance(value, dict):
            return None
        return "".join(_PLAIN_ENCODE(value, 0))
    except (StopIteration, ValueError, RecursionError):
        return None  # _NotPlain, or not JSON: the other paths decide and word the error


def normalize(raw: str | bytes, *, allow_null: bool = True) -> str:
    """Return Go's ``json.Marshal`` of ``raw`` decoded into a map; raise JsonError if invalid.

    The top level must be an object; a bare ``null`` gives ``"null"`` unless
    ``allow_null`` is false.
    """
    plain = _plain(raw)
    if plain is not None:
        return plain
    fast = _fast_parse(raw)
    if isinstance(fast, dict):
        return _emit(fast)
    return _normalize_slow(raw, allow_null=allow_null)


def _normalize_slow(raw: str | bytes, *, allow_null: bool = True) -> str:
    """:func:`normalize` by our own parser alone (the reference for the fast path)."""
    value = _Parser(_to_bytes(raw)).document()
    if isinstance(value, dict):
        return _emit(value)
    if allow_null and value is _NULL:
        return "null"
    raise JsonError(f"JSON must be an object, got {_type_name(value)}")


def normalize_object(raw: str | bytes) -> str:
    """Like :func:`normalize`, but a top-level ``null`` is rejected too."""
    return normalize(raw, allow_null=False)


def normalize_result(obj: str) -> tuple[str, int]:
    """Normalise a JsonResult object; return it with its size in bytes.

    An empty string means "no result" and gives ``("", 0)``.
    """
    if obj == "":
        return "", 0
    raw = _to_bytes(obj)
    if len(raw) > MAX_RESULT_RAW:
        raise JsonError(
            f"result JSON is too large: {len(raw)} bytes exceeds the limit of "
            f"{MAX_RESULT_RAW} bytes"
        )
    normed = normalize(raw, allow_null=False)
    size = len(normed.encode("utf-8"))
    if size > MAX_RESULT_NORMALISED:
        raise JsonError(
            f"normalised result JSON is too large: {size} bytes exceeds the limit of "
            f"{MAX_RESULT_NORMALISED} bytes"
        )
    return normed, size
