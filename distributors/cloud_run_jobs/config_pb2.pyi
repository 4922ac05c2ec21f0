import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Config(_message.Message):
    __slots__ = ("jobs", "container", "max_task_count", "max_timeout", "dm_api_url", "report_url", "poll_interval")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    MAX_TASK_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    DM_API_URL_FIELD_NUMBER: _ClassVar[int]
    REPORT_URL_FIELD_NUMBER: _ClassVar[int]
    POLL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedScalarFieldContainer[str]
    container: str
    max_task_count: int
    max_timeout: _duration_pb2.Duration
    dm_api_url: str
    report_url: str
    poll_interval: _duration_pb2.Duration
    def __init__(self, jobs: _Optional[_Iterable[str]] = ..., container: _Optional[str] = ..., max_task_count: _Optional[int] = ..., max_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., dm_api_url: _Optional[str] = ..., report_url: _Optional[str] = ..., poll_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Parameters(_message.Message):
    __slots__ = ("job", "args", "task_count", "timeout")
    JOB_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    TASK_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    job: str
    args: _containers.RepeatedScalarFieldContainer[str]
    task_count: int
    timeout: _duration_pb2.Duration
    def __init__(self, job: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., task_count: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
