"""The fake distributor: an in-memory test double (spec §5.1).

Nothing runs by itself: the test plays the job. ``FakeWorld.run_task(eid,
callback)`` hands the callback a :class:`Job` with the execution's auth, quest
description and distributor state (the previous execution's result); the
callback may ``activate``, ``dep_on`` / ``ensure_graph_data``, ``walk_graph``
and ``finish`` (without ``activate`` first: with the activation token), then
return (success: the execution's distributor result is ``job.state``), raise
(FAILED) or raise :class:`Crash` (CRASHED). The world then publishes a
notification, as a real distributor would.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distributors.fake import config_pb2
from dmcore import distributor as dist
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2

if TYPE_CHECKING:
    from dmcore.service import Service

KIND = "fake"


class Crash(Exception):
    """Raised by a job callback to simulate a crash (CRASHED, like a Go panic)."""


@dataclasses.dataclass
class FakeTask:
    eid: ExecutionID
    auth: dm_pb2.Execution.Auth
    desc: dm_pb2.Quest.Desc
    state: dict[str, Any]
    topic: str
    auth_token: str
    config_name: str
    result: dm_pb2.Result | None = None
    ran: bool = False


class Job:
    """What a test's callback gets: the running job's view of dm."""

    def __init__(self, world: FakeWorld, task: FakeTask) -> None:
        self._world = world
        self._task = task
        self.eid = task.eid
        self.desc = task.desc
        self.state = task.state
        self.token = b""

    @property
    def params(self) -> Any:
        return json.loads(self.desc.parameters)

    @property
    def auth(self) -> dm_pb2.Execution.Auth:
        return dm_pb2.Execution.Auth(id=self.eid.to_proto(), token=self.token)

    def activate(self) -> None:
        token = bytes(self._world.rand(32))
        self._world.service.activate_execution(
            dm_pb2.ActivateExecutionReq(auth=self._task.auth, execution_token=token)
        )
        self.token = token

    def ensure_graph_data(self, req: dm_pb2.EnsureGraphDataReq) -> dm_pb2.EnsureGraphDataRsp:
        from dmcore.service import Caller

        req.for_execution.CopyFrom(self.auth)
        return self._world.service.ensure_graph_data(req, Caller.anonymous())

    def dep_on(
        self, *attempts: AttemptID, quests: list[dm_pb2.Quest.Desc] | None = None
    ) -> dm_pb2.EnsureGraphDataRsp:
        """Depend on ``attempts`` (of existing quests, or of ``quests`` created here)."""
        req = dm_pb2.EnsureGraphDataReq()
        req.include.attempt.result = True
        by_quest: dict[str, list[int]] = {}
        for a in attempts:
            by_quest.setdefault(a.quest, []).append(a.num)
        from dmcore import ids

        for q in quests or []:
            qid = ids.quest_id(q)
            req.quest.append(q)
            req.quest_attempt.add(nums=by_quest.pop(qid, [1]))
        for qid, nums in by_quest.items():
            req.raw_attempts.to[qid].nums.extend(nums)
        return self.ensure_graph_data(req)

    def walk_graph(self, req: dm_pb2.WalkGraphReq) -> dm_pb2.GraphData:
        from dmcore.service import Caller

        req.auth.CopyFrom(self.auth)
        return self._world.service.walk_graph(req, Caller.anonymous())

    def finish(self, result: Any, *, expiration_us: int | None = None) -> None:
        text = result if isinstance(result, str) else json.dumps(result)
        data = dm_pb2.JsonResult(object=text)
        if expiration_us is not None:
            data.expiration.FromMicroseconds(expiration_us)
        # Not activated: the activation token activates and finishes at once.
        auth = self.auth if self.token else self._task.auth
        self._world.service.finish_attempt(dm_pb2.FinishAttemptReq(auth=auth, data=data))


class FakeWorld:
    """Holds the fake's tasks across distributor instances (one per test)."""

    def __init__(self, rand: Callable[[int], bytes] | None = None) -> None:
        import os

        self.rand = rand or os.urandom
        self.tasks: dict[str, FakeTask] = {}
        self.run_error: Exception | None = None
        self.service: Service
        self.publish: Callable[[str, bytes, dict[str, str]], None] = lambda t, d, a: None
        self.runs = 0
        self.in_process = True
        """Registered as an in-process kind (dm may call it inside its batches); False
        makes it stand for a distributor that starts processes or asks servers, which
        the embedded worker calls only after its batch commits."""

    def install(self, registry: dist.Registry) -> None:
        registry.register(KIND, config_pb2.Config, self.factory, in_process=self.in_process)

    def factory(self, cfg: dist.Config) -> dist.D:
        assert isinstance(cfg.content, config_pb2.Config)
        return FakeDistributor(self, cfg)

    @staticmethod
    def token_of(eid: ExecutionID) -> str:
        return f"fakeDistributor:{eid}"

    def pending(self) -> list[ExecutionID]:
        """Executions handed to the fake and not yet played."""
        return [t.eid for t in self.tasks.values() if not t.ran]

    def task(self, eid: ExecutionID) -> FakeTask:
        return self.tasks[self.token_of(eid)]

    def run_task(
        self, eid: ExecutionID, callback: Callable[[Job], None], *, notify: bool = True
    ) -> dm_pb2.Result:
        """Play execution ``eid`` with ``callback``; publish its end unless ``notify`` is False."""
        task = self.task(eid)
        if task.ran:
            raise RuntimeError(f"task {eid} already ran")
        task.ran = True
        job = Job(self, task)
        try:
            callback(job)
        except Crash as e:
            task.result = _abnormal(dm_pb2.AbnormalFinish.CRASHED, f"caught panic: {e}")
        except Exception as e:
            task.result = _abnormal(dm_pb2.AbnormalFinish.FAILED, str(e) or type(e).__name__)
        else:
            task.result = dm_pb2.Result(data=dist.result_json(job.state))
        if notify:
            self.notify(eid)
        return task.result

    def notify(self, eid: ExecutionID) -> None:
        task = self.task(eid)
        self.publish(task.topic, b"", {"token": self.token_of(eid), "auth_token": task.auth_token})


def _abnormal(status: dm_pb2.AbnormalFinish.Status, reason: str) -> dm_pb2.Result:
    return dm_pb2.Result(abnormal_finish=dm_pb2.AbnormalFinish(status=status, reason=reason))


class FakeDistributor(dist.D):
    def __init__(self, world: FakeWorld, cfg: dist.Config) -> None:
        self.world = world
        self.cfg = cfg

    def run(
        self,
        desc: dm_pb2.Quest.Desc,
        auth: dm_pb2.Execution.Auth,
        prev_result: dm_pb2.JsonResult | None,
    ) -> dist.Started:
        if self.world.run_error is not None:
            raise self.world.run_error
        eid = ExecutionID.from_proto(auth.id)
        token = FakeWorld.token_of(eid)
        if token not in self.world.tasks:
            topic, auth_token = self.cfg.prepare_topic(eid)
            state = json.loads(prev_result.object) if prev_result and prev_result.object else {}
            self.world.tasks[token] = FakeTask(
                eid, auth, desc, state, topic, auth_token, self.cfg.name
            )
        self.world.runs += 1
        assert isinstance(self.cfg.content, config_pb2.Config)
        return dist.Started(
            token,
            self.cfg.content.poll_timeout.ToTimedelta(),
            self.cfg.content.poll_interval.ToTimedelta(),
        )

    def cancel(self, desc: dm_pb2.Quest.Desc, token: str) -> None:
        task = self.world.tasks.get(token)
        if task is None:
            raise ValueError(f"unknown task {token}")
        if task.result is None:
            task.ran = True
            task.result = _abnormal(dm_pb2.AbnormalFinish.CANCELLED, "cancelled via Cancel()")

    def get_status(self, desc: dm_pb2.Quest.Desc, token: str) -> dm_pb2.Result | None:
        task = self.world.tasks.get(token)
        if task is None:
            return _abnormal(dm_pb2.AbnormalFinish.MISSING, f"unknown token {token}")
        return task.result

    def info_url(self, token: str) -> str:
        return f"https://info.example.com/{token}"

    def handle_notification(
        self, desc: dm_pb2.Quest.Desc, notification: dist.Notification
    ) -> dm_pb2.Result | None:
        return self.get_status(desc, notification.attrs.get("token", ""))

    def handle_task_queue_task(self, request: dist.TaskRequest) -> list[dist.Notification]:
        return []

    def validate(self, distributor_parameters: str) -> None:
        return None


def register(registry: dist.Registry) -> None:
    """Entry point: a fake with its own world (tests build theirs with FakeWorld.install)."""
    FakeWorld().install(registry)


def quest_desc(name: str, config: str = "fake", **meta: Any) -> dm_pb2.Quest.Desc:
    """A quest for the fake distributor, like DM's fake ``QuestDesc(name)``."""
    desc = dm_pb2.Quest.Desc(
        distributor_config_name=config,
        parameters=json.dumps({"name": name}),
        distributor_parameters="{}",
    )
    for k, v in meta.items():
        setattr(desc.meta.retry, k, v)
    return desc
