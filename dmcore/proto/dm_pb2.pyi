import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JsonResult(_message.Message):
    __slots__ = ("object", "size", "expiration")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_FIELD_NUMBER: _ClassVar[int]
    object: str
    size: int
    expiration: _timestamp_pb2.Timestamp
    def __init__(self, object: _Optional[str] = ..., size: _Optional[int] = ..., expiration: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AbnormalFinish(_message.Message):
    __slots__ = ("status", "reason")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        INVALID: _ClassVar[AbnormalFinish.Status]
        FAILED: _ClassVar[AbnormalFinish.Status]
        CRASHED: _ClassVar[AbnormalFinish.Status]
        EXPIRED: _ClassVar[AbnormalFinish.Status]
        TIMED_OUT: _ClassVar[AbnormalFinish.Status]
        CANCELLED: _ClassVar[AbnormalFinish.Status]
        REJECTED: _ClassVar[AbnormalFinish.Status]
        MISSING: _ClassVar[AbnormalFinish.Status]
        RESULT_MALFORMED: _ClassVar[AbnormalFinish.Status]
    INVALID: AbnormalFinish.Status
    FAILED: AbnormalFinish.Status
    CRASHED: AbnormalFinish.Status
    EXPIRED: AbnormalFinish.Status
    TIMED_OUT: AbnormalFinish.Status
    CANCELLED: AbnormalFinish.Status
    REJECTED: AbnormalFinish.Status
    MISSING: AbnormalFinish.Status
    RESULT_MALFORMED: AbnormalFinish.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    status: AbnormalFinish.Status
    reason: str
    def __init__(self, status: _Optional[_Union[AbnormalFinish.Status, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("data", "abnormal_finish")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ABNORMAL_FINISH_FIELD_NUMBER: _ClassVar[int]
    data: JsonResult
    abnormal_finish: AbnormalFinish
    def __init__(self, data: _Optional[_Union[JsonResult, _Mapping]] = ..., abnormal_finish: _Optional[_Union[AbnormalFinish, _Mapping]] = ...) -> None: ...

class AttemptList(_message.Message):
    __slots__ = ("to",)
    class Nums(_message.Message):
        __slots__ = ("nums",)
        NUMS_FIELD_NUMBER: _ClassVar[int]
        nums: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, nums: _Optional[_Iterable[int]] = ...) -> None: ...
    class ToEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AttemptList.Nums
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AttemptList.Nums, _Mapping]] = ...) -> None: ...
    TO_FIELD_NUMBER: _ClassVar[int]
    to: _containers.MessageMap[str, AttemptList.Nums]
    def __init__(self, to: _Optional[_Mapping[str, AttemptList.Nums]] = ...) -> None: ...

class Quest(_message.Message):
    __slots__ = ("id", "DNE", "data", "attempts", "partial")
    class ID(_message.Message):
        __slots__ = ("id",)
        ID_FIELD_NUMBER: _ClassVar[int]
        id: str
        def __init__(self, id: _Optional[str] = ...) -> None: ...
    class Desc(_message.Message):
        __slots__ = ("distributor_config_name", "parameters", "distributor_parameters", "meta")
        class Meta(_message.Message):
            __slots__ = ("as_account", "retry", "timeouts")
            class Retry(_message.Message):
                __slots__ = ("failed", "crashed", "expired", "timed_out")
                FAILED_FIELD_NUMBER: _ClassVar[int]
                CRASHED_FIELD_NUMBER: _ClassVar[int]
                EXPIRED_FIELD_NUMBER: _ClassVar[int]
                TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
                failed: int
                crashed: int
                expired: int
                timed_out: int
                def __init__(self, failed: _Optional[int] = ..., crashed: _Optional[int] = ..., expired: _Optional[int] = ..., timed_out: _Optional[int] = ...) -> None: ...
            class Timeouts(_message.Message):
                __slots__ = ("start", "run", "stop")
                START_FIELD_NUMBER: _ClassVar[int]
                RUN_FIELD_NUMBER: _ClassVar[int]
                STOP_FIELD_NUMBER: _ClassVar[int]
                start: _duration_pb2.Duration
                run: _duration_pb2.Duration
                stop: _duration_pb2.Duration
                def __init__(self, start: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., run: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., stop: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
            AS_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
            RETRY_FIELD_NUMBER: _ClassVar[int]
            TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
            as_account: str
            retry: Quest.Desc.Meta.Retry
            timeouts: Quest.Desc.Meta.Timeouts
            def __init__(self, as_account: _Optional[str] = ..., retry: _Optional[_Union[Quest.Desc.Meta.Retry, _Mapping]] = ..., timeouts: _Optional[_Union[Quest.Desc.Meta.Timeouts, _Mapping]] = ...) -> None: ...
        DISTRIBUTOR_CONFIG_NAME_FIELD_NUMBER: _ClassVar[int]
        PARAMETERS_FIELD_NUMBER: _ClassVar[int]
        DISTRIBUTOR_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
        META_FIELD_NUMBER: _ClassVar[int]
        distributor_config_name: str
        parameters: str
        distributor_parameters: str
        meta: Quest.Desc.Meta
        def __init__(self, distributor_config_name: _Optional[str] = ..., parameters: _Optional[str] = ..., distributor_parameters: _Optional[str] = ..., meta: _Optional[_Union[Quest.Desc.Meta, _Mapping]] = ...) -> None: ...
    class TemplateSpec(_message.Message):
        __slots__ = ("project", "ref", "version", "name")
        PROJECT_FIELD_NUMBER: _ClassVar[int]
        REF_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        NAME_FIELD_NUMBER: _ClassVar[int]
        project: str
        ref: str
        version: str
        name: str
        def __init__(self, project: _Optional[str] = ..., ref: _Optional[str] = ..., version: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...
    class Data(_message.Message):
        __slots__ = ("created", "desc", "built_by")
        CREATED_FIELD_NUMBER: _ClassVar[int]
        DESC_FIELD_NUMBER: _ClassVar[int]
        BUILT_BY_FIELD_NUMBER: _ClassVar[int]
        created: _timestamp_pb2.Timestamp
        desc: Quest.Desc
        built_by: _containers.RepeatedCompositeFieldContainer[Quest.TemplateSpec]
        def __init__(self, created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., desc: _Optional[_Union[Quest.Desc, _Mapping]] = ..., built_by: _Optional[_Iterable[_Union[Quest.TemplateSpec, _Mapping]]] = ...) -> None: ...
    class AttemptsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: Attempt
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[Attempt, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    DNE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    id: Quest.ID
    DNE: bool
    data: Quest.Data
    attempts: _containers.MessageMap[int, Attempt]
    partial: bool
    def __init__(self, id: _Optional[_Union[Quest.ID, _Mapping]] = ..., DNE: _Optional[bool] = ..., data: _Optional[_Union[Quest.Data, _Mapping]] = ..., attempts: _Optional[_Mapping[int, Attempt]] = ..., partial: _Optional[bool] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("id", "DNE", "data", "executions", "fwd_deps", "back_deps", "partial")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SCHEDULING: _ClassVar[Attempt.State]
        EXECUTING: _ClassVar[Attempt.State]
        WAITING: _ClassVar[Attempt.State]
        FINISHED: _ClassVar[Attempt.State]
        ABNORMAL_FINISHED: _ClassVar[Attempt.State]
    SCHEDULING: Attempt.State
    EXECUTING: Attempt.State
    WAITING: Attempt.State
    FINISHED: Attempt.State
    ABNORMAL_FINISHED: Attempt.State
    class ID(_message.Message):
        __slots__ = ("quest", "id")
        QUEST_FIELD_NUMBER: _ClassVar[int]
        ID_FIELD_NUMBER: _ClassVar[int]
        quest: str
        id: int
        def __init__(self, quest: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...
    class Data(_message.Message):
        __slots__ = ("created", "modified", "num_executions", "scheduling", "executing", "waiting", "finished", "abnormal_finish", "expired")
        class Scheduling(_message.Message):
            __slots__ = ()
            def __init__(self) -> None: ...
        class Executing(_message.Message):
            __slots__ = ("cur_execution_id",)
            CUR_EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
            cur_execution_id: int
            def __init__(self, cur_execution_id: _Optional[int] = ...) -> None: ...
        class Waiting(_message.Message):
            __slots__ = ("num_waiting",)
            NUM_WAITING_FIELD_NUMBER: _ClassVar[int]
            num_waiting: int
            def __init__(self, num_waiting: _Optional[int] = ...) -> None: ...
        class Finished(_message.Message):
            __slots__ = ("data",)
            DATA_FIELD_NUMBER: _ClassVar[int]
            data: JsonResult
            def __init__(self, data: _Optional[_Union[JsonResult, _Mapping]] = ...) -> None: ...
        CREATED_FIELD_NUMBER: _ClassVar[int]
        MODIFIED_FIELD_NUMBER: _ClassVar[int]
        NUM_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
        SCHEDULING_FIELD_NUMBER: _ClassVar[int]
        EXECUTING_FIELD_NUMBER: _ClassVar[int]
        WAITING_FIELD_NUMBER: _ClassVar[int]
        FINISHED_FIELD_NUMBER: _ClassVar[int]
        ABNORMAL_FINISH_FIELD_NUMBER: _ClassVar[int]
        EXPIRED_FIELD_NUMBER: _ClassVar[int]
        created: _timestamp_pb2.Timestamp
        modified: _timestamp_pb2.Timestamp
        num_executions: int
        scheduling: Attempt.Data.Scheduling
        executing: Attempt.Data.Executing
        waiting: Attempt.Data.Waiting
        finished: Attempt.Data.Finished
        abnormal_finish: AbnormalFinish
        expired: bool
        def __init__(self, created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., modified: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., num_executions: _Optional[int] = ..., scheduling: _Optional[_Union[Attempt.Data.Scheduling, _Mapping]] = ..., executing: _Optional[_Union[Attempt.Data.Executing, _Mapping]] = ..., waiting: _Optional[_Union[Attempt.Data.Waiting, _Mapping]] = ..., finished: _Optional[_Union[Attempt.Data.Finished, _Mapping]] = ..., abnormal_finish: _Optional[_Union[AbnormalFinish, _Mapping]] = ..., expired: _Optional[bool] = ...) -> None: ...
    class Partial(_message.Message):
        __slots__ = ("data", "executions", "fwd_deps", "back_deps", "result")
        class Result(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            LOADED: _ClassVar[Attempt.Partial.Result]
            NOT_LOADED: _ClassVar[Attempt.Partial.Result]
            NOT_AUTHORIZED: _ClassVar[Attempt.Partial.Result]
            DATA_SIZE_LIMIT: _ClassVar[Attempt.Partial.Result]
            EXPIRED: _ClassVar[Attempt.Partial.Result]
        LOADED: Attempt.Partial.Result
        NOT_LOADED: Attempt.Partial.Result
        NOT_AUTHORIZED: Attempt.Partial.Result
        DATA_SIZE_LIMIT: Attempt.Partial.Result
        EXPIRED: Attempt.Partial.Result
        DATA_FIELD_NUMBER: _ClassVar[int]
        EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
        FWD_DEPS_FIELD_NUMBER: _ClassVar[int]
        BACK_DEPS_FIELD_NUMBER: _ClassVar[int]
        RESULT_FIELD_NUMBER: _ClassVar[int]
        data: bool
        executions: bool
        fwd_deps: bool
        back_deps: bool
        result: Attempt.Partial.Result
        def __init__(self, data: _Optional[bool] = ..., executions: _Optional[bool] = ..., fwd_deps: _Optional[bool] = ..., back_deps: _Optional[bool] = ..., result: _Optional[_Union[Attempt.Partial.Result, str]] = ...) -> None: ...
    class ExecutionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: Execution
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[Execution, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    DNE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    FWD_DEPS_FIELD_NUMBER: _ClassVar[int]
    BACK_DEPS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    id: Attempt.ID
    DNE: bool
    data: Attempt.Data
    executions: _containers.MessageMap[int, Execution]
    fwd_deps: AttemptList
    back_deps: AttemptList
    partial: Attempt.Partial
    def __init__(self, id: _Optional[_Union[Attempt.ID, _Mapping]] = ..., DNE: _Optional[bool] = ..., data: _Optional[_Union[Attempt.Data, _Mapping]] = ..., executions: _Optional[_Mapping[int, Execution]] = ..., fwd_deps: _Optional[_Union[AttemptList, _Mapping]] = ..., back_deps: _Optional[_Union[AttemptList, _Mapping]] = ..., partial: _Optional[_Union[Attempt.Partial, _Mapping]] = ...) -> None: ...

class Execution(_message.Message):
    __slots__ = ("id", "data", "partial")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SCHEDULING: _ClassVar[Execution.State]
        RUNNING: _ClassVar[Execution.State]
        STOPPING: _ClassVar[Execution.State]
        FINISHED: _ClassVar[Execution.State]
        ABNORMAL_FINISHED: _ClassVar[Execution.State]
    SCHEDULING: Execution.State
    RUNNING: Execution.State
    STOPPING: Execution.State
    FINISHED: Execution.State
    ABNORMAL_FINISHED: Execution.State
    class ID(_message.Message):
        __slots__ = ("quest", "attempt", "id")
        QUEST_FIELD_NUMBER: _ClassVar[int]
        ATTEMPT_FIELD_NUMBER: _ClassVar[int]
        ID_FIELD_NUMBER: _ClassVar[int]
        quest: str
        attempt: int
        id: int
        def __init__(self, quest: _Optional[str] = ..., attempt: _Optional[int] = ..., id: _Optional[int] = ...) -> None: ...
    class Auth(_message.Message):
        __slots__ = ("id", "token")
        ID_FIELD_NUMBER: _ClassVar[int]
        TOKEN_FIELD_NUMBER: _ClassVar[int]
        id: Execution.ID
        token: bytes
        def __init__(self, id: _Optional[_Union[Execution.ID, _Mapping]] = ..., token: _Optional[bytes] = ...) -> None: ...
    class Data(_message.Message):
        __slots__ = ("created", "modified", "distributor_info", "scheduling", "running", "stopping", "finished", "abnormal_finish", "expired")
        class DistributorInfo(_message.Message):
            __slots__ = ("config_name", "config_version", "token", "url")
            CONFIG_NAME_FIELD_NUMBER: _ClassVar[int]
            CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
            TOKEN_FIELD_NUMBER: _ClassVar[int]
            URL_FIELD_NUMBER: _ClassVar[int]
            config_name: str
            config_version: str
            token: str
            url: str
            def __init__(self, config_name: _Optional[str] = ..., config_version: _Optional[str] = ..., token: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...
        class Scheduling(_message.Message):
            __slots__ = ()
            def __init__(self) -> None: ...
        class Running(_message.Message):
            __slots__ = ()
            def __init__(self) -> None: ...
        class Stopping(_message.Message):
            __slots__ = ()
            def __init__(self) -> None: ...
        class Finished(_message.Message):
            __slots__ = ("data",)
            DATA_FIELD_NUMBER: _ClassVar[int]
            data: JsonResult
            def __init__(self, data: _Optional[_Union[JsonResult, _Mapping]] = ...) -> None: ...
        CREATED_FIELD_NUMBER: _ClassVar[int]
        MODIFIED_FIELD_NUMBER: _ClassVar[int]
        DISTRIBUTOR_INFO_FIELD_NUMBER: _ClassVar[int]
        SCHEDULING_FIELD_NUMBER: _ClassVar[int]
        RUNNING_FIELD_NUMBER: _ClassVar[int]
        STOPPING_FIELD_NUMBER: _ClassVar[int]
        FINISHED_FIELD_NUMBER: _ClassVar[int]
        ABNORMAL_FINISH_FIELD_NUMBER: _ClassVar[int]
        EXPIRED_FIELD_NUMBER: _ClassVar[int]
        created: _timestamp_pb2.Timestamp
        modified: _timestamp_pb2.Timestamp
        distributor_info: Execution.Data.DistributorInfo
        scheduling: Execution.Data.Scheduling
        running: Execution.Data.Running
        stopping: Execution.Data.Stopping
        finished: Execution.Data.Finished
        abnormal_finish: AbnormalFinish
        expired: bool
        def __init__(self, created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., modified: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., distributor_info: _Optional[_Union[Execution.Data.DistributorInfo, _Mapping]] = ..., scheduling: _Optional[_Union[Execution.Data.Scheduling, _Mapping]] = ..., running: _Optional[_Union[Execution.Data.Running, _Mapping]] = ..., stopping: _Optional[_Union[Execution.Data.Stopping, _Mapping]] = ..., finished: _Optional[_Union[Execution.Data.Finished, _Mapping]] = ..., abnormal_finish: _Optional[_Union[AbnormalFinish, _Mapping]] = ..., expired: _Optional[bool] = ...) -> None: ...
    class Partial(_message.Message):
        __slots__ = ("data", "result")
        DATA_FIELD_NUMBER: _ClassVar[int]
        RESULT_FIELD_NUMBER: _ClassVar[int]
        data: bool
        result: Attempt.Partial.Result
        def __init__(self, data: _Optional[bool] = ..., result: _Optional[_Union[Attempt.Partial.Result, str]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    id: Execution.ID
    data: Execution.Data
    partial: Execution.Partial
    def __init__(self, id: _Optional[_Union[Execution.ID, _Mapping]] = ..., data: _Optional[_Union[Execution.Data, _Mapping]] = ..., partial: _Optional[_Union[Execution.Partial, _Mapping]] = ...) -> None: ...

class GraphData(_message.Message):
    __slots__ = ("quests", "had_more", "had_errors")
    class QuestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Quest
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Quest, _Mapping]] = ...) -> None: ...
    QUESTS_FIELD_NUMBER: _ClassVar[int]
    HAD_MORE_FIELD_NUMBER: _ClassVar[int]
    HAD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    quests: _containers.MessageMap[str, Quest]
    had_more: bool
    had_errors: bool
    def __init__(self, quests: _Optional[_Mapping[str, Quest]] = ..., had_more: _Optional[bool] = ..., had_errors: _Optional[bool] = ...) -> None: ...

class GraphQuery(_message.Message):
    __slots__ = ("attempt_list", "attempt_range", "search")
    class AttemptRange(_message.Message):
        __slots__ = ("quest", "low", "high")
        QUEST_FIELD_NUMBER: _ClassVar[int]
        LOW_FIELD_NUMBER: _ClassVar[int]
        HIGH_FIELD_NUMBER: _ClassVar[int]
        quest: str
        low: int
        high: int
        def __init__(self, quest: _Optional[str] = ..., low: _Optional[int] = ..., high: _Optional[int] = ...) -> None: ...
    class Search(_message.Message):
        __slots__ = ("start", "end", "attrs")
        class AttrsEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: str
            def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
        START_FIELD_NUMBER: _ClassVar[int]
        END_FIELD_NUMBER: _ClassVar[int]
        ATTRS_FIELD_NUMBER: _ClassVar[int]
        start: _timestamp_pb2.Timestamp
        end: _timestamp_pb2.Timestamp
        attrs: _containers.ScalarMap[str, str]
        def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attrs: _Optional[_Mapping[str, str]] = ...) -> None: ...
    ATTEMPT_LIST_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_RANGE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    attempt_list: AttemptList
    attempt_range: _containers.RepeatedCompositeFieldContainer[GraphQuery.AttemptRange]
    search: _containers.RepeatedCompositeFieldContainer[GraphQuery.Search]
    def __init__(self, attempt_list: _Optional[_Union[AttemptList, _Mapping]] = ..., attempt_range: _Optional[_Iterable[_Union[GraphQuery.AttemptRange, _Mapping]]] = ..., search: _Optional[_Iterable[_Union[GraphQuery.Search, _Mapping]]] = ...) -> None: ...

class WalkGraphReq(_message.Message):
    __slots__ = ("auth", "query", "mode", "limit", "include", "exclude")
    class Mode(_message.Message):
        __slots__ = ("dfs", "direction")
        class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            FORWARDS: _ClassVar[WalkGraphReq.Mode.Direction]
            BACKWARDS: _ClassVar[WalkGraphReq.Mode.Direction]
            BOTH: _ClassVar[WalkGraphReq.Mode.Direction]
        FORWARDS: WalkGraphReq.Mode.Direction
        BACKWARDS: WalkGraphReq.Mode.Direction
        BOTH: WalkGraphReq.Mode.Direction
        DFS_FIELD_NUMBER: _ClassVar[int]
        DIRECTION_FIELD_NUMBER: _ClassVar[int]
        dfs: bool
        direction: WalkGraphReq.Mode.Direction
        def __init__(self, dfs: _Optional[bool] = ..., direction: _Optional[_Union[WalkGraphReq.Mode.Direction, str]] = ...) -> None: ...
    class Limit(_message.Message):
        __slots__ = ("max_depth", "max_time", "max_data_size")
        MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
        MAX_TIME_FIELD_NUMBER: _ClassVar[int]
        MAX_DATA_SIZE_FIELD_NUMBER: _ClassVar[int]
        max_depth: int
        max_time: _duration_pb2.Duration
        max_data_size: int
        def __init__(self, max_depth: _Optional[int] = ..., max_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_data_size: _Optional[int] = ...) -> None: ...
    class Include(_message.Message):
        __slots__ = ("quest", "attempt", "execution", "num_executions", "fwd_deps", "back_deps")
        class Options(_message.Message):
            __slots__ = ("ids", "data", "result", "abnormal", "expired")
            IDS_FIELD_NUMBER: _ClassVar[int]
            DATA_FIELD_NUMBER: _ClassVar[int]
            RESULT_FIELD_NUMBER: _ClassVar[int]
            ABNORMAL_FIELD_NUMBER: _ClassVar[int]
            EXPIRED_FIELD_NUMBER: _ClassVar[int]
            ids: bool
            data: bool
            result: bool
            abnormal: bool
            expired: bool
            def __init__(self, ids: _Optional[bool] = ..., data: _Optional[bool] = ..., result: _Optional[bool] = ..., abnormal: _Optional[bool] = ..., expired: _Optional[bool] = ...) -> None: ...
        QUEST_FIELD_NUMBER: _ClassVar[int]
        ATTEMPT_FIELD_NUMBER: _ClassVar[int]
        EXECUTION_FIELD_NUMBER: _ClassVar[int]
        NUM_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
        FWD_DEPS_FIELD_NUMBER: _ClassVar[int]
        BACK_DEPS_FIELD_NUMBER: _ClassVar[int]
        quest: WalkGraphReq.Include.Options
        attempt: WalkGraphReq.Include.Options
        execution: WalkGraphReq.Include.Options
        num_executions: int
        fwd_deps: bool
        back_deps: bool
        def __init__(self, quest: _Optional[_Union[WalkGraphReq.Include.Options, _Mapping]] = ..., attempt: _Optional[_Union[WalkGraphReq.Include.Options, _Mapping]] = ..., execution: _Optional[_Union[WalkGraphReq.Include.Options, _Mapping]] = ..., num_executions: _Optional[int] = ..., fwd_deps: _Optional[bool] = ..., back_deps: _Optional[bool] = ...) -> None: ...
    class Exclude(_message.Message):
        __slots__ = ("quests", "attempts")
        QUESTS_FIELD_NUMBER: _ClassVar[int]
        ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
        quests: _containers.RepeatedScalarFieldContainer[str]
        attempts: AttemptList
        def __init__(self, quests: _Optional[_Iterable[str]] = ..., attempts: _Optional[_Union[AttemptList, _Mapping]] = ...) -> None: ...
    AUTH_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    auth: Execution.Auth
    query: GraphQuery
    mode: WalkGraphReq.Mode
    limit: WalkGraphReq.Limit
    include: WalkGraphReq.Include
    exclude: WalkGraphReq.Exclude
    def __init__(self, auth: _Optional[_Union[Execution.Auth, _Mapping]] = ..., query: _Optional[_Union[GraphQuery, _Mapping]] = ..., mode: _Optional[_Union[WalkGraphReq.Mode, _Mapping]] = ..., limit: _Optional[_Union[WalkGraphReq.Limit, _Mapping]] = ..., include: _Optional[_Union[WalkGraphReq.Include, _Mapping]] = ..., exclude: _Optional[_Union[WalkGraphReq.Exclude, _Mapping]] = ...) -> None: ...

class TemplateInstantiation(_message.Message):
    __slots__ = ("project", "ref", "specifier")
    class Specifier(_message.Message):
        __slots__ = ("template_name", "params")
        TEMPLATE_NAME_FIELD_NUMBER: _ClassVar[int]
        PARAMS_FIELD_NUMBER: _ClassVar[int]
        template_name: str
        params: _struct_pb2.Struct
        def __init__(self, template_name: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    SPECIFIER_FIELD_NUMBER: _ClassVar[int]
    project: str
    ref: str
    specifier: TemplateInstantiation.Specifier
    def __init__(self, project: _Optional[str] = ..., ref: _Optional[str] = ..., specifier: _Optional[_Union[TemplateInstantiation.Specifier, _Mapping]] = ...) -> None: ...

class EnsureGraphDataReq(_message.Message):
    __slots__ = ("quest", "quest_attempt", "template_quest", "template_attempt", "raw_attempts", "for_execution", "limit", "include")
    class Limit(_message.Message):
        __slots__ = ("max_data_size",)
        MAX_DATA_SIZE_FIELD_NUMBER: _ClassVar[int]
        max_data_size: int
        def __init__(self, max_data_size: _Optional[int] = ...) -> None: ...
    class Include(_message.Message):
        __slots__ = ("attempt",)
        class Options(_message.Message):
            __slots__ = ("result",)
            RESULT_FIELD_NUMBER: _ClassVar[int]
            result: bool
            def __init__(self, result: _Optional[bool] = ...) -> None: ...
        ATTEMPT_FIELD_NUMBER: _ClassVar[int]
        attempt: EnsureGraphDataReq.Include.Options
        def __init__(self, attempt: _Optional[_Union[EnsureGraphDataReq.Include.Options, _Mapping]] = ...) -> None: ...
    QUEST_FIELD_NUMBER: _ClassVar[int]
    QUEST_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_QUEST_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RAW_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FOR_EXECUTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    quest: _containers.RepeatedCompositeFieldContainer[Quest.Desc]
    quest_attempt: _containers.RepeatedCompositeFieldContainer[AttemptList.Nums]
    template_quest: _containers.RepeatedCompositeFieldContainer[TemplateInstantiation]
    template_attempt: _containers.RepeatedCompositeFieldContainer[AttemptList.Nums]
    raw_attempts: AttemptList
    for_execution: Execution.Auth
    limit: EnsureGraphDataReq.Limit
    include: EnsureGraphDataReq.Include
    def __init__(self, quest: _Optional[_Iterable[_Union[Quest.Desc, _Mapping]]] = ..., quest_attempt: _Optional[_Iterable[_Union[AttemptList.Nums, _Mapping]]] = ..., template_quest: _Optional[_Iterable[_Union[TemplateInstantiation, _Mapping]]] = ..., template_attempt: _Optional[_Iterable[_Union[AttemptList.Nums, _Mapping]]] = ..., raw_attempts: _Optional[_Union[AttemptList, _Mapping]] = ..., for_execution: _Optional[_Union[Execution.Auth, _Mapping]] = ..., limit: _Optional[_Union[EnsureGraphDataReq.Limit, _Mapping]] = ..., include: _Optional[_Union[EnsureGraphDataReq.Include, _Mapping]] = ...) -> None: ...

class EnsureGraphDataRsp(_message.Message):
    __slots__ = ("accepted", "quest_ids", "template_ids", "template_error", "result", "should_halt")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    QUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_IDS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SHOULD_HALT_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    quest_ids: _containers.RepeatedCompositeFieldContainer[Quest.ID]
    template_ids: _containers.RepeatedCompositeFieldContainer[Quest.ID]
    template_error: _containers.RepeatedScalarFieldContainer[str]
    result: GraphData
    should_halt: bool
    def __init__(self, accepted: _Optional[bool] = ..., quest_ids: _Optional[_Iterable[_Union[Quest.ID, _Mapping]]] = ..., template_ids: _Optional[_Iterable[_Union[Quest.ID, _Mapping]]] = ..., template_error: _Optional[_Iterable[str]] = ..., result: _Optional[_Union[GraphData, _Mapping]] = ..., should_halt: _Optional[bool] = ...) -> None: ...

class ActivateExecutionReq(_message.Message):
    __slots__ = ("auth", "execution_token")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    auth: Execution.Auth
    execution_token: bytes
    def __init__(self, auth: _Optional[_Union[Execution.Auth, _Mapping]] = ..., execution_token: _Optional[bytes] = ...) -> None: ...

class FinishAttemptReq(_message.Message):
    __slots__ = ("auth", "data")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    auth: Execution.Auth
    data: JsonResult
    def __init__(self, auth: _Optional[_Union[Execution.Auth, _Mapping]] = ..., data: _Optional[_Union[JsonResult, _Mapping]] = ...) -> None: ...

class CancelAttemptReq(_message.Message):
    __slots__ = ("attempt", "reason")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    attempt: Attempt.ID
    reason: str
    def __init__(self, attempt: _Optional[_Union[Attempt.ID, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...
