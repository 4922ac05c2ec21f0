from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Alias(_message.Message):
    __slots__ = ("other_config",)
    OTHER_CONFIG_FIELD_NUMBER: _ClassVar[int]
    other_config: str
    def __init__(self, other_config: _Optional[str] = ...) -> None: ...

class Distributor(_message.Message):
    __slots__ = ("alias", "config")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    alias: Alias
    config: _any_pb2.Any
    def __init__(self, alias: _Optional[_Union[Alias, _Mapping]] = ..., config: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class Config(_message.Message):
    __slots__ = ("distributor_configs",)
    class DistributorConfigsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Distributor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Distributor, _Mapping]] = ...) -> None: ...
    DISTRIBUTOR_CONFIGS_FIELD_NUMBER: _ClassVar[int]
    distributor_configs: _containers.MessageMap[str, Distributor]
    def __init__(self, distributor_configs: _Optional[_Mapping[str, Distributor]] = ...) -> None: ...

class Acls(_message.Message):
    __slots__ = ("readers", "writers")
    READERS_FIELD_NUMBER: _ClassVar[int]
    WRITERS_FIELD_NUMBER: _ClassVar[int]
    readers: _containers.RepeatedScalarFieldContainer[str]
    writers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, readers: _Optional[_Iterable[str]] = ..., writers: _Optional[_Iterable[str]] = ...) -> None: ...
