"""The jobsim distributor end to end (spec §5.2): the real engine, the task-queue
path, a fake clock.

Jobs run as queued distributor tasks that talk to dm through its client; most
tests run on the real local queue and on the ChaosQueue (duplicated,
reordered, delayed deliveries, dispatches failing after the commit), and the
outcome must not change. Expected values are computed here independently of
the implementation (our own FNV-64a, our own seed draws).
"""

from __future__ import annotations

import base64
import ctypes
import json
import pathlib
import random
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from distributors import jobsim
from distributors.jobsim import config_pb2
from dmcore import distributor as dist
from dmcore import ids
from dmcore.engine import docs
from dmcore.engine.records import b64
from dmcore.engine.steps import NotifyExecution
from dmcore.errors import InvalidArgument, Unavailable
from dmcore.ids import AttemptID, ExecutionID
from dmcore.proto import dm_pb2
from dmcore.service import Caller
from dmcore.states import AbnormalStatus, AttemptState, ExecutionState
from tests.harness import Chaos, Harness, follow_ups_left, qid_of

CONFIGS = {
    "fake": {"fake": {}},
    "jobsim": {"jobsim": {"pool": "p"}},
    "jobsim_poll": {"jobsim": {"pool": "p/poll", "do_pollback": True}},
    "jobsim_alias": {"alias": {"other_config": "jobsim"}},
}

FANOUT = (
    '{"name":"hello","stages":[{"deps":{"deps":[{"shards":6,"attempts":{"items":'
    '[{"single":1}]},"mix_seed":true,"phrase":{"name":"leaf","return_stage":{"retval":3}}}]}}]}'
)


# -- the bench -----------------------------------------------------------------------------


def bench(
    tmp_path: pathlib.Path, queue: str = "local", *, seed: int = 7, chaos: Chaos | None = None
) -> Harness:
    """The engine harness with jobsim registered before its configs are set."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    h = Harness(tmp_path, queue=queue, seed=seed, chaos=chaos)
    jobsim.register(h.registry)
    h.registry.set_config(
        h.registry.config_from_dict({"distributor_configs": CONFIGS}), version="v1"
    )
    return h


@pytest.fixture(params=["local", "chaos"])
def jh(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Harness]:
    h = bench(
        tmp_path,
        request.param,
        chaos=Chaos(duplicate=0.5, delay=0.3, fail_dispatch=0.1),
    )
    yield h
    h.close()


@pytest.fixture
def lh(tmp_path: pathlib.Path) -> Iterator[Harness]:
    """The local queue only (tests that check timing to the second)."""
    h = bench(tmp_path)
    yield h
    h.close()


def settle(h: Harness, max_seconds: float = 3600) -> None:
    """``h.settle()`` until no outbox record is left.

    (On the ChaosQueue, Harness.settle returns early when a sweep's dispatch
    of outbox records fails, and raises when its enqueue of a due timer does.)
    """
    for _ in range(50):
        try:
            h.settle(max_seconds)
        except ConnectionError:
            continue
        if not follow_ups_left(h.store, h.clock()):
            return
    raise AssertionError("the committed follow-ups never drained")


def start(
    h: Harness, phrase: Any, config: str = "jobsim", attempts: tuple[int, ...] = (1,)
) -> AttemptID:
    desc = jobsim.quest_desc(phrase, config)
    (qid,) = h.ensure(desc, attempts=attempts)
    return AttemptID(qid, attempts[0])


def play(h: Harness, phrase: Any, config: str = "jobsim") -> tuple[AttemptID, Any]:
    """Run ``phrase`` as a root attempt until nothing is left to do; its result."""
    aid = start(h, phrase, config)
    settle(h)
    assert h.state(aid) == AttemptState.FINISHED, h.attempt(aid)
    return aid, h.result(aid)


def task(h: Harness, eid: ExecutionID, pool: str = "p") -> dict[str, Any]:
    doc = h.store.get(jobsim.task_path(f"{pool}|{eid}"))
    assert doc is not None
    return doc


def jobsim_quests(h: Harness) -> dict[str, dict[str, Any]]:
    """Every jobsim quest's parameters by phrase name."""
    out = {}
    for _, doc in h.store.query(docs.QUESTS):
        desc = dm_pb2.Quest.Desc.FromString(base64.b64decode(doc["desc"]))
        if desc.distributor_config_name.startswith("jobsim"):
            params = json.loads(desc.parameters)
            out[params["name"]] = {"params": params, "desc": desc}
    return out


# -- independent references ----------------------------------------------------------------


def ref_fnv64a(*values: int) -> int:
    """FNV-64a over int64 values packed little-endian, as a signed int64 (reference)."""
    h = 0xCBF29CE484222325
    for v in values:
        for b in struct.pack("<q", ctypes.c_int64(v).value):
            h ^= b
            h = (h * 0x100000001B3) % (1 << 64)
    return ctypes.c_int64(h).value


def ref_roll(seed: int, attempt: int, stage: int) -> float:
    """The documented failure roll: Random(fnv(seed, attempt, stage) as uint64).random()."""
    return random.Random(ref_fnv64a(seed, attempt, stage) % (1 << 64)).random()


def seed_where(pattern: list[bool], chance: float = 0.5) -> int:
    """The first seed whose failure stage fails (True) / passes (False) per attempt 1, 2, ..."""
    for s in range(1, 10_000):
        if [ref_roll(s, a, 0) < chance for a in range(1, len(pattern) + 1)] == pattern:
            return s
    raise AssertionError("no such seed")


def test_references_agree_with_known_vectors() -> None:
    assert ref_fnv64a() == ctypes.c_int64(0xCBF29CE484222325).value
    assert jobsim.fast_hash(0) == ref_fnv64a(0)
    for vals in [(1, 2, 3), (-5, 1 << 62, 0), (42 * 2147483647, 7, 0)]:
        assert jobsim.fast_hash(*vals) == ref_fnv64a(*vals)
    assert jobsim.failure_roll(99, 2, 1) == ref_roll(99, 2, 1)


# -- return stage --------------------------------------------------------------------------


def test_default_return_value_is_a_json_number_without_expiration(jh: Harness) -> None:
    aid, result = play(jh, {"name": "plain"})
    assert result == {"success": True, "value": 1}
    raw = docs.read_result(jh.store, aid)
    assert raw is not None
    assert raw["object"] == '{"success":true,"value":1}'  # a number, not "1"
    assert "expiration_us" not in raw  # no epoch default


def test_return_stage_retval_and_expiration(jh: Harness) -> None:
    aid, result = play(
        jh,
        {"name": "exp", "return_stage": {"retval": 41, "expiration": "2030-01-02T03:04:05Z"}},
    )
    assert result == {"success": True, "value": 41}
    raw = docs.read_result(jh.store, aid)
    assert raw is not None
    assert raw["expiration_us"] == 1893553445 * 1_000_000


def test_execution_result_is_the_job_state(jh: Harness) -> None:
    aid, _ = play(jh, {"name": "st", "stages": [{"failure": {"chance": 0}}]})
    ex = jh.execution(aid.execution(1))
    assert json.loads(ex["result"]["data"]["object"]) == {"Stage": 1, "Sum": 0}
    assert task(jh, aid.execution(1))["status"] == jobsim.FINISHED


# -- failure stage -------------------------------------------------------------------------


def test_failure_chance_zero_never_fails(jh: Harness) -> None:
    _, result = play(jh, {"name": "f0", "seed": 3, "stages": [{"failure": {"chance": 0}}]})
    assert result == {"success": True, "value": 1}


def test_failure_chance_one_always_fails_but_the_attempt_finishes(jh: Harness) -> None:
    aid, result = play(
        jh,
        {
            "name": "f1",
            "stages": [{"failure": {"chance": 1}}],
            "return_stage": {"retval": 5},
        },
    )
    assert result == {"success": False, "value": 0}
    assert h_state_is_finished_normally(jh, aid)


def h_state_is_finished_normally(h: Harness, aid: AttemptID) -> bool:
    att = h.attempt(aid)
    return att["state"] == AttemptState.FINISHED and not att.get("is_abnormal")


def test_failure_mid_chance_follows_the_seed(jh: Harness) -> None:
    s_fail, s_pass = seed_where([True]), seed_where([False])
    for s, expect in [(s_fail, False), (s_pass, True)]:
        _, result = play(
            jh, {"name": f"mid{s}", "seed": s, "stages": [{"failure": {"chance": 0.5}}]}
        )
        assert result["success"] is expect, s


def test_same_phrase_and_seed_give_the_same_outcome(tmp_path: pathlib.Path) -> None:
    phrase = {
        "name": "again",
        "seed": 12345,
        "stages": [
            {"failure": {"chance": 0.3}},
            {
                "deps": {
                    "deps": [
                        {
                            "shards": 3,
                            "mix_seed": True,
                            "phrase": {
                                "name": "sub",
                                "stages": [{"failure": {"chance": 0.5}}],
                                "return_stage": {"retval": 10},
                            },
                        }
                    ]
                }
            },
            {"failure": {"chance": 0.3}},
        ],
    }
    outcomes = []
    for i, queue in enumerate(["local", "chaos", "local"]):
        h = bench(tmp_path / str(i), queue, seed=i)
        try:
            aid, result = play(h, phrase)
            outcomes.append((aid, result, sorted(jobsim_quests(h))))
        finally:
            h.close()
    assert outcomes[0] == outcomes[1] == outcomes[2]


# -- stall stage ---------------------------------------------------------------------------


def test_stall_requeues_on_dms_clock_and_completes_later(lh: Harness) -> None:
    aid = start(
        lh, {"name": "nap", "stages": [{"stall": {"delay": "30s"}}], "return_stage": {"retval": 4}}
    )
    lh.drain()
    eid = aid.execution(1)
    assert lh.exec_state(eid) == ExecutionState.RUNNING
    t = task(lh, eid)
    assert t["status"] == jobsim.STALLED
    assert json.loads(t["state"]) == {"Stage": 1, "Sum": 0}
    due = lh.next_due_us()
    assert due is not None and due - lh.clock() == 30_000_000
    lh.advance(29)
    assert task(lh, eid)["status"] == jobsim.STALLED
    assert lh.state(aid) == AttemptState.EXECUTING
    lh.advance(1)
    assert lh.state(aid) == AttemptState.FINISHED
    assert lh.result(aid) == {"success": True, "value": 4}
    assert lh.attempt(aid)["cur_execution"] == 1  # one execution, kept RUNNING meanwhile
    assert lh.failures == []


def test_stall_then_deps_on_both_queues(jh: Harness) -> None:
    _, result = play(
        jh,
        {
            "name": "slow",
            "stages": [
                {"stall": {"delay": "5s"}},
                {"deps": {"deps": [{"phrase": {"name": "x", "return_stage": {"retval": 2}}}]}},
                {"stall": {"delay": "1.5s"}},
            ],
        },
    )
    assert result == {"success": True, "value": 3}


def test_stall_past_the_run_timeout_times_out_and_the_wakeup_quits_quietly(lh: Harness) -> None:
    desc = jobsim.quest_desc({"name": "late", "stages": [{"stall": {"delay": "60s"}}]})
    desc.meta.timeouts.run.FromSeconds(10)
    (qid,) = lh.ensure(desc)
    aid = AttemptID(qid, 1)
    settle(lh)
    assert lh.state(aid) == AttemptState.ABNORMAL_FINISHED
    assert lh.attempt(aid)["abnormal"]["status"] == AbnormalStatus.TIMED_OUT
    t = task(lh, aid.execution(1))
    assert t["status"] == jobsim.FAILED and "activation refused" in t["reason"]
    assert lh.failures == []


def test_empty_deps_and_zero_stall_are_no_ops(jh: Harness) -> None:
    aid, result = play(
        jh, {"name": "noop", "stages": [{"deps": {}}, {"stall": {"delay": "0s"}}, {"stall": {}}]}
    )
    assert result == {"success": True, "value": 1}
    assert jh.attempt(aid)["cur_execution"] == 1


# -- deps stage ----------------------------------------------------------------------------


def test_deps_with_shards_sum_successful_values(jh: Harness) -> None:
    aid, result = play(
        jh,
        {
            "name": "root",
            "stages": [
                {
                    "deps": {
                        "deps": [
                            {
                                "shards": 3,
                                "phrase": {"name": "leaf", "return_stage": {"retval": 2}},
                            },
                            {"phrase": {"name": "solo", "return_stage": {"retval": 10}}},
                            {"phrase": {"name": "bad", "stages": [{"failure": {"chance": 1}}]}},
                        ]
                    }
                }
            ],
            "return_stage": {},
        },
    )
    assert result == {"success": True, "value": 3 * 2 + 10}  # "bad" adds nothing; retval 0
    quests = jobsim_quests(jh)
    assert sorted(quests) == ["bad", "leaf_0", "leaf_1", "leaf_2", "root", "solo"]
    for q in quests.values():
        assert q["desc"].distributor_config_name == "jobsim"
        assert q["desc"].distributor_parameters == "{}"
    # Halted once for the deps, then resumed with the saved state.
    assert jh.attempt(aid)["cur_execution"] == 2
    first = jh.execution(aid.execution(1))["result"]["data"]["object"]
    assert json.loads(first) == {"Stage": 0, "Sum": 0}


def test_stages_accumulate_across_executions(jh: Harness) -> None:
    aid, result = play(
        jh,
        {
            "name": "multi",
            "stages": [
                {"deps": {"deps": [{"phrase": {"name": "a", "return_stage": {"retval": 2}}}]}},
                {"failure": {"chance": 0}},
                {"deps": {"deps": [{"phrase": {"name": "b", "return_stage": {"retval": 5}}}]}},
            ],
        },
    )
    assert result == {"success": True, "value": 2 + 5 + 1}
    assert jh.attempt(aid)["cur_execution"] == 3
    second = jh.execution(aid.execution(2))["result"]["data"]["object"]
    assert json.loads(second) == {"Stage": 2, "Sum": 2}


def test_fanout_example_from_the_spec(jh: Harness) -> None:
    _, result = play(jh, FANOUT)
    leaves, retval, default_retval = 6, 3, 1
    assert result == {"success": True, "value": leaves * retval + default_retval}  # 19
    # The leaves' seeds are draws from a Random seeded with the root's seed (0).
    rnd = random.Random(0)
    want = {f"leaf_{i}": rnd.getrandbits(63) for i in range(leaves)}
    quests = jobsim_quests(jh)
    got = {n: int(q["params"]["seed"]) for n, q in quests.items() if n.startswith("leaf")}
    assert got == want
    for n in want:
        assert jh.state(AttemptID(_qid(jh, n), 1)) == AttemptState.FINISHED


def _qid(h: Harness, name: str) -> str:
    from dmcore import ids

    return ids.quest_id(jobsim_quests(h)[name]["desc"])


def test_sparse_attempts_each_count(jh: Harness) -> None:
    _, result = play(
        jh,
        {
            "name": "sparse",
            "stages": [
                {
                    "deps": {
                        "deps": [
                            {
                                "attempts": {
                                    "items": [{"single": 1}, {"range": {"low": 3, "high": 4}}]
                                },
                                "phrase": {"name": "leaf", "return_stage": {"retval": 2}},
                            }
                        ]
                    }
                }
            ],
        },
    )
    assert result == {"success": True, "value": 3 * 2 + 1}
    qid = _qid(jh, "leaf")
    for n, exists in [(1, True), (2, False), (3, True), (4, True)]:
        assert (jh.store.get(docs.attempt_path(AttemptID(qid, n))) is not None) is exists


def test_sub_quests_use_the_requested_config_name(jh: Harness) -> None:
    play(
        jh,
        {"name": "al", "stages": [{"deps": {"deps": [{"phrase": {"name": "kid"}}]}}]},
        config="jobsim_alias",
    )
    assert jobsim_quests(jh)["kid"]["desc"].distributor_config_name == "jobsim_alias"


# -- chain stage ---------------------------------------------------------------------------


def nested_chain(depth: int) -> dict[str, Any]:
    """A chain of ``depth`` + 1 jobs spelled as deps stages nested ``depth`` deep."""
    phrase: dict[str, Any] = {"name": "n0"}
    for i in range(1, depth + 1):
        phrase = {"name": f"n{i}", "stages": [{"deps": {"deps": [{"phrase": phrase}]}}]}
    return phrase


def chain_links(h: Harness) -> dict[int, AttemptID]:
    """The attempt 1 of every quest whose phrase is a chain, by its link count."""
    out: dict[int, AttemptID] = {}
    for path, doc in h.store.query(docs.QUESTS):
        params = json.loads(dm_pb2.Quest.Desc.FromString(base64.b64decode(doc["desc"])).parameters)
        stages = params.get("stages", [])
        if stages and "chain" in stages[0]:
            out[int(stages[0]["chain"].get("links", 0))] = AttemptID(path.rsplit("/", 1)[1], 1)
    return out


def test_chain_stage_waits_link_by_link_and_sums(jh: Harness) -> None:
    links = 4
    aid, result = play(
        jh,
        {"name": "c", "seed": 5, "stages": [{"chain": {"links": links}}, {"failure": {}}]},
    )
    assert result == {"success": True, "value": links + 1}  # every link adds its retval 1
    by_links = chain_links(jh)
    assert sorted(by_links) == list(range(links + 1))
    assert by_links[links] == aid
    for n, link in by_links.items():
        assert jh.result(link) == {"success": True, "value": n + 1}
        # Each link but the bottom one halted once for the link below, then resumed.
        assert jh.attempt(link)["cur_execution"] == (1 if n == 0 else 2)
    # Same name and seed all the way down: only the link count tells them apart.
    params = [json.loads(q["desc"].parameters) for q in jobsim_quests(jh).values()]
    assert {(p["name"], int(p["seed"])) for p in params} == {("c", 5)}


def test_chain_stage_with_no_links_does_nothing(jh: Harness) -> None:
    aid, result = play(jh, {"name": "c", "stages": [{"chain": {}}]})
    assert result == {"success": True, "value": 1}
    assert jh.attempt(aid)["cur_execution"] == 1
    assert list(chain_links(jh)) == [0]


def test_a_long_chain_needs_the_chain_stage() -> None:
    """Nested deps stop parsing past ~20 levels; a chain stage of any length parses."""
    jobsim.parse_phrase(json.dumps(nested_chain(10)))
    with pytest.raises(ValueError, match="phrase"):
        jobsim.parse_phrase(json.dumps(nested_chain(40)))
    long = jobsim.parse_phrase(json.dumps({"name": "c", "stages": [{"chain": {"links": 199}}]}))
    assert long.stages[0].chain.links == 199
    with pytest.raises(ValueError, match=r"stages\[0\]\.chain\.links: more than"):
        jobsim.parse_phrase(
            json.dumps({"name": "c", "stages": [{"chain": {"links": jobsim.MAX_EXPANDED + 1}}]})
        )


def test_a_chain_of_60_runs_to_the_end(lh: Harness) -> None:
    _, result = play(lh, {"name": "long", "stages": [{"chain": {"links": 59}}]})
    assert result == {"success": True, "value": 60}
    assert len(chain_links(lh)) == 60


# -- retries strategy ----------------------------------------------------------------------


def flaky_parent(retries: int, seed: int) -> dict[str, Any]:
    return {
        "name": f"parent{retries}",
        "stages": [
            {
                "deps": {
                    "deps": [
                        {
                            "retries": retries,
                            "phrase": {
                                "name": "flaky",
                                "seed": seed,
                                "stages": [{"failure": {"chance": 0.5}}],
                                "return_stage": {"retval": 7},
                            },
                        }
                    ]
                }
            }
        ],
    }


def test_retries_depend_on_the_next_attempt_until_one_succeeds(jh: Harness) -> None:
    seed = seed_where([True, True, False])  # fails on attempts 1 and 2, passes on 3
    _, result = play(jh, flaky_parent(2, seed))
    assert result == {"success": True, "value": 7 + 1}  # only attempt 3's value
    qid = _qid(jh, "flaky")
    got = [jh.result(AttemptID(qid, n)) for n in (1, 2, 3)]
    assert got == [
        {"success": False, "value": 0},
        {"success": False, "value": 0},
        {"success": True, "value": 7},
    ]
    assert jh.store.get(docs.attempt_path(AttemptID(qid, 4))) is None


def test_retries_exhausted_count_the_failure(jh: Harness) -> None:
    seed = seed_where([True, True, False])
    _, result = play(jh, flaky_parent(1, seed))
    assert result == {"success": True, "value": 1}  # the dependency added nothing
    qid = _qid(jh, "flaky")
    assert jh.result(AttemptID(qid, 2)) == {"success": False, "value": 0}
    assert jh.store.get(docs.attempt_path(AttemptID(qid, 3))) is None


def test_retries_stop_at_the_first_success(jh: Harness) -> None:
    seed = seed_where([False])
    _, result = play(jh, flaky_parent(5, seed))
    assert result == {"success": True, "value": 8}
    assert jh.store.get(docs.attempt_path(AttemptID(_qid(jh, "flaky"), 2))) is None


# -- seeds ---------------------------------------------------------------------------------


def _seed_of(h: Harness, mix: bool, own: int, parent: int = 42) -> int:
    phrase = {
        "name": f"p{mix}{own}",
        "seed": parent,
        "stages": [
            {"deps": {"deps": [{"mix_seed": mix, "phrase": {"name": f"k{mix}{own}", "seed": own}}]}}
        ],
    }
    play(h, phrase)
    return int(jobsim_quests(h)[f"k{mix}{own}"]["params"].get("seed", 0))


def test_derived_seeds(jh: Harness) -> None:
    assert _seed_of(jh, False, 7) == 7  # own seed
    assert _seed_of(jh, False, 0) == 42  # parent's seed
    assert _seed_of(jh, True, 7) == ref_fnv64a(42 * 2147483647, 7, 0)  # blend
    assert _seed_of(jh, True, 0) == random.Random(42).getrandbits(63)  # seeded draw


def test_mix_seed_changes_the_outcome_deterministically() -> None:
    dep = config_pb2.Dependency()
    dep.phrase.name = "x"
    dep.phrase.seed = 9
    plain = jobsim.derive_seed(dep, 5, 0, random.Random(0))
    dep.mix_seed = True
    mixed = [jobsim.derive_seed(dep, 5, i, random.Random(0)) for i in range(3)]
    assert plain == 9
    assert len(set(mixed)) == 3 and 9 not in mixed
    assert mixed[0] == ref_fnv64a(ctypes.c_int64(5 * 2147483647).value, 9, 0)
    # Negative parent seeds wrap like Go's int64 multiplication.
    assert jobsim.derive_seed(dep, -(1 << 62), 1, random.Random(0)) == ref_fnv64a(
        ctypes.c_int64(-(1 << 62) * 2147483647).value, 9, 1
    )


# -- cancel, idempotence, duplicates ---------------------------------------------------------


def _distributor(h: Harness, name: str = "jobsim") -> jobsim.JobsimDistributor:
    d, _ = h.registry.build_named(name)
    assert isinstance(d, jobsim.JobsimDistributor)
    return d


def _fake_auth(n: int = 1) -> dm_pb2.Execution.Auth:
    eid = ExecutionID("A" * 43, 1, n)
    return dm_pb2.Execution.Auth(id=eid.to_proto(), token=b"t" * 32)


def test_run_is_idempotent_per_execution(lh: Harness) -> None:
    calls: list[tuple[bytes, str | None]] = []
    inner = lh.registry.enqueue_task
    assert inner is not None

    def counting(config: dist.Snapshot, body: bytes, delay: float, name: str | None) -> None:
        calls.append((body, name))
        inner(config, body, delay, name)

    lh.registry.enqueue_task = counting
    d = _distributor(lh)
    desc = jobsim.quest_desc({"name": "once"})
    a = d.run(desc, _fake_auth(), None)
    b = d.run(desc, _fake_auth(), None)
    assert a == b == dist.Started(f"p|{'A' * 43}|1|1", a.poll_timeout)
    assert a.poll_timeout.total_seconds() == 0
    # Queued under the task's name each time: the queue keeps one task (its body names
    # the task: what every dm reads, by default).
    assert calls == [(a.token.encode(), a.token)] * 2
    assert lh.local is not None
    assert [lt.task.target for lt in lh.local.lease(10)] == ["distributor/jobsim"]
    assert "/" not in jobsim.task_path("x/y|z").split("/", 1)[1]


def test_enqueue_failure_in_run_is_transient_and_retried(lh: Harness) -> None:
    inner = lh.registry.enqueue_task
    assert inner is not None
    fail = [True]

    def flaky(config: dist.Snapshot, body: bytes, delay: float, name: str | None) -> None:
        if fail.pop(0) if fail else False:
            raise ConnectionError("queue down")
        inner(config, body, delay, name)

    lh.registry.enqueue_task = flaky
    d = _distributor(lh)
    desc = jobsim.quest_desc({"name": "retry-enqueue"})
    with pytest.raises(dist.TransientError):
        d.run(desc, _fake_auth(), None)
    d.run(desc, _fake_auth(), None)  # stored already, queued now
    assert jobsim_task_doc(lh, f"p|{'A' * 43}|1|1")["status"] == "runnable"
    assert lh.local is not None
    assert [lt.task.target for lt in lh.local.lease(10)] == ["distributor/jobsim"]


def jobsim_task_doc(h: Harness, token: str) -> dict[str, Any]:
    doc = h.store.get(jobsim.task_path(token))
    assert doc is not None
    return doc


def test_cancel_runnable_is_idempotent_and_the_task_never_runs(lh: Harness) -> None:
    d = _distributor(lh)
    desc = jobsim.quest_desc({"name": "never"})
    tok = d.run(desc, _fake_auth(), None).token
    assert d.get_status(desc, tok) is None
    d.cancel(desc, tok)
    d.cancel(desc, tok)
    r = d.get_status(desc, tok)
    assert r is not None and r.abnormal_finish.status == dm_pb2.AbnormalFinish.CANCELLED
    lh.drain()  # the queued task finds it cancelled and does nothing
    assert jobsim_task_doc(lh, tok)["status"] == jobsim.CANCELLED
    assert lh.failures == []


def test_cancel_leaves_a_finished_task_finished(jh: Harness) -> None:
    aid, _ = play(jh, {"name": "done"})
    d = _distributor(jh)
    tok = f"p|{aid.execution(1)}"
    d.cancel(dm_pb2.Quest.Desc(), tok)
    r = d.get_status(dm_pb2.Quest.Desc(), tok)
    assert r is not None and json.loads(r.data.object) == {"Stage": 0, "Sum": 0}


def test_cancel_unknown_token_is_a_no_op_and_status_is_missing(lh: Harness) -> None:
    d = _distributor(lh)
    d.cancel(dm_pb2.Quest.Desc(), "p|nope")
    r = d.get_status(dm_pb2.Quest.Desc(), "p|nope")
    assert r is not None and r.abnormal_finish.status == dm_pb2.AbnormalFinish.MISSING


def test_cancel_attempt_while_stalled(lh: Harness) -> None:
    aid = start(lh, {"name": "zzz", "stages": [{"stall": {"delay": "3600s"}}]})
    lh.drain()
    assert task(lh, aid.execution(1))["status"] == jobsim.STALLED
    lh.service.cancel_attempt(
        dm_pb2.CancelAttemptReq(attempt=aid.to_proto(), reason="bored"), Caller.trusted()
    )
    assert lh.state(aid) == AttemptState.ABNORMAL_FINISHED
    assert lh.attempt(aid)["abnormal"]["status"] == AbnormalStatus.CANCELLED
    settle(lh, max_seconds=2 * 3600)  # the wake-up comes and finds it cancelled
    assert task(lh, aid.execution(1))["status"] == jobsim.CANCELLED
    assert lh.failures == []


def test_duplicate_task_delivery_is_harmless(lh: Harness) -> None:
    aid, result = play(lh, {"name": "dup", "stages": [{"failure": {"chance": 0}}]})
    d = _distributor(lh)
    tok = f"p|{aid.execution(1)}"
    before = (lh.attempt(aid), lh.execution(aid.execution(1)), task(lh, aid.execution(1)))
    notes = d.handle_task_queue_task(dist.TaskRequest(tok.encode()))
    # The delivery that ended the job reports again (in case that report was lost) ...
    assert [json.loads(n.data) for n in notes] == [
        {"Status": "finished", "StateOrReason": '{"Stage":1,"Sum":0}'}
    ]
    for n in notes:  # processed as dm processes a distributor task's notifications
        NotifyExecution(eid=str(n.execution_id), data_b64=b64(n.data), attrs={}).execute(
            lh.engine, 1
        )
    settle(lh)
    # ... and nothing ran twice.
    after = (lh.attempt(aid), lh.execution(aid.execution(1)), task(lh, aid.execution(1)))
    assert after == before
    assert lh.result(aid) == result
    # A delivery while the job runs (another worker has it) does nothing.
    lh.store.transaction(
        lambda tx: tx.set(
            jobsim.task_path(tok), {**task(lh, aid.execution(1)), "status": "running"}
        )
    )
    assert d.handle_task_queue_task(dist.TaskRequest(tok.encode())) == []


def test_a_job_that_only_finishes_plays_unclaimed_and_a_second_play_ends_alike(
    lh: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No claim is written for a job that only finishes: another delivery meanwhile
    (another worker) plays it too, with the same result, and the task ends once."""
    d = _distributor(lh)
    inner = jobsim._Job.finish
    nested: list[list[dist.Notification]] = []
    seen: list[str] = []

    def finish_twice(self: Any, **kw: Any) -> Any:
        tok = f"p|{self.eid}"
        if not seen:
            seen.append(task(lh, self.eid)["status"])
            nested.append(d.handle_task_queue_task(dist.TaskRequest(tok.encode())))
        return inner(self, **kw)

    monkeypatch.setattr(jobsim._Job, "finish", finish_twice)
    for phrase in (
        {"name": "only-finishes", "stages": [{"failure": {"chance": 0}}]},
        {"name": "stalls-first", "stages": [{"stall": {"delay": "0s"}}]},
    ):
        nested.clear()
        seen.clear()
        aid, result = play(lh, phrase)
        assert result == {"success": True, "value": 1}
        assert task(lh, aid.execution(1))["status"] == jobsim.FINISHED
        assert lh.failures == []
        if phrase["name"] == "only-finishes":
            # Played from runnable: the second delivery played it too and reported.
            assert seen == [jobsim.RUNNABLE]
            assert [json.loads(n.data)["Status"] for n in nested[0]] == ["finished"]
        else:
            # A job that activates is claimed: the second delivery found it running.
            assert seen == [jobsim.RUNNING]
            assert nested[0] == []


def test_a_job_that_only_finishes_is_played_from_its_task_body(
    lh: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DM_JOBSIM_TASK_BODY=job its task carries the job (nothing read to play it);
    a delivery after its end plays it again to the same result, which dm accepts, and
    reports again; nothing changes."""
    monkeypatch.setenv(jobsim.BODY_ENV, jobsim.BODY_JOB)
    bodies: list[bytes] = []
    inner = lh.registry.enqueue_task
    assert inner is not None

    def keep(config: dist.Snapshot, body: bytes, delay: float, name: str | None) -> None:
        bodies.append(body)
        inner(config, body, delay, name)

    lh.registry.enqueue_task = keep
    aid, result = play(lh, {"name": "carried", "return_stage": {"retval": 6}})
    assert result == {"success": True, "value": 6}
    (body,) = bodies
    carried = json.loads(body)
    assert carried["task"] == f"p|{aid.execution(1)}" and carried["v"] == jobsim.BODY_VERSION
    assert set(carried["play"]) == set(jobsim.PLAYED)
    before = (lh.attempt(aid), task(lh, aid.execution(1)))
    notes = _distributor(lh).handle_task_queue_task(dist.TaskRequest(body))
    assert [json.loads(n.data)["Status"] for n in notes] == ["finished"]
    assert (lh.attempt(aid), task(lh, aid.execution(1))) == before
    assert lh.failures == []


# -- task bodies across dm's releases (rolling back with tasks in flight) ---------------------


def older_dm_parse(body: bytes) -> tuple[str, int]:
    """An older dm's task body parser, as dm had it before commit 8193f07 (copied): the
    task ID, then (wake-ups after a stall) a newline and the ticket number."""
    text = body.decode(errors="replace")
    head, sep, tail = text.rpartition("\n")
    if sep and tail.isdigit():
        return head, int(tail)
    return text, 0


def dm_8193f07_parse(body: bytes) -> tuple[str, int, dict[str, Any] | None]:
    """The parser of dm from commit 8193f07 until bodies had a version (copied): also a
    JSON object with the task ID and the job to play."""
    text = body.decode(errors="replace")
    if text.startswith("{"):
        try:
            obj = json.loads(text)
            task_id, play = obj["task"], obj["play"]
            if isinstance(task_id, str) and all(isinstance(play.get(k), str) for k in PLAYED):
                return task_id, 0, {"id": task_id, **{k: play[k] for k in PLAYED}}
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    head, sep, tail = text.rpartition("\n")
    if sep and tail.isdigit():
        return head, int(tail), None
    return text, 0, None


PLAYED = ("eid", "state", "activation", "phrase", "config")
"""The carried fields as dm_8193f07_parse knew them (jobsim.PLAYED may grow)."""

ROLLBACK_PHRASES: list[dict[str, Any]] = [
    {"name": "only-finishes", "stages": [{"failure": {"chance": 0}}]},
    {"name": "stalls", "stages": [{"stall": {"delay": "5s"}}, {"stall": {"delay": "7s"}}]},
    {"name": "deps", "stages": [{"deps": {"deps": [{"phrase": {"name": "dep"}}]}}]},
]


def _through_older_dm(h: Harness, bodies: list[bytes]) -> list[str]:
    """Every task dm queues is taken by an older dm: it reads the body with
    :func:`older_dm_parse` and claims the task that names as this dm claims a task ID
    (and wake-up) body, or drops the body if there is no such task (returned: the task
    IDs it dropped)."""
    inner = h.registry.enqueue_task
    assert inner is not None
    dropped: list[str] = []

    def older(config: dist.Snapshot, body: bytes, delay: float, name: str | None) -> None:
        bodies.append(body)
        task_id, wake = older_dm_parse(body)
        if h.store.get(jobsim.task_path(task_id)) is None:  # stored before it is queued
            dropped.append(task_id)
            return
        inner(config, f"{task_id}\n{wake}".encode() if wake else task_id.encode(), delay, name)

    h.registry.enqueue_task = older
    return dropped


def test_an_older_dm_runs_the_tasks_this_dm_queues_by_default(lh: Harness) -> None:
    """Rolled back with tasks in flight: an older dm (before 8193f07) reads every body this
    dm queues by default, so each job is played and its attempt finished, none waiting for
    its timeout."""
    bodies: list[bytes] = []
    dropped = _through_older_dm(lh, bodies)
    for phrase in ROLLBACK_PHRASES:
        aid = start(lh, phrase)
        settle(lh)
        assert dropped == []
        assert lh.state(aid) == AttemptState.FINISHED, phrase
        assert lh.result(aid)["success"] is True
    assert len(bodies) == 7  # 3 jobs, 2 wake-ups, the dependency, the resumed execution
    assert all(d["status"] == jobsim.FINISHED for _, d in lh.store.query(jobsim.TASKS))
    assert lh.failures == []


def test_with_the_job_in_its_body_an_older_dm_finds_no_task(
    lh: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why DM_JOBSIM_TASK_BODY=job waits until no older dm takes the tasks: such a body is
    a task ID no task has for an older dm (dropped: the execution waits for its
    timeout), while dm from 8193f07 on plays it."""
    monkeypatch.setenv(jobsim.BODY_ENV, jobsim.BODY_JOB)
    bodies: list[bytes] = []
    inner = lh.registry.enqueue_task
    assert inner is not None
    lh.registry.enqueue_task = lambda c, body, delay, name: bodies.append(body)
    aid = start(lh, ROLLBACK_PHRASES[0])
    lh.drain()
    (body,) = bodies
    task_id, _ = older_dm_parse(body)
    assert lh.store.get(jobsim.task_path(task_id)) is None
    assert dm_8193f07_parse(body) == jobsim._parse_body(body)
    # This dm (and dm since 8193f07) plays it: the attempt finishes.
    lh.registry.enqueue_task = inner
    assert jobsim._parse_body(body)[0] == f"p|{aid.execution(1)}"
    notes = _distributor(lh).handle_task_queue_task(dist.TaskRequest(body))
    assert [json.loads(n.data)["Status"] for n in notes] == ["finished"]
    for n in notes:  # processed as dm processes a distributor task's notifications
        NotifyExecution(eid=str(n.execution_id), data_b64=b64(n.data), attrs={}).execute(
            lh.engine, 1
        )
    settle(lh)
    assert lh.state(aid) == AttemptState.FINISHED
    assert task(lh, aid.execution(1))["status"] == jobsim.FINISHED


def test_bodies_an_older_dm_queued_are_read_by_this_dm(lh: Harness) -> None:
    """Rolled forward with tasks in flight: a task ID, a wake-up, the job in a body without
    a version (dm from 8193f07), all read; a body of a later version is read by its task
    ID (and wake-up) from the record."""
    assert jobsim._parse_body(b"p|q|1|1") == ("p|q|1|1", 0, None)
    assert jobsim._parse_body(b"p|q|1|1\n3") == ("p|q|1|1", 3, None)
    # Bodies naming a task only still read as such, even one whose pool starts with "{".
    assert jobsim._parse_body(b"{p|q|1|1") == ("{p|q|1|1", 0, None)
    assert jobsim._parse_body(b'{"task": "p|q|1|1"}\n2') == ('{"task": "p|q|1|1"}', 2, None)
    later = {"v": jobsim.BODY_VERSION + 1, "task": "p|q|1|1", "wake": 2, "play": {"x": 1}}
    assert jobsim._parse_body(json.dumps(later).encode()) == ("p|q|1|1", 2, None)
    later_first = {"v": jobsim.BODY_VERSION + 1, "task": "p|q|1|1", "job": {}}
    assert jobsim._parse_body(json.dumps(later_first).encode()) == ("p|q|1|1", 0, None)
    # The job in a body as dm from 8193f07 queued it (no version) is played as it is.
    queued: list[bytes] = []
    inner = lh.registry.enqueue_task
    assert inner is not None

    def as_8193f07(config: dist.Snapshot, body: bytes, delay: float, name: str | None) -> None:
        doc = lh.store.get(jobsim.task_path(body.decode()))
        assert doc is not None
        old = json.dumps({"task": doc["id"], "play": {k: doc[k] for k in PLAYED}}).encode()
        queued.append(old)
        inner(config, old, delay, name)

    lh.registry.enqueue_task = as_8193f07
    aid, result = play(lh, {"name": "carried", "return_stage": {"retval": 4}})
    assert result == {"success": True, "value": 4}
    assert len(queued) == 1 and jobsim._parse_body(queued[0])[2] is not None
    assert task(lh, aid.execution(1))["status"] == jobsim.FINISHED
    assert lh.failures == []


def test_a_later_body_is_read_by_its_task_id_whatever_it_carries() -> None:
    """A body of a later version is read from the record by its task ID even when it
    carries a job in this version's shape (a later dm may mean more by it), and a
    wake-up that is no count (negative, a boolean) is no wake-up: such a body names
    no task this dm knows (it is dropped), as any body this dm cannot read."""
    play = {k: f"{k}-value" for k in PLAYED}
    mine = {"v": jobsim.BODY_VERSION, "task": "p|q|1|1", "play": play}
    assert jobsim._parse_body(json.dumps(mine).encode())[2] is not None  # played as carried
    later = {**mine, "v": jobsim.BODY_VERSION + 1}
    assert jobsim._parse_body(json.dumps(later).encode()) == ("p|q|1|1", 0, None)
    for wake in (-1, True):
        body = json.dumps({"v": jobsim.BODY_VERSION + 1, "task": "p|q|1|1", "wake": wake})
        assert jobsim._parse_body(body.encode()) == (body, 0, None)


def test_a_bad_task_body_setting_is_refused_at_start(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not jobsim.carries_job({})
    assert jobsim.carries_job({jobsim.BODY_ENV: " job "})
    with pytest.raises(InvalidArgument, match="DM_JOBSIM_TASK_BODY: expected 'id' or 'job'"):
        jobsim.carries_job({jobsim.BODY_ENV: "jobs"})
    # `dm run` says so in plain words (exit 2) before it does anything.
    from dmcore.cli import main

    run_file = tmp_path / "run.yaml"
    run_file.write_text("quests: []\n")
    monkeypatch.setenv(jobsim.BODY_ENV, "jobs")
    monkeypatch.setattr("sys.argv", ["dm", "run", str(run_file), "--home", str(tmp_path / "h")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "DM_JOBSIM_TASK_BODY: expected 'id' or 'job', got 'jobs'" in err
    assert "Traceback" not in err and not (tmp_path / "h").exists()


def test_many_duplicates_on_the_chaos_queue(tmp_path: pathlib.Path) -> None:
    h = bench(tmp_path, "chaos", seed=3, chaos=Chaos(duplicate=0.9, delay=0.5, fail_dispatch=0.2))
    try:
        _, result = play(h, FANOUT)
        assert result == {"success": True, "value": 19}
        for name in ["hello", *(f"leaf_{i}" for i in range(6))]:
            att = h.attempt(AttemptID(_qid(h, name), 1))
            assert att["cur_execution"] == (2 if name == "hello" else 1)
    finally:
        h.close()


# -- errors, validation, polling ---------------------------------------------------------------


def test_bad_phrase_is_rejected_by_run(jh: Harness) -> None:
    cases: list[dict[str, Any]] = [
        {"nme": "typo"},
        {"name": ""},
        {"name": "x", "stages": [{}]},
        {"name": "x", "stages": [{"failure": {"chance": 1.5}}]},
        {
            "name": "x",
            "stages": [
                {
                    "deps": {
                        "deps": [
                            {
                                "attempts": {"items": [{"single": 2}, {"single": 2}]},
                                "phrase": {"name": "y"},
                            }
                        ]
                    }
                }
            ],
        },
        {
            "name": "x",
            "stages": [
                {
                    "deps": {
                        "deps": [
                            {
                                "phrase": {"name": "y"},
                                "attempts": {"items": [{"range": {"low": 3, "high": 3}}]},
                            }
                        ]
                    }
                }
            ],
        },
        {"name": "x", "stages": [{"deps": {"deps": [{"shards": 2}]}}]},
    ]
    for i, params in enumerate(cases):
        desc = jobsim.quest_desc(params)
        desc.meta.as_account = str(i)
        (qid,) = jh.ensure(desc)
        aid = AttemptID(qid, 1)
        settle(jh)
        att = jh.attempt(aid)
        assert att["state"] == AttemptState.ABNORMAL_FINISHED, params
        assert att["abnormal"]["status"] == AbnormalStatus.REJECTED
        assert "phrase" in att["abnormal"]["reason"], att["abnormal"]["reason"]


def test_validate_accepts_only_empty_distributor_parameters(lh: Harness) -> None:
    d = _distributor(lh)
    d.validate("{}")
    for bad in ['{"pool":"x"}', "[]", "null", "nope"]:
        with pytest.raises(ValueError):
            d.validate(bad)
    desc = jobsim.quest_desc({"name": "v"})
    desc.distributor_parameters = '{"extra": 1}'
    req = dm_pb2.EnsureGraphDataReq()
    req.quest.append(desc)
    req.quest_attempt.add(nums=[1])
    with pytest.raises(InvalidArgument, match="distributor_parameters"):
        lh.service.ensure_graph_data(req, Caller.trusted())


def test_unexpected_job_error_fails_the_execution_with_its_text(lh: Harness) -> None:
    from dmcore.client import LocalClient

    class Broken(LocalClient):
        def ensure_graph_data(self, req: dm_pb2.EnsureGraphDataReq) -> dm_pb2.EnsureGraphDataRsp:
            raise RuntimeError("boom in the client")

    lh.registry.client = lambda: Broken(lh.service)
    aid = start(lh, {"name": "err", "stages": [{"deps": {"deps": [{"phrase": {"name": "k"}}]}}]})
    settle(lh)
    att = lh.attempt(aid)
    assert att["state"] == AttemptState.ABNORMAL_FINISHED
    assert att["abnormal"]["status"] == AbnormalStatus.FAILED
    assert "boom in the client" in att["abnormal"]["reason"]
    t = task(lh, aid.execution(1))
    assert t["status"] == jobsim.FAILED and "boom in the client" in t["reason"]


def test_a_job_told_unavailable_asks_again_later(lh: Harness) -> None:
    """dm answers UNAVAILABLE when nothing of the call was written and it is worth
    asking again (an attempt on the way is recording a declaration in parts): the
    job stalls for a moment and asks again, it does not fail."""
    from dmcore.client import LocalClient

    calls: list[str] = []

    class BusyOnce(LocalClient):
        def ensure_graph_data(self, req: dm_pb2.EnsureGraphDataReq) -> dm_pb2.EnsureGraphDataRsp:
            calls.append("ensure")
            if len(calls) == 1:
                raise Unavailable("recording a declaration in parts; try again")
            return super().ensure_graph_data(req)

    lh.registry.client = lambda: BusyOnce(lh.service)
    leaf = {"name": "k", "return_stage": {"retval": 4}}
    aid = start(lh, {"name": "busy", "stages": [{"deps": {"deps": [{"phrase": leaf}]}}]})
    settle(lh, max_seconds=120)
    assert lh.state(aid) == AttemptState.FINISHED
    assert lh.result(aid) == {"success": True, "value": 5}
    assert len(calls) >= 2
    assert task(lh, aid.execution(1))["wake"] >= 1  # it stalled once, not failed


@pytest.mark.parametrize(
    "later",
    [
        pytest.param(
            {k: v for k, v in CONFIGS.items() if not k.startswith("jobsim")}, id="removed"
        ),
        pytest.param(
            {**CONFIGS, "jobsim": {"jobsim": {"pool": "p", "do_pollback": True}}}, id="changed"
        ),
    ],
)
def test_distributor_tasks_use_the_execution_config_snapshot(
    jh: Harness, later: dict[str, Any]
) -> None:
    """A task the distributor queued (here a stalled job's wake-up) is handled by the
    config the execution started with, even once that config is removed or changed
    (W-11): not dropped as "unknown config", not run with other settings."""
    aid = start(jh, {"name": "nap", "stages": [{"stall": {"delay": "600s"}}]})
    settle(jh, max_seconds=60)
    assert task(jh, aid.execution(1))["status"] == jobsim.STALLED
    jh.registry.set_config(
        jh.registry.config_from_dict({"distributor_configs": later}), version="v2"
    )
    settle(jh, max_seconds=900)
    assert jh.state(aid) == AttemptState.FINISHED
    assert jh.result(aid) == {"success": True, "value": 1}
    assert task(jh, aid.execution(1))["status"] == jobsim.FINISHED


def test_an_expired_dependency_counts_as_failed_and_moves_a_retries_chain_on(
    jh: Harness,
) -> None:
    """dm does not serve an expired result: jobsim counts it as not successful (no
    value), and a ``retries`` dependency asks for the next attempt."""
    leaf = {"name": "stale", "return_stage": {"retval": 5, "expiration": "2001-01-01T00:00:00Z"}}
    aid, result = play(jh, {"name": "top", "stages": [{"deps": {"deps": [
        {"retries": 1, "phrase": leaf}]}}]})  # fmt: skip
    assert result == {"success": True, "value": 1}
    leaf_q = jobsim.quest_desc(jobsim.parse_phrase(json.dumps(leaf)))
    assert jh.state(aid) == AttemptState.FINISHED
    tries = [AttemptID(qid_of(leaf_q), n) for n in (1, 2)]
    assert [jh.state(a) for a in tries] == [AttemptState.FINISHED] * 2
    assert all(jh.attempt(a)["is_expired"] for a in tries)


def test_pollback_notices_a_job_that_fails_while_running(lh: Harness) -> None:
    """With do_pollback nothing notifies dm, so a job failing while RUNNING (it never
    stops) is only found if dm polls the running execution: run asks it to."""
    from dmcore.client import LocalClient

    class Broken(LocalClient):
        def ensure_graph_data(self, req: dm_pb2.EnsureGraphDataReq) -> dm_pb2.EnsureGraphDataRsp:
            raise RuntimeError("boom in the client")

    lh.registry.client = lambda: Broken(lh.service)
    phrase = {"name": "err", "stages": [{"deps": {"deps": [{"phrase": {"name": "k"}}]}}]}
    aid = start(lh, phrase, config="jobsim_poll")
    settle(lh, max_seconds=120)
    t = task(lh, aid.execution(1), pool="p/poll")
    assert t["status"] == jobsim.FAILED
    att = lh.attempt(aid)
    assert att["state"] == AttemptState.ABNORMAL_FINISHED
    assert att["abnormal"]["status"] == AbnormalStatus.FAILED
    assert "boom in the client" in att["abnormal"]["reason"]


def test_pollback_config_ends_executions_through_get_status(jh: Harness) -> None:
    aid = start(jh, FANOUT, config="jobsim_poll")
    settle(jh)
    assert jh.state(aid) == AttemptState.FINISHED
    assert jh.result(aid) == {"success": True, "value": 19}
    assert task(jh, aid.execution(1), pool="p/poll")["status"] == jobsim.FINISHED


def test_notifications_and_status(lh: Harness) -> None:
    d = _distributor(lh)
    desc = dm_pb2.Quest.Desc()
    eid = ExecutionID("B" * 43, 2, 3)

    def note(obj: Any) -> dm_pb2.Result | None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        return d.handle_notification(desc, dist.Notification(eid, data))

    assert note({"Status": "running", "StateOrReason": ""}) is None
    fin = note({"Status": "finished", "StateOrReason": '{"Stage":2,"Sum":5}'})
    assert fin is not None and fin.data.object == '{"Stage":2,"Sum":5}'
    bad = note({"Status": "failed", "StateOrReason": "it broke"})
    assert bad is not None and bad.abnormal_finish.status == dm_pb2.AbnormalFinish.FAILED
    assert bad.abnormal_finish.reason == "it broke"
    can = note({"Status": "cancelled", "StateOrReason": ""})
    assert can is not None and can.abnormal_finish.status == dm_pb2.AbnormalFinish.CANCELLED
    # Unreadable: ask the store (no such task -> MISSING).
    miss = note(b"garbage")
    assert miss is not None and miss.abnormal_finish.status == dm_pb2.AbnormalFinish.MISSING
    assert d.info_url("p|x|1|1") == "jobsim://jobsim/ver/v1/tok/p|x|1|1"


def test_job_state_parsing() -> None:
    assert jobsim.JobState.parse("") == jobsim.JobState(0, 0)
    assert jobsim.JobState.parse('{"Stage":3,"Sum":-4}') == jobsim.JobState(3, -4)
    assert jobsim.JobState(1, 2).to_json() == '{"Stage":1,"Sum":2}'
    for bad in ["[]", '{"Stage":"1"}', '{"Stage":-1}', '{"Sum":true}']:
        with pytest.raises(ValueError):
            jobsim.JobState.parse(bad)


def test_entry_point_registers_the_kind() -> None:
    reg = dist.Registry()
    jobsim.register(reg)
    assert reg.kinds["jobsim"].config_type is config_pb2.Config


# -- plans (what a deps or chain stage asks for, worked out once) ------------------------------


def test_a_stage_is_planned_once_and_the_plan_names_its_sub_quests() -> None:
    text = json.dumps(
        {
            "name": "p",
            "seed": 3,
            "stages": [
                {"chain": {"links": 2}},
                {"deps": {"deps": [{"shards": 3, "phrase": {"name": "s"}, "retries": 1}]}},
            ],
        }
    )
    cache = jobsim._PlanCache(1 << 20)
    chain = cache.get(text, 0, "jobsim")
    assert cache.get(text, 0, "jobsim") is chain  # the resume asks for the same plan
    req = dm_pb2.EnsureGraphDataReq.FromString(chain.request)
    (link,) = req.quest
    sub = json.loads(link.parameters)
    assert sub["stages"][0]["chain"] == {"links": 1} and int(sub["seed"]) == 3
    assert [a.quest for a in chain.pending] == [ids.quest_id(link)]
    shards = cache.get(text, 1, "jobsim")
    names = [
        json.loads(q.parameters)["name"]
        for q in dm_pb2.EnsureGraphDataReq.FromString(shards.request).quest
    ]
    assert names == ["s_0", "s_1", "s_2"]
    assert [n for _, n in shards.chain_max] == [2, 2, 2]  # retries 1: up to 2 attempts each
    assert cache.get(text, 0, "other") is not chain  # the config is part of the key


def test_plans_past_the_cache_size_are_dropped_oldest_first() -> None:
    texts = [json.dumps({"name": f"p{i}", "stages": [{"chain": {"links": 1}}]}) for i in range(3)]
    one = jobsim._make_plan(texts[0], 0, "jobsim")
    cache = jobsim._PlanCache(2 * (len(one.request) + len(texts[0])) + 10)
    first = cache.get(texts[0], 0, "jobsim")
    cache.get(texts[1], 0, "jobsim")
    assert cache.get(texts[0], 0, "jobsim") is first  # now the most recent
    cache.get(texts[2], 0, "jobsim")  # over the size: texts[1] goes
    assert cache.get(texts[0], 0, "jobsim") is first
    assert len(cache._plans) == 2 and (texts[1], 0, "jobsim") not in cache._plans


def test_a_duplicate_play_failing_while_the_first_finishes_leaves_it_finished(
    lh: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that only finishes is played unclaimed by every delivery. Play A's
    FinishAttempt is accepted by dm; before A records the end, a duplicate delivery B
    plays and dm answers it with an error. B must not record FAILED (that would end a
    finished job as failed, and A's end would then record nothing): its delivery
    fails, to be made again, and the job ends finished."""
    d = _distributor(lh)
    inner = jobsim._Job.finish
    first: list[int] = []
    raised: list[Exception] = []

    def finish(self: Any, **kw: Any) -> Any:
        if first:  # B: dm is busy
            raise RuntimeError("dm busy (transient)")
        first.append(1)
        out = inner(self, **kw)  # A: accepted by dm
        try:
            d.handle_task_queue_task(dist.TaskRequest(f"p|{self.eid}".encode()))
        except RuntimeError as e:
            raised.append(e)
        return out

    monkeypatch.setattr(jobsim._Job, "finish", finish)
    aid, _ = play(lh, {"name": "only-finishes", "stages": [{"failure": {"chance": 0}}]})
    assert [str(e) for e in raised] == ["dm busy (transient)"]
    assert task(lh, aid.execution(1))["status"] == jobsim.FINISHED
    assert lh.state(aid) == AttemptState.FINISHED
