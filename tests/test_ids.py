"""Quest IDs (DM's test vectors) and attempt/execution encodings."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmcore import ids
from dmcore.errors import InvalidArgument
from dmcore.proto import dm_pb2

VECTOR_1 = "1258phYs8GW6qM5AQopQ_L3A5cZhO7iaYQZyFkNusVw"
VECTOR_2 = "IMTBeXfkZgGntgNfWMuLa_YQA62o9dzxi0EoLCYXbsE"


def _desc(params: str, dist: str = "{  }") -> dm_pb2.Quest.Desc:
    return dm_pb2.Quest.Desc(
        distributor_config_name="swarming", parameters=params, distributor_parameters=dist
    )


def test_vector_1() -> None:
    assert ids.quest_id(_desc('{  "key"  :  ["value"]}')) == VECTOR_1


def test_vector_2() -> None:
    assert ids.quest_id(_desc('{"key":["value"], "abc": true}')) == VECTOR_2


def test_vector_from_json_dict_form() -> None:
    d = {
        "distributor_config_name": "swarming",
        "parameters": '{  "key"  :  ["value"]}',
        "distributor_parameters": "{  }",
    }
    assert ids.quest_id(d) == VECTOR_1
    # Parameters may be given as objects too.
    assert (
        ids.quest_id({**d, "parameters": {"key": ["value"]}, "distributor_parameters": {}})
        == VECTOR_1
    )


def _raw_hash(desc: dm_pb2.Quest.Desc) -> str:
    digest = hashlib.sha256(desc.SerializeToString()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:-1]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.text(min_size=1, max_size=10))
def test_quest_id_is_the_url_safe_base64_of_the_hash(tag: str, name: str) -> None:
    # Every digest byte pattern, so "+" and "/" (as "-" and "_") are met too.
    d = ids.normalize_desc(_desc(json.dumps({"tag": tag}), "{}"))
    d.distributor_config_name = name
    digest = hashlib.sha256(d.SerializeToString(deterministic=True)).digest()
    assert ids.quest_id_of_normalized(d) == base64.urlsafe_b64encode(digest).decode()[:-1]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            ids.AttemptID,
            st.from_regex(r"[A-Za-z0-9_-]{43}", fullmatch=True),
            st.integers(min_value=1, max_value=ids.MAX_NUM),
        ),
        max_size=20,
    )
)
def test_encoded_ids_sort_by_quest_then_newest_attempt(aids: list[ids.AttemptID]) -> None:
    # The service orders a memoised answer by encoded ID, as WalkGraph orders a query.
    by_encoded = sorted(aids, key=lambda a: a.encoded)
    assert by_encoded == sorted(aids, key=lambda a: (a.quest, -a.num))
    assert all(ids.AttemptID.decode(a.encoded) == a for a in aids)


def test_meta_without_empty_submessages_differs() -> None:
    d = _desc('{"key":["value"]}', "{}")
    d.meta.SetInParent()
    assert _raw_hash(d) == "pTK6uvJl3rgOmuEdsMemCZ_3l6sn-yOpLFVDg_VFy4o"
    assert (
        _raw_hash(_desc('{"key":["value"]}', "{}")) == "KS5LstzfuJ9-Uj1Jc52k7WKijG2xhWepmO7N0LA-Egk"
    )
    assert ids.quest_id(d) == VECTOR_1


def test_normalized_desc_always_has_meta() -> None:
    n = ids.normalize_desc(_desc('{"a":1}'))
    assert n.HasField("meta") and n.meta.HasField("retry") and n.meta.HasField("timeouts")
    assert n.parameters == '{"a":1}' and n.distributor_parameters == "{}"


def test_id_shape() -> None:
    qid = ids.quest_id(_desc("{}"))
    assert len(qid) == 43 and ids.QUEST_ID_RE.match(qid)


def test_explicit_zero_timeout_changes_id() -> None:
    a = _desc("{}")
    b = _desc("{}")
    b.meta.timeouts.start.SetInParent()
    assert ids.quest_id(a) != ids.quest_id(b)


def test_unknown_fields_are_not_hashed() -> None:
    d = _desc("{}")
    raw = d.SerializeToString() + b"\xa8\x06\x01"  # field 101, varint 1
    with_unknown = dm_pb2.Quest.Desc.FromString(raw)
    assert ids.quest_id(with_unknown) == ids.quest_id(d)


def test_descriptions_with_and_without_meta_normalise_alike() -> None:
    """normalize_desc has a path for a description without meta (a template copied)
    and one for the rest: an absent meta, an empty one and one holding only unknown
    fields give the same message, the same bytes and the same ID."""
    plain = _desc('{"b": 1, "a": [true]}', '{"z": {}, "y": 2}')
    empty = _desc('{"b": 1, "a": [true]}', '{"z": {}, "y": 2}')
    empty.meta.SetInParent()
    unknown_meta = dm_pb2.Quest.Desc.FromString(
        plain.SerializeToString() + b"\x22\x03\xa8\x06\x01"  # meta: field 101, varint 1
    )
    assert unknown_meta.HasField("meta")
    got = [ids.normalize_desc(d) for d in (plain, empty, unknown_meta)]
    assert got[0] == got[1] == got[2]
    assert len({ids.quest_id_and_wire(n)[1] for n in got}) == 1
    assert got[0].parameters == '{"a":[true],"b":1}' and got[0].distributor_parameters == (
        '{"y":2,"z":{}}'
    )
    assert got[0].meta.HasField("retry") and got[0].meta.HasField("timeouts")
    assert b"\xa8\x06" not in got[2].SerializeToString()  # the unknown field dropped
    qid, wire = ids.quest_id_and_wire(got[0])
    assert qid == ids.quest_id(plain) and wire == got[0].SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("params", "dist", "match"),
    [
        ("[1]", "{}", r"parameters: .*object"),
        ('{"a":1} x', "{}", r"parameters: .*(junk|extra)"),
        ("", "{}", "parameters: "),
        ("{}", "7", r"distributor_parameters: .*object"),
        ('{"a":NaN}', "{}", "parameters: "),
    ],
)
def test_bad_json_names_the_field(params: str, dist: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        ids.quest_id(_desc(params, dist))


def test_payload_limit() -> None:
    big = '{"a":"' + "x" * (262_144 - 8) + '"}'
    with pytest.raises(InvalidArgument, match="262144-byte limit"):
        ids.quest_id(_desc(big, "{}"))
    ok = '{"a":"' + "x" * (262_144 - 10) + '"}'
    assert len(ok) + 2 == 262_144
    assert len(ids.quest_id(_desc(ok, "{}"))) == 43


def test_negative_timeout() -> None:
    d = _desc("{}")
    d.meta.timeouts.run.seconds = -1
    with pytest.raises(InvalidArgument, match=r"meta\.timeouts\.run: must not be negative"):
        ids.quest_id(d)


def test_missing_config_name() -> None:
    with pytest.raises(InvalidArgument, match="distributor_config_name: required"):
        ids.quest_id({"parameters": "{}", "distributor_parameters": "{}"})


def test_unknown_json_field() -> None:
    with pytest.raises(InvalidArgument, match=r"quest: .*bogus"):
        ids.quest_id({"distributor_config_name": "x", "bogus": 1})


def test_attempt_encoding_sorts_newest_first() -> None:
    q = ids.quest_id(_desc("{}"))
    a1, a2 = ids.AttemptID(q, 1), ids.AttemptID(q, 2)
    assert a1.encoded == f"{q}|fffffffe"
    assert a2.encoded < a1.encoded
    assert f"{q}|" < a1.encoded < f"{q}~"
    assert ids.AttemptID.decode(a2.encoded) == a2
    assert str(a1) == f"{q}|1" and ids.AttemptID.parse(str(a1)) == a1


def test_decoded_attempt_ids_are_kept_and_bad_keys_refused_each_time() -> None:
    q = ids.quest_id(_desc('{"kept": 1}'))
    key = ids.AttemptID(q, 7).encoded
    first = ids.AttemptID.decode(key)
    assert first == ids.AttemptID(q, 7) and ids.AttemptID.decode(key) is first
    for bad in (f"{q}|ffffffff", f"{q}|zzzzzzzz", q):  # attempt 0, not hex, no number
        for _ in range(2):  # a refusal is not remembered as an answer
            with pytest.raises(InvalidArgument, match="attempt"):
                ids.AttemptID.decode(bad)


def test_execution_ids() -> None:
    q = ids.quest_id(_desc("{}"))
    e = ids.ExecutionID(q, 3, 2)
    assert str(e) == f"{q}|3|2"
    assert ids.ExecutionID.parse(str(e)) == e
    assert e.encoded_num == "fffffffd"
    assert ids.ExecutionID.decode_num(e.attempt_id, e.encoded_num) == e
    assert ids.ExecutionID.from_proto(e.to_proto()) == e


@pytest.mark.parametrize("n", [0, -1, 2**32, True])
def test_bad_attempt_numbers(n: int) -> None:
    with pytest.raises(InvalidArgument, match="attempt: must be a number"):
        ids.AttemptID("q" * 43, n)


@pytest.mark.parametrize("text", ["nope", "a|b", "short|1", "x" * 43 + "|1|x"])
def test_bad_text_forms(text: str) -> None:
    with pytest.raises(InvalidArgument):
        ids.ExecutionID.parse(text)
