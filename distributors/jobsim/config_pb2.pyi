import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Config(_message.Message):
    __slots__ = ("pool", "do_pollback")
    POOL_FIELD_NUMBER: _ClassVar[int]
    DO_POLLBACK_FIELD_NUMBER: _ClassVar[int]
    pool: str
    do_pollback: bool
    def __init__(self, pool: _Optional[str] = ..., do_pollback: _Optional[bool] = ...) -> None: ...

class Phrase(_message.Message):
    __slots__ = ("name", "seed", "stages", "return_stage")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    RETURN_STAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    seed: int
    stages: _containers.RepeatedCompositeFieldContainer[Stage]
    return_stage: ReturnStage
    def __init__(self, name: _Optional[str] = ..., seed: _Optional[int] = ..., stages: _Optional[_Iterable[_Union[Stage, _Mapping]]] = ..., return_stage: _Optional[_Union[ReturnStage, _Mapping]] = ...) -> None: ...

class Stage(_message.Message):
    __slots__ = ("failure", "stall", "deps", "chain")
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    STALL_FIELD_NUMBER: _ClassVar[int]
    DEPS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    failure: FailureStage
    stall: StallStage
    deps: DepsStage
    chain: ChainStage
    def __init__(self, failure: _Optional[_Union[FailureStage, _Mapping]] = ..., stall: _Optional[_Union[StallStage, _Mapping]] = ..., deps: _Optional[_Union[DepsStage, _Mapping]] = ..., chain: _Optional[_Union[ChainStage, _Mapping]] = ...) -> None: ...

class FailureStage(_message.Message):
    __slots__ = ("chance",)
    CHANCE_FIELD_NUMBER: _ClassVar[int]
    chance: float
    def __init__(self, chance: _Optional[float] = ...) -> None: ...

class StallStage(_message.Message):
    __slots__ = ("delay",)
    DELAY_FIELD_NUMBER: _ClassVar[int]
    delay: _duration_pb2.Duration
    def __init__(self, delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DepsStage(_message.Message):
    __slots__ = ("deps",)
    DEPS_FIELD_NUMBER: _ClassVar[int]
    deps: _containers.RepeatedCompositeFieldContainer[Dependency]
    def __init__(self, deps: _Optional[_Iterable[_Union[Dependency, _Mapping]]] = ...) -> None: ...

class ChainStage(_message.Message):
    __slots__ = ("links",)
    LINKS_FIELD_NUMBER: _ClassVar[int]
    links: int
    def __init__(self, links: _Optional[int] = ...) -> None: ...

class Dependency(_message.Message):
    __slots__ = ("shards", "attempts", "retries", "mix_seed", "phrase")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    MIX_SEED_FIELD_NUMBER: _ClassVar[int]
    PHRASE_FIELD_NUMBER: _ClassVar[int]
    shards: int
    attempts: SparseRange
    retries: int
    mix_seed: bool
    phrase: Phrase
    def __init__(self, shards: _Optional[int] = ..., attempts: _Optional[_Union[SparseRange, _Mapping]] = ..., retries: _Optional[int] = ..., mix_seed: _Optional[bool] = ..., phrase: _Optional[_Union[Phrase, _Mapping]] = ...) -> None: ...

class SparseRange(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RangeItem]
    def __init__(self, items: _Optional[_Iterable[_Union[RangeItem, _Mapping]]] = ...) -> None: ...

class RangeItem(_message.Message):
    __slots__ = ("single", "range")
    SINGLE_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    single: int
    range: Range
    def __init__(self, single: _Optional[int] = ..., range: _Optional[_Union[Range, _Mapping]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: int
    high: int
    def __init__(self, low: _Optional[int] = ..., high: _Optional[int] = ...) -> None: ...

class ReturnStage(_message.Message):
    __slots__ = ("retval", "expiration")
    RETVAL_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_FIELD_NUMBER: _ClassVar[int]
    retval: int
    expiration: _timestamp_pb2.Timestamp
    def __init__(self, retval: _Optional[int] = ..., expiration: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
