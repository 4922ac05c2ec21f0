"""A store says which record layout wrote it; dm refuses, in plain words, any other.

Records change shape between versions of dm (docs/layout.md) and are not
migrated: an engine reading another layout's records would misread them
silently. Checked on SQLite (a home) and on the Firestore emulator, through
the engine's open (``Embedded``), the CLI, and the gcp backend's check.

The same record holds the sweep's shard count: an engine configured with fewer
shards than the store's records were stamped with still sweeps them all, and a
switch between no shards and shards is refused.
"""

from __future__ import annotations

import pathlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from distributors.fake import quest_desc
from dmcore.cli import app
from dmcore.engine import docs, layout
from dmcore.engine.core import Engine, Settings
from dmcore.ids import AttemptID
from dmcore.proto import dm_pb2
from dmcore.runtime.embedded import Embedded, build_registry
from dmcore.store.base import Store
from dmcore.store.sqlite import SqliteStore
from tests.harness import Chaos, Harness, qid_of
from tests.store_contract import put, run_threads

JOBSIM: dict[str, Any] = {"distributor_configs": {"jobsim": {"jobsim": {}}}}
RUN_FILE = pathlib.Path(__file__).parent.parent / "examples" / "jobsim_fanout.yaml"


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.emulator)])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s: Store = SqliteStore(tmp_path / "dm.sqlite")
        yield s
        s.close()
    else:
        yield request.getfixturevalue("firestore_store")


OLDER = min(layout.TAKEN_UP) - 1
"""An older layout this dm refuses (it takes up the ones in ``TAKEN_UP``)."""


def _check(store: Store, shards: int = 16) -> int:
    return layout.check(store, "the test store", "empty it", sweep_shards=shards)


def test_an_empty_store_is_given_this_layout_and_opens_again(store: Store) -> None:
    assert _check(store) == 16
    assert store.get(layout.PATH) == {"version": layout.VERSION, layout.SHARDS: 16}
    assert _check(store) == 16  # the second open reads it and passes
    put(store, "quests/q", {"desc": {}})
    _check(store)  # records written in this layout do not matter


def test_records_without_a_layout_are_refused_and_left_alone(store: Store) -> None:
    put(store, "attempts/a|fffffffe", {"state": "FINISHED"})
    with pytest.raises(layout.LayoutMismatch) as e:
        _check(store)
    assert "the test store holds dm records written by an older dm" in e.value.message
    assert "Start afresh (empty it)" in e.value.message
    assert store.get(layout.PATH) is None  # nothing written on refusal


@pytest.mark.parametrize(
    ("found", "advice"),
    [(OLDER, "Start afresh (empty it)"), (layout.VERSION + 1, "Upgrade dm")],
)
def test_another_layout_is_refused_with_what_to_do(store: Store, found: int, advice: str) -> None:
    put(store, layout.PATH, {"version": found})
    with pytest.raises(layout.LayoutMismatch) as e:
        _check(store)
    assert f"in layout {found}; this dm reads layout {layout.VERSION} only" in e.value.message
    assert advice in e.value.message
    assert store.get(layout.PATH) == {"version": found}


@pytest.mark.parametrize("recorded", [None, 16, 32])
def test_a_layout_taken_up_is_recorded_as_this_one_and_keeps_its_count(
    store: Store, recorded: int | None
) -> None:
    """A store of a layout in TAKEN_UP is read as it is; opening it records this
    layout, so that the older dm that wrote it refuses it from then on."""
    (found,) = layout.TAKEN_UP
    put(
        store,
        layout.PATH,
        {"version": found} if recorded is None else {"version": found, layout.SHARDS: recorded},
    )
    put(store, "attempts/a|fffffffe", {"state": "FINISHED"})
    assert _check(store, 16) == (recorded or 16)
    assert store.get(layout.PATH) == {"version": layout.VERSION, layout.SHARDS: recorded or 16}
    assert store.get("attempts/a|fffffffe") == {"state": "FINISHED"}


def test_engines_opening_an_empty_store_at_once_agree(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "dm.sqlite"
    SqliteStore(path).close()
    stores = [SqliteStore(path) for _ in range(4)]
    barrier = threading.Barrier(4)

    def open_one(i: int) -> None:
        barrier.wait()
        _check(stores[i])

    try:
        run_threads(4, open_one)
        assert stores[0].get(layout.PATH) == {"version": layout.VERSION, layout.SHARDS: 16}
    finally:
        for s in stores:
            s.close()


def test_an_embedded_home_of_another_layout_is_refused(tmp_path: pathlib.Path) -> None:
    Embedded(tmp_path, build_registry(JOBSIM)).close()  # a home of this layout
    store = SqliteStore(tmp_path / "dm.sqlite")
    put(store, layout.PATH, {"version": OLDER})
    store.close()
    with pytest.raises(layout.LayoutMismatch) as e:
        Embedded(tmp_path, build_registry(JOBSIM))
    assert e.value.message.startswith(f"{tmp_path} holds dm records in layout")
    assert f"move {tmp_path} aside or delete it" in e.value.message


def test_the_cli_says_so_and_exits_2(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    store = SqliteStore(home / "dm.sqlite")
    put(store, "quests/q", {"desc": {}})  # records from before layouts were versioned
    store.close()
    r = CliRunner().invoke(app, ["run", str(RUN_FILE), "--home", str(home)])
    assert r.exit_code == 2, r.output
    assert "holds dm records written by an older dm" in r.stderr
    assert "Traceback" not in r.output + r.stderr


@pytest.mark.emulator
def test_the_gcp_functions_answer_failed_precondition(
    firestore_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Google Cloud the check waits for the first request (building the backend
    contacts nothing), then every function answers the plain reason."""
    from dmcore import server
    from dmcore.runtime.backend import from_env
    from dmcore.server.http import Request
    from dmcore.store.firestore import FirestoreStore

    project = f"dm-layout-{uuid.uuid4().hex[:8]}"
    old = FirestoreStore(project=project)
    put(old, layout.PATH, {"version": OLDER})
    old.close()
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")  # never contacted
    b = from_env(
        {
            "DM_BACKEND": "gcp",
            "GOOGLE_CLOUD_PROJECT": project,
            "DM_TASKS_QUEUE": f"projects/{project}/locations/europe-west1/queues/dm",
            "DM_TASKS_URL": "https://dm-tasks.example.run.app",
            "DM_NOTIFY_TOPIC": f"projects/{project}/topics/dm-notify",
            "DM_NOTIFY_SECRET": "s",
            "DM_AUTH": "none",
            "DM_TASKS_EMULATOR_HOST": "127.0.0.1:1",
        }
    )
    try:
        rsp = server.api(
            Request(
                "POST",
                "/prpc/dm.Deps/WalkGraph",
                {"content-type": "application/json", "accept": "application/json"},
                b"{}",
            ),
            backend=b,
        )
        assert rsp.status == 412, rsp.body  # pRPC's FAILED_PRECONDITION
        body = rsp.body.decode()
        assert f"Firestore database '(default)' of project '{project}'" in body
        assert f"holds dm records in layout {OLDER}" in body
        with pytest.raises(layout.LayoutMismatch):
            server.notify({}, {}, backend=b)
    finally:
        b.close()


# -- the sweep's shard count -------------------------------------------------------------


def test_fewer_shards_than_recorded_still_sweep_the_recorded_count(store: Store) -> None:
    assert _check(store, 16) == 16
    assert _check(store, 4) == 16  # records may be in shards 4..15: swept
    assert store.get(layout.PATH) == {"version": layout.VERSION, layout.SHARDS: 16}


def test_more_shards_are_recorded_for_every_engine(store: Store) -> None:
    assert _check(store, 16) == 16
    assert _check(store, 32) == 32
    assert store.get(layout.PATH) == {"version": layout.VERSION, layout.SHARDS: 32}
    assert _check(store, 16) == 32  # an engine still configured with 16 sweeps 32


def test_a_count_recorded_before_counts_were_is_taken_as_configured(store: Store) -> None:
    put(store, layout.PATH, {"version": layout.VERSION})  # a store of this layout, no count
    assert _check(store, 16) == 16
    assert store.get(layout.PATH) == {"version": layout.VERSION, layout.SHARDS: 16}


@pytest.mark.parametrize(("recorded", "configured"), [(1, 16), (16, 1)])
def test_a_switch_between_no_shards_and_shards_is_refused(
    store: Store, recorded: int, configured: int
) -> None:
    put(store, layout.PATH, {"version": layout.VERSION, layout.SHARDS: recorded})
    with pytest.raises(layout.LayoutMismatch) as e:
        _check(store, configured)
    assert f"the test store holds dm records for a sweep of {recorded} shard(s)" in e.value.message
    assert f"this dm is configured with {configured}" in e.value.message
    assert f"set sweep_shards back to {recorded}" in e.value.message
    assert store.get(layout.PATH) == {"version": layout.VERSION, layout.SHARDS: recorded}


def test_a_timer_stamped_under_more_shards_fires_after_the_count_is_lowered(
    store: Store, tmp_path: pathlib.Path
) -> None:
    """A start timer armed by a 16-shard engine in shard 8 or above: an 8-shard engine
    sweeps it once the layout check has told it the recorded count; without that
    check its sweep never asks that shard (the stranding this guards against)."""
    h = Harness(tmp_path, queue="chaos", chaos=Chaos(reorder=False), store=store)
    try:
        layout.check_settings(store, "the test store", "empty it", h.engine.settings)
        desc = next(d for d in map(_timed, range(100)) if _shard(d, 16) >= 8)
        h.ensure(desc)  # its execution waits for its job, a start timer armed
        att = h.attempt(AttemptID(qid_of(desc), 1))
        assert att[docs.SWEEP_SHARD] >= 8 and docs.TIMER_DUE in att
        h.clock.advance(START_S + 1)

        def lowered() -> Engine:
            settings = Settings(sweep_shards=8, notify_secret=b"s")
            return Engine(store, h.engine.queue, h.registry, clock=h.clock, rand=h.rng.randbytes,
                          settings=settings)  # fmt: skip

        assert lowered().sweep()["timers"] == 0  # unchecked: shard 8+ is never asked
        engine = lowered()
        layout.check_settings(store, "the test store", "empty it", engine.settings)
        assert engine.settings.swept_shards == 16
        assert engine.sweep()["timers"] == 1
    finally:
        h.close()


START_S = 120


def _timed(i: int) -> dm_pb2.Quest.Desc:
    desc = quest_desc(f"timed{i}")
    desc.meta.timeouts.start.FromSeconds(START_S)
    return desc


def _shard(desc: dm_pb2.Quest.Desc, shards: int) -> int:
    return docs.sweep_shard(docs.attempt_path(AttemptID(qid_of(desc), 1)), shards)
