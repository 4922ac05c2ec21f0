import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Config(_message.Message):
    __slots__ = ("swarming", "isolate", "dm_api_url", "default_expiration")
    class Swarming(_message.Message):
        __slots__ = ("url",)
        URL_FIELD_NUMBER: _ClassVar[int]
        url: str
        def __init__(self, url: _Optional[str] = ...) -> None: ...
    class Isolate(_message.Message):
        __slots__ = ("url", "expiration")
        URL_FIELD_NUMBER: _ClassVar[int]
        EXPIRATION_FIELD_NUMBER: _ClassVar[int]
        url: str
        expiration: _duration_pb2.Duration
        def __init__(self, url: _Optional[str] = ..., expiration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
    SWARMING_FIELD_NUMBER: _ClassVar[int]
    ISOLATE_FIELD_NUMBER: _ClassVar[int]
    DM_API_URL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_EXPIRATION_FIELD_NUMBER: _ClassVar[int]
    swarming: Config.Swarming
    isolate: Config.Isolate
    dm_api_url: str
    default_expiration: _duration_pb2.Duration
    def __init__(self, swarming: _Optional[_Union[Config.Swarming, _Mapping]] = ..., isolate: _Optional[_Union[Config.Isolate, _Mapping]] = ..., dm_api_url: _Optional[str] = ..., default_expiration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CipdPackage(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class CipdSpec(_message.Message):
    __slots__ = ("server", "client", "by_path")
    class CipdPackages(_message.Message):
        __slots__ = ("pkg",)
        PKG_FIELD_NUMBER: _ClassVar[int]
        pkg: _containers.RepeatedCompositeFieldContainer[CipdPackage]
        def __init__(self, pkg: _Optional[_Iterable[_Union[CipdPackage, _Mapping]]] = ...) -> None: ...
    class ByPathEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: CipdSpec.CipdPackages
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[CipdSpec.CipdPackages, _Mapping]] = ...) -> None: ...
    SERVER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    BY_PATH_FIELD_NUMBER: _ClassVar[int]
    server: str
    client: CipdPackage
    by_path: _containers.MessageMap[str, CipdSpec.CipdPackages]
    def __init__(self, server: _Optional[str] = ..., client: _Optional[_Union[CipdPackage, _Mapping]] = ..., by_path: _Optional[_Mapping[str, CipdSpec.CipdPackages]] = ...) -> None: ...

class IsolatedRef(_message.Message):
    __slots__ = ("id", "server")
    ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    id: str
    server: str
    def __init__(self, id: _Optional[str] = ..., server: _Optional[str] = ...) -> None: ...

class CasRef(_message.Message):
    __slots__ = ("instance", "digest")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    instance: str
    digest: str
    def __init__(self, instance: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class Parameters(_message.Message):
    __slots__ = ("scheduling", "meta", "job")
    class Scheduling(_message.Message):
        __slots__ = ("priority", "dimensions", "snapshot_dimensions", "io_timeout")
        class DimensionsEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: str
            def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
        PRIORITY_FIELD_NUMBER: _ClassVar[int]
        DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
        SNAPSHOT_DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
        IO_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
        priority: int
        dimensions: _containers.ScalarMap[str, str]
        snapshot_dimensions: _containers.RepeatedScalarFieldContainer[str]
        io_timeout: _duration_pb2.Duration
        def __init__(self, priority: _Optional[int] = ..., dimensions: _Optional[_Mapping[str, str]] = ..., snapshot_dimensions: _Optional[_Iterable[str]] = ..., io_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
    class Meta(_message.Message):
        __slots__ = ("name_prefix",)
        NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
        name_prefix: str
        def __init__(self, name_prefix: _Optional[str] = ...) -> None: ...
    class Job(_message.Message):
        __slots__ = ("inputs", "command", "env")
        class Inputs(_message.Message):
            __slots__ = ("isolated", "cipd", "cas")
            ISOLATED_FIELD_NUMBER: _ClassVar[int]
            CIPD_FIELD_NUMBER: _ClassVar[int]
            CAS_FIELD_NUMBER: _ClassVar[int]
            isolated: _containers.RepeatedCompositeFieldContainer[IsolatedRef]
            cipd: CipdSpec
            cas: CasRef
            def __init__(self, isolated: _Optional[_Iterable[_Union[IsolatedRef, _Mapping]]] = ..., cipd: _Optional[_Union[CipdSpec, _Mapping]] = ..., cas: _Optional[_Union[CasRef, _Mapping]] = ...) -> None: ...
        class EnvEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: str
            def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
        INPUTS_FIELD_NUMBER: _ClassVar[int]
        COMMAND_FIELD_NUMBER: _ClassVar[int]
        ENV_FIELD_NUMBER: _ClassVar[int]
        inputs: Parameters.Job.Inputs
        command: _containers.RepeatedScalarFieldContainer[str]
        env: _containers.ScalarMap[str, str]
        def __init__(self, inputs: _Optional[_Union[Parameters.Job.Inputs, _Mapping]] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...
    SCHEDULING_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    scheduling: Parameters.Scheduling
    meta: Parameters.Meta
    job: Parameters.Job
    def __init__(self, scheduling: _Optional[_Union[Parameters.Scheduling, _Mapping]] = ..., meta: _Optional[_Union[Parameters.Meta, _Mapping]] = ..., job: _Optional[_Union[Parameters.Job, _Mapping]] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("exit_code", "isolated_outdir", "cipd_pins", "snapshot_dimensions")
    class SnapshotDimensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ISOLATED_OUTDIR_FIELD_NUMBER: _ClassVar[int]
    CIPD_PINS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    isolated_outdir: IsolatedRef
    cipd_pins: CipdSpec
    snapshot_dimensions: _containers.ScalarMap[str, str]
    def __init__(self, exit_code: _Optional[int] = ..., isolated_outdir: _Optional[_Union[IsolatedRef, _Mapping]] = ..., cipd_pins: _Optional[_Union[CipdSpec, _Mapping]] = ..., snapshot_dimensions: _Optional[_Mapping[str, str]] = ...) -> None: ...
