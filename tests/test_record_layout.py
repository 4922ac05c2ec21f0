"""A store says which record layout wrote it; dm refuses, in plain words, any other.

Records change shape between versions of dm (docs/layout.md) and are not
migrated: an engine reading another layout's records would misread them
silently. Checked on SQLite (a home) and on the Firestore emulator, through
the engine's open (``Embedded``), the CLI, and the gcp backend's check.
"""

from __future__ import annotations

import pathlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from dmcore.cli import app
from dmcore.engine import layout
from dmcore.runtime.embedded import Embedded, build_registry
from dmcore.store.base import Store
from dmcore.store.sqlite import SqliteStore
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


def _check(store: Store) -> None:
    layout.check(store, "the test store", "empty it")


def test_an_empty_store_is_given_this_layout_and_opens_again(store: Store) -> None:
    _check(store)
    assert store.get(layout.PATH) == {"version": layout.VERSION}
    _check(store)  # the second open reads it and passes
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
    [(layout.VERSION - 1, "Start afresh (empty it)"), (layout.VERSION + 1, "Upgrade dm")],
)
def test_another_layout_is_refused_with_what_to_do(store: Store, found: int, advice: str) -> None:
    put(store, layout.PATH, {"version": found})
    with pytest.raises(layout.LayoutMismatch) as e:
        _check(store)
    assert f"in layout {found}; this dm reads layout {layout.VERSION} only" in e.value.message
    assert advice in e.value.message
    assert store.get(layout.PATH) == {"version": found}


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
        assert stores[0].get(layout.PATH) == {"version": layout.VERSION}
    finally:
        for s in stores:
            s.close()


def test_an_embedded_home_of_another_layout_is_refused(tmp_path: pathlib.Path) -> None:
    Embedded(tmp_path, build_registry(JOBSIM)).close()  # a home of this layout
    store = SqliteStore(tmp_path / "dm.sqlite")
    put(store, layout.PATH, {"version": layout.VERSION - 1})
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
    put(old, layout.PATH, {"version": layout.VERSION - 1})
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
        assert f"holds dm records in layout {layout.VERSION - 1}" in body
        with pytest.raises(layout.LayoutMismatch):
            server.notify({}, {}, backend=b)
    finally:
        b.close()
