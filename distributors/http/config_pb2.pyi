import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Config(_message.Message):
    __slots__ = ("url", "audience", "service_account_email", "queue", "max_attempts", "deadline", "status_url", "cancel_url", "dm_api_url", "report_url")
    URL_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_EMAIL_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    STATUS_URL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_URL_FIELD_NUMBER: _ClassVar[int]
    DM_API_URL_FIELD_NUMBER: _ClassVar[int]
    REPORT_URL_FIELD_NUMBER: _ClassVar[int]
    url: str
    audience: str
    service_account_email: str
    queue: str
    max_attempts: int
    deadline: _duration_pb2.Duration
    status_url: str
    cancel_url: str
    dm_api_url: str
    report_url: str
    def __init__(self, url: _Optional[str] = ..., audience: _Optional[str] = ..., service_account_email: _Optional[str] = ..., queue: _Optional[str] = ..., max_attempts: _Optional[int] = ..., deadline: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., status_url: _Optional[str] = ..., cancel_url: _Optional[str] = ..., dm_api_url: _Optional[str] = ..., report_url: _Optional[str] = ...) -> None: ...

class Parameters(_message.Message):
    __slots__ = ("deadline",)
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    deadline: _duration_pb2.Duration
    def __init__(self, deadline: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
