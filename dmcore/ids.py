"""Quest, attempt and execution identifiers.

A quest's ID is the hash of its normalised description, bit-compatible with
LUCI Dungeon Master: SHA-256 over the protobuf wire encoding of the normalised
``Quest.Desc`` (with ``meta``, ``meta.retry`` and ``meta.timeouts`` always
present), URL-safe base64, the final pad character dropped: 43 characters.

Attempts and executions are stored under keys whose number is inverted
(``0xFFFFFFFF ^ n`` as 8 lower-case hex digits) so that, in key order, newer
ones come first.
"""

from __future__ import annotations

import binascii
import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from dmcore import jsonnorm
from dmcore.errors import InvalidArgument
from dmcore.proto import dm_pb2

QUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
MAX_QUEST_PAYLOAD = 262_144
MAX_NUM = 0xFFFFFFFF


def check_quest_id(qid: str, field: str = "quest") -> str:
    """Return ``qid`` if it looks like a quest ID, else raise InvalidArgument naming ``field``."""
    if not isinstance(qid, str) or not QUEST_ID_RE.match(qid):
        raise InvalidArgument(f"{field}: not a quest ID (43 URL-safe base64 characters): {qid!r}")
    return qid


def _json_field(value: Any, field: str) -> str:
    """A JSON parameter given as text (protobuf JSON) or as an object (convenience)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        try:
            return json.dumps(value, ensure_ascii=False, allow_nan=False)
        except ValueError:  # inf or NaN: a YAML .inf/.nan, or a JSON number like 1e400
            raise InvalidArgument(
                f"{field}: a number is out of range or not a number (inf, NaN, 1e400): "
                "JSON has no such value"
            ) from None
    raise InvalidArgument(f"{field}: must be a JSON object or a string holding one")


def desc_from_json(obj: Mapping[str, Any]) -> dm_pb2.Quest.Desc:
    """Build a Quest.Desc from its protobuf JSON form.

    ``parameters`` and ``distributor_parameters`` may be given as objects
    instead of strings. Unknown fields are an error.
    """
    if not isinstance(obj, Mapping):
        raise InvalidArgument("quest: must be a JSON object")
    data = dict(obj)
    for key in ("parameters", "distributor_parameters"):
        if key in data:
            data[key] = _json_field(data[key], key)
    desc = dm_pb2.Quest.Desc()
    try:
        json_format.ParseDict(data, desc)
    except json_format.ParseError as e:
        raise InvalidArgument(f"quest: {e}") from None
    return desc


def normalize_desc(desc: dm_pb2.Quest.Desc | Mapping[str, Any]) -> dm_pb2.Quest.Desc:
    """A normalised copy of ``desc``; raises InvalidArgument naming the bad field."""
    src = desc if isinstance(desc, dm_pb2.Quest.Desc) else desc_from_json(desc)
    name, raw_params, raw_dist = (
        src.distributor_config_name,
        src.parameters,
        src.distributor_parameters,
    )
    if not name:
        raise InvalidArgument("distributor_config_name: required")
    payload = len(raw_params.encode()) + len(raw_dist.encode())
    if payload > MAX_QUEST_PAYLOAD:
        raise InvalidArgument(
            f"parameters + distributor_parameters: {payload} bytes, over the "
            f"{MAX_QUEST_PAYLOAD}-byte limit"
        )
    params = _normalized(raw_params, "parameters")
    # "{}" is normal already, and most quests' distributor parameters.
    dist_params = raw_dist if raw_dist == "{}" else _normalized(raw_dist, "distributor_parameters")
    out = dm_pb2.Quest.Desc()
    if not src.HasField("meta"):
        # The common case (a request of thousands of quests): the empty meta copied
        # from a template and three fields set cost a third of copying the request's
        # description and making its meta present field by field.
        out.CopyFrom(_NO_META)
        out.distributor_config_name = name
        out.parameters = params
        out.distributor_parameters = dist_params
        return out  # the request's unknown fields left behind: they would change the hash
    out.CopyFrom(src)
    out.DiscardUnknownFields()  # unknown fields would change the hash
    # Set only if normalising changed them (setting a string field copies and checks it).
    if params != raw_params:
        out.parameters = params
    if dist_params != raw_dist:
        out.distributor_parameters = dist_params
    meta = out.meta
    meta.retry.SetInParent()
    timeouts = meta.timeouts
    timeouts.SetInParent()
    for field, d in timeouts.ListFields():  # the timeouts set, if any
        if d.seconds < 0 or d.nanos < 0:
            raise InvalidArgument(f"meta.timeouts.{field.name}: must not be negative")
    return out


_NO_META = dm_pb2.Quest.Desc(
    meta=dm_pb2.Quest.Desc.Meta(
        retry=dm_pb2.Quest.Desc.Meta.Retry(), timeouts=dm_pb2.Quest.Desc.Meta.Timeouts()
    )
)
"""A description without meta, normalised: its meta, retry and timeouts present."""


def _normalized(raw: str, field: str) -> str:
    try:
        return jsonnorm.normalize(raw)
    except jsonnorm.JsonError as e:
        raise InvalidArgument(f"{field}: {e}") from None


def quest_id_of_normalized(desc: dm_pb2.Quest.Desc) -> str:
    """The ID of an already normalised description."""
    return quest_id_and_wire(desc)[0]


def quest_id_and_wire(desc: dm_pb2.Quest.Desc) -> tuple[str, bytes]:
    """The ID of an already normalised description, and the wire bytes it hashes
    (a caller that stores the description too serialises it once)."""
    wire = desc.SerializeToString(deterministic=True)
    digest = hashlib.sha256(wire).digest()
    # base64.urlsafe_b64encode, without its Python-level wrappers (one call per quest).
    return binascii.b2a_base64(digest, newline=False).translate(_URLSAFE).decode()[:-1], wire


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def quest_id(desc: dm_pb2.Quest.Desc | Mapping[str, Any]) -> str:
    """The 43-character quest ID of ``desc`` (a Quest.Desc or its protobuf JSON dict)."""
    return quest_id_of_normalized(normalize_desc(desc))


def _check_num(n: int, what: str) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_NUM:
        raise InvalidArgument(f"{what}: must be a number from 1 to {MAX_NUM}, got {n!r}")
    return n


def _encode_num(n: int) -> str:
    return f"{MAX_NUM ^ n:08x}"


def _decode_num(s: str, what: str) -> int:
    if not re.fullmatch(r"[0-9a-f]{8}", s):
        raise InvalidArgument(f"{what}: bad encoded number {s!r}")
    return _check_num(MAX_NUM ^ int(s, 16), what)


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class AttemptID:
    """Attempt ``num`` (>= 1, chosen by the client) of quest ``quest``.

    Slotted: a request may make 100,000 of them, and without a ``__dict__`` each is
    one object for the garbage collector, not two (and its fields read faster)."""

    quest: str
    num: int
    encoded: str = dataclasses.field(init=False, repr=False, compare=False)
    """Storage key: ``<quest>|<inverted hex>``, newer attempts first."""

    def __post_init__(self) -> None:
        _check_num(self.num, "attempt")
        # Made with the ID (nearly every one is stored or read): a cached property
        # costs several times more on its first use (its lock).
        object.__setattr__(self, "encoded", f"{self.quest}|{MAX_NUM ^ self.num:08x}")

    @classmethod
    def decode(cls, s: str) -> AttemptID:
        """The attempt of storage key ``s`` (:attr:`encoded`)."""
        return _decode_attempt_id(s)

    @classmethod
    def _decode(cls, s: str) -> AttemptID:
        quest, sep, num = s.partition("|")
        if not sep:
            raise InvalidArgument(f"attempt: bad encoded attempt ID {s!r}")
        return cls(quest, _decode_num(num, "attempt"))

    def __str__(self) -> str:
        return f"{self.quest}|{self.num}"

    @classmethod
    def parse(cls, s: str) -> AttemptID:
        """Parse the text form ``<quest>|<num>``."""
        quest, sep, num = s.partition("|")
        if not sep or not num.isdigit():
            raise InvalidArgument(f"attempt: expected QUEST|NUM, got {s!r}")
        return cls(check_quest_id(quest), int(num))

    def execution(self, num: int) -> ExecutionID:
        return ExecutionID(self.quest, self.num, num)

    def to_proto(self) -> dm_pb2.Attempt.ID:
        return dm_pb2.Attempt.ID(quest=self.quest, id=self.num)

    @classmethod
    def from_proto(cls, p: dm_pb2.Attempt.ID, field: str = "attempt") -> AttemptID:
        check_quest_id(p.quest, f"{field}.quest")
        return cls(p.quest, _check_num(p.id, f"{field}.id"))


@dataclasses.dataclass(frozen=True, order=True)
class ExecutionID:
    """Execution ``num`` (1, 2, 3 ... contiguous) of attempt ``attempt`` of ``quest``."""

    quest: str
    attempt: int
    num: int

    def __post_init__(self) -> None:
        _check_num(self.attempt, "attempt")
        _check_num(self.num, "execution")

    @functools.cached_property
    def attempt_id(self) -> AttemptID:
        return AttemptID(self.quest, self.attempt)

    @functools.cached_property
    def encoded_num(self) -> str:
        """Storage key of the execution under its attempt, newer executions first."""
        return _encode_num(self.num)

    def __str__(self) -> str:
        return f"{self.quest}|{self.attempt}|{self.num}"

    @classmethod
    def parse(cls, s: str) -> ExecutionID:
        """Parse the text form ``<quest>|<attempt>|<execution>``."""
        return _parse_execution_id(s)

    @classmethod
    def _parse(cls, s: str) -> ExecutionID:
        parts = s.split("|")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise InvalidArgument(f"execution: expected QUEST|ATTEMPT|EXECUTION, got {s!r}")
        return cls(check_quest_id(parts[0]), int(parts[1]), int(parts[2]))

    @classmethod
    def decode_num(cls, attempt: AttemptID, s: str) -> ExecutionID:
        return cls(attempt.quest, attempt.num, _decode_num(s, "execution"))

    def to_proto(self) -> dm_pb2.Execution.ID:
        return dm_pb2.Execution.ID(quest=self.quest, attempt=self.attempt, id=self.num)

    @classmethod
    def from_proto(cls, p: dm_pb2.Execution.ID, field: str = "execution") -> ExecutionID:
        check_quest_id(p.quest, f"{field}.quest")
        return cls(
            p.quest, _check_num(p.attempt, f"{field}.attempt"), _check_num(p.id, f"{field}.id")
        )


@functools.lru_cache(maxsize=32768)
def _decode_attempt_id(s: str) -> AttemptID:
    # Immutable, and the steps of one attempt decode its key about ten times, spread
    # over the work of all the attempts in flight (a fan-in of 10,000: with 4,096 kept,
    # half of them missed); each entry about 0.5 KiB.
    return AttemptID._decode(s)


@functools.lru_cache(maxsize=4096)
def _parse_execution_id(s: str) -> ExecutionID:
    # IDs are immutable and a step parses the same few many times (payloads, paths).
    return ExecutionID._parse(s)
