"""The functions' configuration: environment variables -> backend (or a refusal to start)."""

from __future__ import annotations

import json
import pathlib

import pytest

from dmcore.runtime import backend as backends
from dmcore.runtime.backend import AUTH_NONE, AUTH_OIDC, ConfigError, from_env
from tests.test_functions_support import CONFIG, clean_env

GCP = {
    "DM_BACKEND": "gcp",
    "GOOGLE_CLOUD_PROJECT": "demo",
    "DM_TASKS_QUEUE": "projects/demo/locations/europe-west1/queues/dm",
    "DM_TASKS_URL": "https://dm-tasks.example.run.app",
    "DM_NOTIFY_TOPIC": "projects/demo/topics/dm-distributor-notify",
    "DM_OIDC_AUDIENCE": "https://dm-api.example.run.app,https://dm-tasks.example.run.app",
    "DM_INVOKER_SERVICE_ACCOUNT": "invoker@demo.iam.gserviceaccount.com",
    "DM_TASKS_SERVICE_ACCOUNT": "serviceAccount:invoker@demo.iam.gserviceaccount.com",
    "DM_PUSH_SERVICE_ACCOUNT": "push@demo.iam.gserviceaccount.com",
}


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


def embedded(tmp_path: pathlib.Path, **env: str) -> backends.Backend:
    return from_env({"DM_HOME": str(tmp_path / "home"), **env})


def test_run_retry_window_from_the_environment(tmp_path: pathlib.Path) -> None:
    b = embedded(tmp_path, DM_RUN_RETRY_WINDOW_S="7200")
    try:
        assert b.engine.settings.run_retry_window_us == 7200 * 1_000_000
    finally:
        b.close()
    b = embedded(tmp_path)
    try:
        assert b.engine.settings.run_retry_window_us == 3600 * 1_000_000
    finally:
        b.close()


def test_embedded_defaults(tmp_path: pathlib.Path) -> None:
    b = embedded(tmp_path)
    try:
        assert b.kind == "embedded"
        assert b.auth.mode == AUTH_NONE
        assert b.embedded is not None
        assert b.engine.settings.notify_secret  # the home's generated secret
        assert "local" in b.engine.registry.config_names
    finally:
        b.close()


def test_config_inline_file_and_yaml(tmp_path: pathlib.Path) -> None:
    b = embedded(tmp_path, DM_CONFIG=json.dumps(CONFIG), DM_NOTIFY_SECRET="s3cret")
    assert b.engine.registry.config_names == ["fake"]
    assert b.engine.settings.notify_secret == b"s3cret"
    b.close()
    yml = tmp_path / "dm.yaml"
    yml.write_text("distributor_configs:\n  f2:\n    fake: {}\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("from-a-file\n")
    b = embedded(
        tmp_path, DM_CONFIG=str(yml), DM_NOTIFY_SECRET_FILE=str(secret), DM_NOTIFY_TOPIC="t"
    )
    assert b.engine.registry.config_names == ["f2"]
    assert b.engine.settings.notify_secret == b"from-a-file"
    assert b.engine.settings.notify_topic == "t"
    b.close()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"DM_BACKEND": "cloud"}, "DM_BACKEND"),
        ({"DM_CONFIG": "{nope"}, "DM_CONFIG: not valid JSON"),
        ({"DM_CONFIG": "/nowhere/dm.yaml"}, "no such file"),
        ({"DM_CONFIG": '{"distributor_configs": {"x": {"warp": {}}}}'}, "warp"),
        ({"DM_CONFIG": '{"other": 1}'}, "distributor_configs"),
        ({"DM_AUTH": "maybe"}, "DM_AUTH"),
        ({"DM_AUTH": "oidc"}, "DM_OIDC_AUDIENCE"),
        ({"DM_AUTH": "oidc", "DM_OIDC_AUDIENCE": "a"}, "DM_INVOKER_SERVICE_ACCOUNT"),
        (
            {"DM_AUTH": "oidc", "DM_OIDC_AUDIENCE": "a", "DM_INVOKER_SERVICE_ACCOUNT": "i@x"},
            "DM_PUSH_SERVICE_ACCOUNT: required with DM_AUTH=oidc",
        ),
        ({"DM_NOTIFY_SECRET_FILE": "/nowhere/secret"}, "cannot read"),
        ({"DM_STORE": "bogus"}, "DM_STORE: expected 'sqlite' or 'firestore', got 'bogus'"),
        ({"DM_STORE": "firestore"}, "GOOGLE_CLOUD_PROJECT: required with DM_STORE=firestore"),
        ({"DM_RUN_RETRY_WINDOW_S": "soon"}, "DM_RUN_RETRY_WINDOW_S: expected seconds > 0"),
        ({"DM_RUN_RETRY_WINDOW_S": "0"}, "DM_RUN_RETRY_WINDOW_S: expected seconds > 0"),
    ],
)
def test_bad_embedded_config_refuses_to_start(
    tmp_path: pathlib.Path, env: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        embedded(tmp_path, **env)


def test_acls_and_oidc_settings(tmp_path: pathlib.Path) -> None:
    b = embedded(
        tmp_path,
        DM_AUTH="oidc",
        DM_OIDC_AUDIENCE="https://a.example, https://b.example",
        DM_INVOKER_SERVICE_ACCOUNT="serviceAccount:Inv@demo.iam.gserviceaccount.com",
        DM_PUSH_SERVICE_ACCOUNT="Push@demo.iam.gserviceaccount.com",
        DM_WRITERS="user:Ann@example.com, bob@example.com",
        DM_READERS="carol@example.com,,",
    )
    try:
        assert b.auth.mode == AUTH_OIDC
        assert b.auth.audiences == ("https://a.example", "https://b.example")
        assert b.auth.invoker == "inv@demo.iam.gserviceaccount.com"  # emails compare lower-case
        assert b.auth.push == "push@demo.iam.gserviceaccount.com"
        assert b.auth.writers == {"ann@example.com", "bob@example.com"}
        assert b.auth.readers == {"carol@example.com"}
    finally:
        b.close()


@pytest.mark.parametrize(
    ("drop", "change", "says"),
    [
        ("DM_TASKS_QUEUE", {}, "DM_TASKS_QUEUE"),
        ("GOOGLE_CLOUD_PROJECT", {}, "GOOGLE_CLOUD_PROJECT"),
        ("DM_NOTIFY_TOPIC", {}, "DM_NOTIFY_TOPIC"),
        ("", {}, "DM_NOTIFY_SECRET"),  # no secret: never a default in code
        ("", {"DM_NOTIFY_SECRET": "s", "DM_TASKS_QUEUE": "dm"}, "DM_TASKS_QUEUE: expected"),
        (
            "",
            {"DM_NOTIFY_SECRET": "s", "DM_NOTIFY_TOPIC": "dm-notify"},
            "DM_NOTIFY_TOPIC: .*projects/P/topics/T",
        ),
        ("", {"DM_NOTIFY_SECRET": "s", "DM_TASKS_URL": "dm-tasks"}, "http"),
        ("DM_OIDC_AUDIENCE", {"DM_NOTIFY_SECRET": "s"}, "DM_OIDC_AUDIENCE"),  # oidc by default
        # With DM_AUTH=oidc, the tasks must carry tokens dm_tasks accepts.
        (
            "DM_TASKS_SERVICE_ACCOUNT",
            {"DM_NOTIFY_SECRET": "s"},
            "DM_TASKS_SERVICE_ACCOUNT: required with DM_AUTH=oidc",
        ),
        (
            "",
            {
                "DM_NOTIFY_SECRET": "s",
                "DM_TASKS_SERVICE_ACCOUNT": "other@demo.iam.gserviceaccount.com",
            },
            r"DM_TASKS_SERVICE_ACCOUNT \(other@.*\) must be DM_INVOKER_SERVICE_ACCOUNT",
        ),
        (
            "",
            {"DM_NOTIFY_SECRET": "s", "DM_OIDC_AUDIENCE": "https://dm-api.example.run.app"},
            "DM_OIDC_AUDIENCE must include DM_TASKS_URL",
        ),
        ("", {"DM_NOTIFY_SECRET": "s", "DM_TASKS_QUEUES": "x"}, "set one of them, not both"),
        (
            "DM_TASKS_QUEUE",
            {"DM_NOTIFY_SECRET": "s", "DM_AUTH": "none", "DM_TASKS_QUEUES": "a,b,a"},
            "listed twice",
        ),
        (
            "DM_TASKS_QUEUE",
            {
                "DM_NOTIFY_SECRET": "s",
                "DM_AUTH": "none",
                "DM_TASKS_QUEUES": "projects/demo/locations/europe-west1/queues/a,"
                "projects/demo/locations/us-east1/queues/b",
            },
            "DM_TASKS_QUEUES: .*one project and location",
        ),
        (
            "",
            {"DM_NOTIFY_SECRET": "s", "DM_AUTH": "none", "DM_TASKS_DISPATCH_DEADLINE": "ten"},
            "DM_TASKS_DISPATCH_DEADLINE: expected seconds",
        ),
        (
            "",
            {"DM_NOTIFY_SECRET": "s", "DM_AUTH": "none", "DM_TASKS_DISPATCH_DEADLINE": "3600"},
            r"DM_TASKS_DISPATCH_DEADLINE: must be 15\.\.1800",
        ),
    ],
)
def test_gcp_refuses_to_start_half_configured(
    drop: str, change: dict[str, str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")  # never contacted
    env = (
        {k: v for k, v in GCP.items() if k != drop}
        | change
        | {"DM_TASKS_EMULATOR_HOST": "127.0.0.1:1"}
    )
    with pytest.raises(ConfigError, match=says):
        from_env(env)


def test_cache_and_reset(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DM_HOME", str(tmp_path / "home"))
    try:
        first = backends.get()
        assert backends.get() is first
        backends.reset()
        second = backends.get()
        assert second is not first
    finally:
        backends.reset()


def test_gcp_on_emulators_needs_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the three emulator variables set the gcp backend builds without ADC.

    Nothing is contacted: the clients connect lazily. Firestore and Pub/Sub
    read their variables from the process environment themselves.
    """
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    b = from_env(
        GCP | {"DM_NOTIFY_SECRET": "s", "DM_AUTH": "none", "DM_TASKS_EMULATOR_HOST": "127.0.0.1:1"}
    )
    try:
        assert b.kind == "gcp"
        assert b.engine.publish is not None  # notifications travel through the topic
        assert len(b.closers) == 3  # publisher, queue, store
    finally:
        b.close()


def test_gcp_with_oidc_starts_when_tasks_and_invoker_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmcore.queue.cloudtasks import CloudTasksQueue

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    b = from_env(GCP | {"DM_NOTIFY_SECRET": "s", "DM_TASKS_EMULATOR_HOST": "127.0.0.1:1"})
    try:
        assert b.auth.mode == AUTH_OIDC
        assert b.auth.invoker == "invoker@demo.iam.gserviceaccount.com"
        assert b.auth.push == "push@demo.iam.gserviceaccount.com"
        queue = b.engine.queue
        assert isinstance(queue, CloudTasksQueue)
        assert queue.service_account_email == b.auth.invoker  # prefix stripped
        assert queue.audience in b.auth.audiences
    finally:
        b.close()


def test_gcp_shards_tasks_over_dm_tasks_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmcore.queue.cloudtasks import CloudTasksQueue

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    paths = [f"projects/demo/locations/europe-west1/queues/dm-tasks-{i}" for i in range(4)]
    env = {k: v for k, v in GCP.items() if k != "DM_TASKS_QUEUE"} | {
        "DM_TASKS_QUEUES": " , ".join(paths),
        "DM_TASKS_DISPATCH_DEADLINE": "900",
        "DM_NOTIFY_SECRET": "s",
        "DM_AUTH": "none",
        "DM_TASKS_EMULATOR_HOST": "127.0.0.1:1",
    }
    b = from_env(env)
    try:
        queue = b.engine.queue
        assert isinstance(queue, CloudTasksQueue)
        assert queue.parents == paths
        assert queue.dispatch_deadline_s == 900
    finally:
        b.close()


def test_embedded_store_choice(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DM_STORE: the home's SQLite file by default, else Firestore (the queue stays local)."""
    from dmcore.store.firestore import FirestoreStore
    from dmcore.store.sqlite import SqliteStore

    b = embedded(tmp_path, DM_STORE="sqlite")
    try:
        assert isinstance(b.engine.store, SqliteStore)
    finally:
        b.close()
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")  # never contacted
    home = tmp_path / "fs-home"
    b = from_env(
        {
            "DM_HOME": str(home),
            "DM_STORE": "Firestore",
            "GOOGLE_CLOUD_PROJECT": "demo",
            "DM_FIRESTORE_DATABASE": "db2",
        }
    )
    try:
        store = b.engine.store
        assert isinstance(store, FirestoreStore)
        assert (store.client.project, store.client._database) == ("demo", "db2")
        assert b.embedded is not None and b.embedded.store is store
        assert not (home / "dm.sqlite").exists()
    finally:
        b.close()


def test_jobs_open_the_store_dm_store_names(tmp_path: pathlib.Path) -> None:
    """A local job inherits DM_STORE and opens the same store as the dm that started it."""
    from dmcore.job import client_from_env

    with pytest.raises(ConfigError, match="DM_STORE"):
        client_from_env({"DM_HOME": str(tmp_path / "home"), "DM_STORE": "bogus"})
