"""The committed generated protobuf code matches the .proto sources."""

from scripts import gen_protos


def test_generated_code_is_fresh() -> None:
    assert gen_protos.main(["--check"]) == 0, "run `make protos` and commit the result"


def test_quest_desc_field_numbers_are_dms() -> None:
    # Quest IDs hash the wire encoding, so these numbers are fixed forever.
    from dmcore.proto import dm_pb2

    d = dm_pb2.Quest.Desc.DESCRIPTOR
    assert {f.name: f.number for f in d.fields} == {
        "distributor_config_name": 1,
        "parameters": 2,
        "distributor_parameters": 3,
        "meta": 4,
    }
    meta = d.nested_types_by_name["Meta"]
    assert {f.name: f.number for f in meta.fields} == {"as_account": 1, "retry": 2, "timeouts": 3}
    retry = meta.nested_types_by_name["Retry"]
    assert {f.name: f.number for f in retry.fields} == {
        "failed": 1,
        "crashed": 2,
        "expired": 3,
        "timed_out": 4,
    }
    timeouts = meta.nested_types_by_name["Timeouts"]
    assert {f.name: f.number for f in timeouts.fields} == {"start": 1, "run": 2, "stop": 3}
