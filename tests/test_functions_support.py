"""Shared bench for the tests of the Cloud Functions (no tests here).

``dm`` (fixture): the embedded backend in a tmp home, configured through the
environment exactly as a deployed function is, with the fake distributor
(a :class:`FakeWorld` the test plays), and functions-framework test clients
of the real entry points in ``functions/main.py``. :class:`Oidc` mints Google
-style ID tokens signed by a local key and serves the matching "certs" to
google-auth through an injected transport, so OIDC checks run offline.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pathlib
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import flask.testing
import google.auth.crypt
import google.auth.jwt
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from functions_framework import create_app
from google.protobuf import empty_pb2, json_format, message

from distributors.fake import FakeTask, FakeWorld, quest_desc
from dmcore import logs, server
from dmcore.ids import ExecutionID
from dmcore.proto import dm_pb2
from dmcore.runtime import backend as backends
from dmcore.server import auth

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "functions" / "main.py")
SECRET = "functions-test-notify-secret-0123456789"
CONFIG: dict[str, Any] = {"distributor_configs": {"fake": {"fake": {}}}}
AUDIENCE = "https://dm-api.example.run.app"
INVOKER = "dm-invoker@demo.iam.gserviceaccount.com"
PUSHER = "dm-push@demo.iam.gserviceaccount.com"
WRITER = "writer@example.com"
READER = "reader@example.com"
JSON_PREFIX = b")]}'\n"
DM_VARS = (
    "DM_BACKEND",
    "DM_HOME",
    "DM_CONFIG",
    "DM_AUTH",
    "DM_WRITERS",
    "DM_READERS",
    "DM_OIDC_AUDIENCE",
    "DM_INVOKER_SERVICE_ACCOUNT",
    "DM_PUSH_SERVICE_ACCOUNT",
    "DM_EMBEDDED_DRIVER",
    "DM_NOTIFY_SECRET",
    "DM_NOTIFY_SECRET_FILE",
    "DM_NOTIFY_TOPIC",
    "DM_TASKS_QUEUE",
    "DM_TASKS_QUEUES",
    "DM_TASKS_URL",
    "DM_TASKS_SERVICE_ACCOUNT",
    "DM_TASKS_EMULATOR_HOST",
    "DM_TASKS_DISPATCH_DEADLINE",
    "DM_HOST",
    "DM_RUN_RETRY_WINDOW_S",
    "DM_STORE",
    "DM_FIRESTORE_DATABASE",
    "K_SERVICE",
    "GOOGLE_CLOUD_PROJECT",
    "FUNCTION_TARGET",
    "FUNCTION_SIGNATURE_TYPE",
    "FUNCTION_SOURCE",
)


class Oidc:
    """An offline stand-in for Google's ID token issuer."""

    KID = "test-kid-1"

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.signer = google.auth.crypt.RSASigner.from_string(  # type: ignore[no-untyped-call]
            pem, key_id=self.KID
        )
        self.public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self.fetches = 0
        self.down = False

    def token(
        self,
        email: str,
        *,
        aud: str = AUDIENCE,
        expires_in: int = 3600,
        email_verified: bool = True,
        iss: str = "https://accounts.google.com",
        signer: Any = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": iss,
            "aud": aud,
            "iat": now - 60,
            "exp": now + expires_in,
            "sub": "1234567890",
            "email": email,
            "email_verified": email_verified,
        }
        raw: bytes = google.auth.jwt.encode(  # type: ignore[no-untyped-call]
            signer or self.signer, claims
        )
        return raw.decode()

    def __call__(self, url: str, method: str = "GET", **kw: Any) -> Any:
        """google-auth's transport: serves our public key as Google's certs."""
        self.fetches += 1
        status = 503 if self.down else 200
        body = json.dumps({self.KID: self.public_pem}).encode()

        @dataclasses.dataclass
        class Rsp:
            status: int
            data: bytes
            headers: dict[str, str]

        return Rsp(status, body, {"content-type": "application/json"})


_OIDC: list[Oidc] = []


def oidc_issuer() -> Oidc:
    """One key per process (RSA key generation is slow)."""
    if not _OIDC:
        _OIDC.append(Oidc())
    return _OIDC[0]


@dataclasses.dataclass
class DM:
    """The functions on an embedded backend in ``home``."""

    home: pathlib.Path
    monkeypatch: pytest.MonkeyPatch
    world: FakeWorld = dataclasses.field(default_factory=FakeWorld)
    published: list[tuple[str, bytes, dict[str, str]]] = dataclasses.field(default_factory=list)
    _clients: dict[str, flask.testing.FlaskClient] = dataclasses.field(default_factory=dict)

    def configure(self, **env: str) -> None:
        """Set DM_* variables (on top of the defaults) and rebuild the backend."""
        for k, v in env.items():
            self.monkeypatch.setenv(k, v)
        backends.reset()
        b = server.start()
        self.world = FakeWorld()
        self.world.install(b.engine.registry)
        self.world.service = b.service
        self.world.publish = lambda t, d, a: self.published.append((t, d, a))

    @property
    def backend(self) -> backends.Backend:
        return backends.get()

    def client(self, target: str) -> flask.testing.FlaskClient:
        if target not in self._clients:
            app = create_app(target, MAIN)  # type: ignore[no-untyped-call]
            self._clients[target] = app.test_client()
        return self._clients[target]

    @property
    def api(self) -> flask.testing.FlaskClient:
        return self.client("dm_api")

    @property
    def tasks(self) -> flask.testing.FlaskClient:
        return self.client("dm_tasks")

    @property
    def sweep(self) -> flask.testing.FlaskClient:
        return self.client("dm_sweep")

    @property
    def notify(self) -> flask.testing.FlaskClient:
        return self.client("dm_notify")

    def docs(self) -> list[tuple[str, str, str]]:
        """Every stored document (to prove a refused request wrote nothing)."""
        con = sqlite3.connect(self.home / "dm.sqlite")
        try:
            rows = con.execute("SELECT collection, id, body FROM docs ORDER BY 1, 2").fetchall()
        finally:
            con.close()
        return [(str(c), str(i), str(b)) for c, i, b in rows]

    def drain(self) -> int:
        emb = self.backend.embedded
        assert emb is not None
        return emb.drain()

    # -- pRPC ---------------------------------------------------------------------

    def call(
        self,
        method: str,
        msg: message.Message,
        *,
        fmt: str = "json",
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """POST ``msg`` to dm_api's ``method`` in ``fmt`` (json or binary)."""
        hdrs = dict(headers or {})
        if fmt == "json":
            body = json_format.MessageToJson(msg).encode()
            hdrs.setdefault("Content-Type", "application/json")
        else:
            body = msg.SerializeToString()
            hdrs.setdefault("Content-Type", "application/prpc; encoding=binary")
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        return self.api.post(f"/prpc/dm.Deps/{method}", data=body, headers=hdrs)

    def ok(self, rsp: Any, cls: type[message.Message]) -> Any:
        """The decoded body of a successful pRPC answer."""
        assert rsp.status_code == 200, (rsp.status_code, rsp.data)
        assert rsp.headers["X-Prpc-Grpc-Code"] == "0"
        out = cls()
        ctype = rsp.headers["Content-Type"]
        if ctype.startswith("application/json"):
            assert rsp.data.startswith(JSON_PREFIX)
            json_format.Parse(rsp.data[len(JSON_PREFIX) :].decode(), out)
        else:
            assert ctype == "application/prpc; encoding=binary"
            out.ParseFromString(rsp.data)
        return out

    # -- a quest with a running fake execution -----------------------------------------

    def new_quest(self, name: str = "q", fmt: str = "json") -> str:
        req = dm_pb2.EnsureGraphDataReq()
        req.quest.append(quest_desc(name))
        req.quest_attempt.add(nums=[1])
        rsp = self.ok(self.call("EnsureGraphData", req, fmt=fmt), dm_pb2.EnsureGraphDataRsp)
        return str(rsp.quest_ids[0].id)

    def scheduled(self, name: str = "q") -> FakeTask:
        """A quest whose first execution the fake has been asked to run."""
        qid = self.new_quest(name)
        self.drain()
        eid = ExecutionID(qid, 1, 1)
        return self.world.task(eid)

    def activate(self, task: FakeTask, fmt: str = "json") -> dm_pb2.Execution.Auth:
        """Activate ``task`` through the API; returns the execution's auth."""
        token = b"x" * 32 + name_bytes(task)
        req = dm_pb2.ActivateExecutionReq(auth=task.auth, execution_token=token)
        self.ok(self.call("ActivateExecution", req, fmt=fmt), empty_pb2.Empty)
        return dm_pb2.Execution.Auth(id=task.auth.id, token=token)

    # -- dm_notify ------------------------------------------------------------------

    def push(
        self, data: bytes, attrs: dict[str, str], *, mid: str = "1", token: str | None = None
    ) -> Any:
        """Deliver one Pub/Sub message as Eventarc does (binary-mode CloudEvent), with
        ``Authorization: Bearer <token>`` if given."""
        event = CloudEvent(
            {
                "type": "google.cloud.pubsub.topic.v1.messagePublished",
                "source": "//pubsub.googleapis.com/projects/demo/topics/dm-distributor-notify",
            },
            {
                "message": {
                    "data": base64.b64encode(data).decode(),
                    "attributes": attrs,
                    "messageId": mid,
                },
                "subscription": "projects/demo/subscriptions/eventarc",
            },
        )
        headers, body = to_binary(event)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.notify.post("/", headers=headers, data=body)


def name_bytes(task: FakeTask) -> bytes:
    return str(task.eid).encode()


def assert_clean(body: bytes) -> None:
    """An error body: a message, never a traceback or a Python repr of an exception."""
    text = body.decode(errors="replace")
    assert "Traceback" not in text
    assert 'File "' not in text


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset dm's variables for this test, and have whatever sets them undone after it.

    (``delenv`` alone does not undo a variable the code under test creates,
    such as ``FUNCTION_TARGET`` written by ``create_app``.)
    """
    for var in DM_VARS:
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)


@pytest.fixture(name="dm")
def dm_fixture(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DM]:
    clean_env(monkeypatch)
    home = tmp_path / "home"
    monkeypatch.setenv("DM_BACKEND", "embedded")
    monkeypatch.setenv("DM_EMBEDDED_DRIVER", "tests")  # the tests drain the queue themselves
    monkeypatch.setenv("DM_HOME", str(home))
    monkeypatch.setenv("DM_CONFIG", json.dumps(CONFIG))
    monkeypatch.setenv("DM_NOTIFY_SECRET", SECRET)
    monkeypatch.setenv("DM_AUTH", "none")
    bench = DM(home, monkeypatch)
    bench.configure()
    try:
        yield bench
    finally:
        backends.reset()
        auth.set_http_request(None)
        logs.unconfigure()


@pytest.fixture(name="oidc")
def oidc_fixture(dm: DM) -> Oidc:
    """``dm`` with DM_AUTH=oidc: writers, readers and the invoker as configured above."""
    issuer = oidc_issuer()
    issuer.down = False
    auth.set_http_request(issuer)
    dm.configure(
        DM_AUTH="oidc",
        DM_OIDC_AUDIENCE=AUDIENCE,
        DM_WRITERS=f"user:{WRITER}",
        DM_READERS=READER,
        DM_INVOKER_SERVICE_ACCOUNT=f"serviceAccount:{INVOKER}",
        DM_PUSH_SERVICE_ACCOUNT=f"serviceAccount:{PUSHER}",
    )
    return issuer
