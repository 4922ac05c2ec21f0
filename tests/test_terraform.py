"""``terraform/`` cross-checked against the code it deploys (no provider needed).

``terraform validate`` and ``plan`` cannot run here (the google provider
cannot be downloaded), so: ``terraform fmt -check`` (also a syntax check)
where terraform is installed; python-hcl2 structural tests that evaluate the
module (:mod:`tests.tfmodel`) and compare it with the code — entry points,
the environment each function reads (the backend is really built from it),
timeouts, the secret, identities and who may invoke what; and checkov, run
isolated (its dependencies conflict with ours), with dm's own policies in
``terraform/policies``, failing on failed checks and on parse errors. The
Firestore indexes are checked apart, against recorded queries
(``tests/test_terraform_firestore.py``).
"""

from __future__ import annotations

import ast
import atexit
import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import hcl2
import pytest

from dmcore.runtime import backend as backends
from scripts import bundle
from tests.tfmodel import EXAMPLE, MODULE, PROJECT_NUMBER, ROOT, TERRAFORM, Model, load

PROJECT, REGION = "demo-project", "europe-west1"
TFVARS = hcl2.SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)
CHECKOV = "checkov==3.3.30"
POLICIES = TERRAFORM / "policies"
GEN2_HTTP_MAX_TIMEOUT_S = 3600
PUBLIC = ("allUsers", "allAuthenticatedUsers")
NOT_IN_PRODUCTION = {
    "DM_HOME": "embedded backend only",
    "DM_STORE": "embedded backend only",
    "DM_EMBEDDED_DRIVER": "set by dm serve, whose worker runs the embedded queue",
    "DM_NO_FINGERPRINT": "an option of the local distributor (dm run --no-fingerprint)",
    "DM_TASKS_QUEUE": "the deployment names its queues in DM_TASKS_QUEUES",
    "DM_NOTIFY_SECRET": "the secret is mounted as a file (DM_NOTIFY_SECRET_FILE)",
    "DM_TASKS_EMULATOR_HOST": "a local Cloud Tasks stand-in only",
    "DM_CLOUD_RUN_EMULATOR_HOST": "a local Cloud Run stand-in only",
    "DM_EXECUTION_ID": "written into a Cloud Run job's env (cloud_run_jobs' marker)",
}
"""Variables named in the code that a deployment leaves unset, and why (besides the
job's side, :func:`_job_side`)."""


@functools.cache
def built_bundle() -> pathlib.Path:
    """A bundle built for this test process (the model hashes it), never build/'s:
    a clean clone has none, and tests must not depend on `make bundle` having run."""
    folder = tempfile.mkdtemp(prefix="dm-tf-bundle-")
    atexit.register(shutil.rmtree, folder, True)
    return bundle.build(pathlib.Path(folder) / "functions.zip")


def model(project_number: str = PROJECT_NUMBER, **variables: Any) -> Model:
    return Model(
        MODULE,
        {"project": PROJECT, "region": REGION, "bundle": str(built_bundle()), **variables},
        project_number=project_number,
    )


@pytest.fixture(scope="module")
def m() -> Model:
    return model()


def functions(m: Model) -> dict[str, dict[str, Any]]:
    """Each google_cloudfunctions2_function instance, evaluated, by its for_each key."""
    res = m.resource("google_cloudfunctions2_function.fn")
    return {s["each"]["key"]: m.body(res, s) for s in m.instances(res)}


def env_of(m: Model) -> dict[str, str]:
    """The environment of the functions (the same for all four: checked below)."""
    envs = [fn["service_config"][0]["environment_variables"] for fn in functions(m).values()]
    assert all(e == envs[0] for e in envs)
    return dict(envs[0])


def members(m: Model, rtype: str) -> list[tuple[str, dict[str, Any]]]:
    """(address, evaluated body) of every instance of resources of ``rtype``."""
    out = []
    for res in m.of_type(rtype):
        for scope in m.instances(res):
            out.append((res.address, m.body(res, scope)))
    return out


def sa_email(m: Model, name: str) -> str:
    return str(m.computed(m.resource(f"google_service_account.{name}"))["email"])


# -- syntax ---------------------------------------------------------------------------------------


def test_terraform_fmt() -> None:
    exe = shutil.which("terraform")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("terraform is not on PATH in CI: `terraform fmt -check` cannot run")
        pytest.skip("terraform is not on PATH (fmt -check runs where it is installed)")
    out = subprocess.run(
        [exe, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        env={**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_file_parses() -> None:
    for d in sorted({p.parent for p in TERRAFORM.rglob("*.tf")}):
        assert load(d), d


# -- the example root -----------------------------------------------------------------------------


def test_example_needs_only_project_and_region() -> None:
    blocks = load(EXAMPLE)
    variables = {k: v for b in blocks["variable"] for k, v in b.items()}
    assert {"project", "region"} <= set(variables)
    required = {k for k, v in variables.items() if "default" not in v}
    assert required <= {"project", "region"}
    ex = Model(EXAMPLE, {"project": PROJECT})
    (module,) = [b["dm"] for b in blocks["module"]]
    assert module["source"] == "../../modules/dm"
    assert pathlib.Path(ex.eval(module["bundle"])).resolve() == bundle.DEFAULT_OUT
    outputs = {k for b in blocks["output"] for k in b}
    assert {"api_url", "notify_topic", "tasks_queues"} <= outputs
    module_outputs = {k for b in load(MODULE)["output"] for k in b}
    assert {"api_url", "notify_topic", "tasks_queues"} <= module_outputs


# -- the functions and their bundle ---------------------------------------------------------------


def _exported_functions() -> set[str]:
    tree = ast.parse((ROOT / "functions" / "main.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    raise AssertionError("functions/main.py has no __all__")


def _decorated(name: str) -> str:
    """The functions_framework decorator of ``functions/<name>.py``'s function ``name``."""
    tree = ast.parse((ROOT / "functions" / f"{name}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            (deco,) = node.decorator_list
            return ast.unparse(deco)
    raise AssertionError(f"functions/{name}.py defines no {name}()")


def test_every_entry_point_is_deployed_from_the_bundle(m: Model) -> None:
    fns = functions(m)
    exported = _exported_functions()
    assert {fn["build_config"][0]["entry_point"] for fn in fns.values()} == exported
    assert set(fns) == exported
    for name in exported:
        assert _decorated(name).startswith("functions_framework.")
    obj = m.computed(m.resource("google_storage_bucket_object.bundle"))
    assert obj["source"] == str(built_bundle())
    # Named by content: the object name changes with the bundle, so do the revisions.
    raw = m.resource("google_storage_bucket_object.bundle").body["name"]
    assert "filesha256(var.bundle)" in raw
    for fn in fns.values():
        src = fn["build_config"][0]["source"][0]["storage_source"][0]
        assert src["object"] == obj["name"]
        assert fn["build_config"][0]["runtime"].startswith("python3")
        assert fn["build_config"][0]["service_account"].endswith(sa_email(m, "builder"))


def test_timeouts_fit(m: Model) -> None:
    for deadline in (15, 600, 1800):
        mm = model(tasks_dispatch_deadline_s=deadline)
        fns = functions(mm)
        env = env_of(mm)
        assert int(env["DM_TASKS_DISPATCH_DEADLINE"]) == deadline
        assert fns["dm_tasks"]["service_config"][0]["timeout_seconds"] >= deadline
    fns = functions(m)
    for fn in fns.values():
        assert 0 < fn["service_config"][0]["timeout_seconds"] <= GEN2_HTTP_MAX_TIMEOUT_S
    sub = m.computed(m.resource("google_pubsub_subscription.notify_push"))
    assert fns["dm_notify"]["service_config"][0]["timeout_seconds"] <= sub["ack_deadline_seconds"]
    job = m.computed(m.resource("google_cloud_scheduler_job.sweep"))
    attempt = int(job["attempt_deadline"].removesuffix("s"))
    assert fns["dm_sweep"]["service_config"][0]["timeout_seconds"] <= attempt
    # dm_api answers a WalkGraph within its own time budget.
    from dmcore.service import MAX_WALK_TIME_US

    assert fns["dm_api"]["service_config"][0]["timeout_seconds"] > MAX_WALK_TIME_US / 1e6


# -- the environment: what the code reads at start-up ---------------------------------------------


ENV_NAME = re.compile(r"(DM|GOOGLE)_[A-Z0-9_]+")
SCANNED = ("dmcore", "functions", "distributors")


def env_names(tree: ast.AST) -> set[str]:
    """Every string constant of ``tree`` that is an environment variable's name.

    All of them, not only those at ``os.environ.get(...)``: a name is read
    through constants (``ENV_API_URL``), helpers (``need("...")``) and mappings
    handed around, and a name dm writes into a job's env is a name too.
    """
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and ENV_NAME.fullmatch(node.value)
    }


def _code_env_names() -> set[str]:
    names: set[str] = set()
    for top in SCANNED:
        for path in (ROOT / top).rglob("*.py"):
            if not path.name.endswith("_pb2.py"):
                names |= env_names(ast.parse(path.read_text()))
    return names


def _job_side() -> set[str]:
    """What a job reads (dmcore.job's ENV_*): its distributor sets them, not terraform."""
    from dmcore import job

    return {v for k, v in vars(job).items() if k.startswith("ENV_") and ENV_NAME.fullmatch(v)}


def test_environment_sets_what_the_code_reads(m: Model) -> None:
    env = env_of(m)
    named = _code_env_names()
    job_side = _job_side() - set(env) - set(NOT_IN_PRODUCTION)
    unset = sorted(named - set(env) - set(NOT_IN_PRODUCTION) - job_side)
    assert not unset, (
        f"named in the code, neither set by terraform nor in NOT_IN_PRODUCTION: {unset}"
    )
    unread = sorted(set(env) - named)
    assert not unread, f"set by terraform, named nowhere in the code: {unread}"
    stale = sorted(set(NOT_IN_PRODUCTION) - named)
    assert not stale, f"NOT_IN_PRODUCTION names what the code no longer does: {stale}"
    assert not set(NOT_IN_PRODUCTION) & set(env)
    assert {"DM_BACKEND", "DM_TASKS_URL", "GOOGLE_CLOUD_PROJECT"} <= named  # the scan works


def test_env_names_are_found_however_they_are_read() -> None:
    code = (
        'import os\nENV_X = "DM_X"\nos.environ.get("DM_A")\nenv["GOOGLE_B"]\nneed("DM_C")\n'
        'os.getenv(ENV_X)\nprint("DM_ lower", "not_DM_D")\n'
    )
    assert env_names(ast.parse(code)) == {"DM_X", "DM_A", "GOOGLE_B", "DM_C"}


@pytest.fixture
def deployed_env(
    m: Model, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    yield deployed(m, tmp_path, monkeypatch)


def deployed(m: Model, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The functions' environment, with the mounted secret file played by a local file."""
    env = env_of(m)
    (fn, *_) = functions(m).values()
    (vol,) = fn["service_config"][0]["secret_volumes"]
    (version,) = vol["versions"]
    mounted = f"{vol['mount_path']}/{version['path']}"
    assert env["DM_NOTIFY_SECRET_FILE"] == mounted
    secret = tmp_path / "notify-key"
    secret.write_text("k" * 64)
    env["DM_NOTIFY_SECRET_FILE"] = str(secret)
    for var in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"):
        monkeypatch.setenv(var, "127.0.0.1:1")  # clients connect lazily: never contacted
    env["DM_TASKS_EMULATOR_HOST"] = "127.0.0.1:1"
    return env


def test_the_backend_starts_from_the_deployed_environment(
    m: Model, deployed_env: dict[str, str]
) -> None:
    from dmcore.queue.cloudtasks import CloudTasksQueue

    b = backends.from_env(deployed_env)
    try:
        assert b.kind == "gcp"
        assert b.auth.mode == backends.AUTH_OIDC
        urls = m.eval(m.locals["urls"])
        assert set(b.auth.audiences) == set(urls.values())
        assert b.auth.invoker == sa_email(m, "invoker")
        assert b.auth.push == sa_email(m, "push")
        queue = b.engine.queue
        assert isinstance(queue, CloudTasksQueue)
        queues = [q["id"] for q in m.computed(m.resource("google_cloud_tasks_queue.tasks"))]
        assert queue.parents == queues
        assert queue.url == urls["dm_tasks"]
        assert queue.service_account_email == sa_email(m, "invoker")
        assert (
            b.engine.settings.notify_topic
            == m.computed(m.resource("google_pubsub_topic.notify"))["id"]
        )
        assert "jobsim" in b.engine.registry.config_names
    finally:
        b.close()


def test_queue_count_shards_the_tasks() -> None:
    mm = model(tasks_queue_count=3)
    queues = env_of(mm)["DM_TASKS_QUEUES"].split(",")
    assert len(queues) == len(set(queues)) == 3
    grants = members(mm, "google_cloud_tasks_queue_iam_member")
    assert sorted(g["name"] for _, g in grants) == sorted(q.rsplit("/", 1)[1] for q in queues)
    assert all(g["member"] == f"serviceAccount:{sa_email(mm, 'runtime')}" for _, g in grants)


# -- the secret -----------------------------------------------------------------------------------


def test_secret_is_mounted_everywhere_and_readable_by_the_runtime_only(m: Model) -> None:
    secret = m.computed(m.resource("google_secret_manager_secret.notify_key"))
    for name, fn in functions(m).items():
        vols = fn["service_config"][0].get("secret_volumes", [])
        assert [v["secret"] for v in vols] == [secret["secret_id"]], name
        assert not fn["service_config"][0].get("secret_environment_variables"), name
    grants = members(m, "google_secret_manager_secret_iam_member")
    assert [(g["role"], g["member"]) for _, g in grants] == [
        ("roles/secretmanager.secretAccessor", f"serviceAccount:{sa_email(m, 'runtime')}")
    ]
    for rtype in (
        "google_secret_manager_secret_iam_binding",
        "google_secret_manager_secret_iam_policy",
    ):
        assert not m.of_type(rtype)
    project_roles = {g["role"] for _, g in members(m, "google_project_iam_member")}
    assert not {r for r in project_roles if "secretmanager" in r}


# -- identities and who may call what -------------------------------------------------------------


def test_every_function_is_private(m: Model) -> None:
    fns = functions(m)
    runtime = sa_email(m, "runtime")
    for name, fn in fns.items():
        assert fn["service_config"][0]["service_account_email"] == runtime, name
        assert "event_trigger" not in fn, name
    # Invocation is granted only through these run.invoker members, per function.
    for rtype in (
        "google_cloudfunctions2_function_iam_member",
        "google_cloudfunctions2_function_iam_binding",
        "google_cloudfunctions2_function_iam_policy",
        "google_cloud_run_service_iam_binding",
        "google_cloud_run_service_iam_policy",
        "google_cloud_run_v2_service_iam_binding",
        "google_cloud_run_v2_service_iam_policy",
    ):
        assert not m.of_type(rtype), rtype
    by_service: dict[str, set[str]] = {}
    for _, g in members(m, "google_cloud_run_service_iam_member"):
        assert g["role"] == "roles/run.invoker"
        by_service.setdefault(g["service"], set()).add(g["member"])
    sa = {k: f"serviceAccount:{sa_email(m, k)}" for k in ("invoker", "push")}
    assert by_service == {
        fns["dm_tasks"]["name"]: {sa["invoker"]},
        fns["dm_sweep"]["name"]: {sa["invoker"]},
        fns["dm_notify"]["name"]: {sa["push"]},
    }  # dm_api: nobody until writers/readers/api_invokers are given
    # And at the network: only dm_api takes calls from outside Google Cloud (users, jobs);
    # Cloud Tasks, Cloud Scheduler and Pub/Sub push of the project count as internal.
    ingress = {name: fn["service_config"][0]["ingress_settings"] for name, fn in fns.items()}
    assert ingress == {
        "dm_api": "ALLOW_ALL",
        "dm_tasks": "ALLOW_INTERNAL_ONLY",
        "dm_sweep": "ALLOW_INTERNAL_ONLY",
        "dm_notify": "ALLOW_INTERNAL_ONLY",
    }
    people = model(writers=["user:ann@example.com"], api_invokers=["serviceAccount:j@x.com"])
    api = {g["member"] for _, g in members(people, "google_cloud_run_service_iam_member")}
    assert {"user:ann@example.com", "serviceAccount:j@x.com"} <= api
    assert env_of(people)["DM_WRITERS"] == "user:ann@example.com"


def test_no_public_principal_anywhere() -> None:
    for mm in (
        model(writers=["user:a@example.com"]),
        model(writers=["user:a@example.com"], **example_tfvars()),  # every grant instantiated
        Model(EXAMPLE, {"project": PROJECT}),
    ):
        for res in mm.resources.values():
            if "_iam_" not in res.type:
                continue
            for scope in mm.instances(res):
                body = mm.body(res, scope)
                granted = [body.get("member", ""), *body.get("members", [])]
                assert not set(granted) & set(PUBLIC), res.address
    # The module refuses them as inputs, too.
    blocks = load(MODULE)
    variables = {k: v for b in blocks["variable"] for k, v in b.items()}
    for name in ("writers", "readers", "api_invokers"):
        (validation,) = variables[name]["validation"]
        assert all(p in validation["condition"] for p in PUBLIC), name
    # The remote distributors' accounts are emails ("serviceAccount:" is added): never public.
    sa = "w@p.iam.gserviceaccount.com"
    for public in PUBLIC:
        workers = {"w": {"service": "w", "service_account": public}}
        assert not _validations(model(http_workers=workers), "http_workers")
        jobs = [{"job": "projects/p/locations/l/jobs/j", "service_account": public}]
        assert not _validations(model(cloud_run_jobs=jobs), "cloud_run_jobs")
        publisher = "swarming_pubsub_publisher"
        assert not _validations(model(**{publisher: public}), publisher)
        assert _validations(model(**{publisher: sa}), publisher)


def test_callers_sign_as_their_own_accounts(m: Model) -> None:
    urls = m.eval(m.locals["urls"])
    env = env_of(m)
    invoker, push = sa_email(m, "invoker"), sa_email(m, "push")
    # Cloud Tasks: the tasks carry the invoker's token, which dm_tasks accepts.
    assert env["DM_TASKS_SERVICE_ACCOUNT"] == env["DM_INVOKER_SERVICE_ACCOUNT"] == invoker
    assert env["DM_TASKS_URL"] == urls["dm_tasks"]
    # Cloud Scheduler: POST dm_sweep as the invoker.
    job = m.computed(m.resource("google_cloud_scheduler_job.sweep"))
    target = job["http_target"][0]
    assert target["http_method"] == "POST"
    assert target["uri"].startswith(urls["dm_sweep"])
    assert target["oidc_token"][0] == {
        "service_account_email": invoker,
        "audience": urls["dm_sweep"],
    }
    # Pub/Sub: push to dm_notify as the push account, retried, then dead-lettered.
    sub = m.computed(m.resource("google_pubsub_subscription.notify_push"))
    topic = m.computed(m.resource("google_pubsub_topic.notify"))
    assert sub["topic"] == topic["id"] == env["DM_NOTIFY_TOPIC"]
    push_cfg = sub["push_config"][0]
    assert push_cfg["push_endpoint"] == f"{urls['dm_notify']}/{topic['id']}"
    assert env["DM_PUSH_SERVICE_ACCOUNT"] == push  # the only identity dm_notify accepts
    assert urls["dm_notify"] in env["DM_OIDC_AUDIENCE"].split(",")
    gcloud = "32555940559.apps.googleusercontent.com"
    extra = env_of(model(extra_audiences=[gcloud]))["DM_OIDC_AUDIENCE"].split(",")
    assert extra == [*urls.values(), gcloud]
    assert push_cfg["oidc_token"][0] == {
        "service_account_email": push,
        "audience": urls["dm_notify"],
    }
    assert sub["retry_policy"][0]["minimum_backoff"]
    dead = m.computed(m.resource("google_pubsub_topic.dead_letter"))
    assert sub["dead_letter_policy"][0]["dead_letter_topic"] == dead["id"]
    assert 5 <= sub["dead_letter_policy"][0]["max_delivery_attempts"] <= 100
    # The runtime creates tasks signed as the invoker: it must be allowed to act as it.
    acts = [g for _, g in members(m, "google_service_account_iam_member")]
    assert {
        "service_account_id": m.computed(m.resource("google_service_account.invoker"))["name"],
        "role": "roles/iam.serviceAccountUser",
        "member": f"serviceAccount:{sa_email(m, 'runtime')}",
    } in acts


def test_queues_are_rate_limited_with_bounded_retries(m: Model) -> None:
    for q in m.computed(m.resource("google_cloud_tasks_queue.tasks")):
        assert 0 < q["rate_limits"][0]["max_dispatches_per_second"] <= 500
        assert q["rate_limits"][0]["max_concurrent_dispatches"] > 0
        assert q["retry_config"][0]["max_attempts"] >= 1
        assert q["location"] == REGION


# README "Scale": what the defaults must carry, and Cloud Tasks' documented bounds.
DESIGN_EXECUTIONS_PER_S = 1_000
DELIVERIES_PER_EXECUTION = 3
"""The goal (issue 11); bench_firestore's tasks_per_execution measures it."""
STEP_S = 0.1
"""Assumed mean time dm_tasks spends on one delivery (a transaction and its CreateTasks)."""
HEADROOM = 1.25
QUEUE_MAX_DISPATCHES_PER_S = 500
QUEUE_MAX_CONCURRENT_DISPATCHES = 5_000


def test_defaults_carry_a_thousand_executions_per_second(m: Model) -> None:
    """The README's arithmetic on the module's defaults: queues and dm_tasks' instances."""
    deliveries_per_s = DESIGN_EXECUTIONS_PER_S * DELIVERIES_PER_EXECUTION
    queues = m.computed(m.resource("google_cloud_tasks_queue.tasks"))
    rates = [q["rate_limits"][0] for q in queues]
    assert all(r["max_dispatches_per_second"] <= QUEUE_MAX_DISPATCHES_PER_S for r in rates)
    assert all(r["max_concurrent_dispatches"] <= QUEUE_MAX_CONCURRENT_DISPATCHES for r in rates)
    dispatch = sum(r["max_dispatches_per_second"] for r in rates)
    assert dispatch >= HEADROOM * deliveries_per_s, (len(queues), dispatch)
    assert env_of(m)["DM_TASKS_QUEUES"].count(",") + 1 == len(queues)
    tasks_fn = functions(m)["dm_tasks"]["service_config"][0]
    in_flight = tasks_fn["max_instance_count"] * tasks_fn["max_instance_request_concurrency"]
    assert in_flight / STEP_S >= HEADROOM * deliveries_per_s, tasks_fn


def test_least_privilege(m: Model) -> None:
    basic = {"roles/owner", "roles/editor", "roles/viewer"}
    project = [(g["member"], g["role"]) for _, g in members(m, "google_project_iam_member")]
    assert not {r for _, r in project} & basic
    by_member: dict[str, set[str]] = {}
    for member, role in project:
        by_member.setdefault(member, set()).add(role)
    sa = {k: f"serviceAccount:{sa_email(m, k)}" for k in ("runtime", "invoker", "push", "builder")}
    assert by_member == {
        sa["runtime"]: {"roles/datastore.user"},
        # Google's documented grants for a functions build account: the source it reads
        # sits in a bucket Cloud Functions creates on the first deployment.
        sa["builder"]: {
            "roles/logging.logWriter",
            "roles/artifactregistry.writer",
            "roles/storage.objectAdmin",
        },
    }  # the invoker and push accounts hold no project role at all
    publishers = [
        g["member"]
        for _, g in members(m, "google_pubsub_topic_iam_member")
        if g["topic"] == m.computed(m.resource("google_pubsub_topic.notify"))["name"]
    ]
    assert publishers == [sa["runtime"]]


def _preconditions(mm: Model, address: str) -> dict[str, bool]:
    """Each instance's preconditions of ``address``, evaluated (all true: True)."""
    res = mm.resource(address)
    (lifecycle,) = res.body["lifecycle"]
    out = {}
    for scope in mm.instances(res):
        key = str(scope.get("each", {}).get("key", scope.get("count", {}).get("index")))
        out[key] = all(mm.eval(p["condition"], scope) for p in lifecycle["precondition"])
    return out


def test_urls_are_known_without_a_cycle(m: Model) -> None:
    """The functions' URLs come from names and the project number, not from the functions."""
    raw = json.dumps(m.locals)
    assert "google_cloudfunctions2_function" not in raw
    urls = m.eval(m.locals["urls"])
    for name, fn in functions(m).items():
        assert urls[name] == f"https://{fn['name']}-{PROJECT_NUMBER}.{REGION}.run.app"
    # Cloud Run gives that URL only while "NAME-PROJECT_NUMBER" fits a DNS label (63): the
    # functions refuse to deploy otherwise, and name_prefix's limit leaves room for any
    # project number (12 digits today) up to 40 digits.
    fns = "google_cloudfunctions2_function.fn"
    assert all(_preconditions(m, fns).values())
    assert all(_preconditions(model("9" * 40, name_prefix="a" * 15), fns).values())
    assert not any(_preconditions(model("9" * 60), fns).values())


def test_functions_wait_for_their_grants(m: Model) -> None:
    """Cloud Build refuses a build whose account's new grants have not propagated yet
    (the provider's own example waits, too): the functions wait for the builder's and
    the runtime's grants."""
    fn = m.resource("google_cloudfunctions2_function.fn")
    assert "${time_sleep.iam_propagation}" in fn.body["depends_on"]
    wait = m.resource("time_sleep.iam_propagation")
    assert set(wait.body["depends_on"]) == {
        "${google_project_iam_member.builder}",
        "${google_project_iam_member.runtime_firestore}",
        "${google_secret_manager_secret_iam_member.runtime_reads_secret}",
    }
    assert int(m.body(wait)["create_duration"].removesuffix("s")) >= 60


# -- the remote distributors (http, cloud_run_jobs, swarming_v1) ----------------------------------

EXAMPLE_TFVARS = EXAMPLE / "example-distributors.tfvars"
REMOTE_RESOURCES = (
    "google_cloud_tasks_queue.http",
    "google_cloud_tasks_queue_iam_member.runtime_http",
    "google_service_account.worker_invoker",
    "google_service_account_iam_member.runtime_acts_as_worker_invoker",
    "google_cloud_run_v2_service_iam_member.worker_invoker_runs_worker",
    "google_cloud_run_v2_job_iam_member.runtime_runs_job",
    "google_pubsub_topic_iam_member.job_reports",
    "google_pubsub_topic_iam_member.swarming_publishes",
)


def example_tfvars() -> dict[str, Any]:
    with EXAMPLE_TFVARS.open() as f:
        doc: dict[str, Any] = hcl2.load(f, serialization_options=TFVARS)
    return doc


@pytest.fixture(scope="module")
def remote() -> Model:
    """The module with every remote distributor declared, as example-distributors.tfvars."""
    return model(**example_tfvars())


def dm_config(mm: Model) -> dict[str, Any]:
    configs: dict[str, Any] = json.loads(env_of(mm)["DM_CONFIG"])["distributor_configs"]
    return configs


def grants(mm: Model, rtype: str) -> set[tuple[str, ...]]:
    """(resource address, evaluated body as sorted items) of every instance of ``rtype``."""
    return {(a, *(f"{k}={v}" for k, v in sorted(g.items()))) for a, g in members(mm, rtype)}


def test_remote_distributors_are_off_by_default(m: Model) -> None:
    for address in REMOTE_RESOURCES:
        assert m.instances(m.resource(address)) == [], address
    assert dm_config(m) == json.loads(m.variables["distributor_config"])["distributor_configs"]


def test_example_tfvars_reach_the_module() -> None:
    """Every variable of example-distributors.tfvars is one of the example root's, which
    hands it to the module under the same name."""
    declared = {k for b in load(EXAMPLE)["variable"] for k in b}
    (module,) = [b["dm"] for b in load(EXAMPLE)["module"]]
    for name in example_tfvars():
        assert name in declared, name
        assert module[name] == f"${{var.{name}}}", name
    assert {"http_workers", "cloud_run_jobs", "swarming_host"} <= set(example_tfvars())


def test_declared_distributors_are_configured(
    remote: Model, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tfvars = example_tfvars()
    configs = dm_config(remote)
    queue = remote.computed(remote.resource("google_cloud_tasks_queue.http"))[0]
    invoker = remote.computed(remote.resource("google_service_account.worker_invoker"))[0]
    for name, worker in tfvars["http_workers"].items():
        url = f"https://{worker['service']}-{PROJECT_NUMBER}.{REGION}.run.app"
        assert configs[name] == {
            "http": {
                "url": url,
                "audience": url,
                "service_account_email": invoker["email"],
                "queue": queue["id"],
                "max_attempts": tfvars["http_max_attempts"],
            }
        }
    # The queue gives up when the distributor does (its README: "set the queue's
    # max_attempts to the same").
    assert queue["retry_config"][0]["max_attempts"] == tfvars["http_max_attempts"]
    jobs = [j["job"] for j in tfvars["cloud_run_jobs"]]
    assert configs["cloud_run_jobs"] == {"cloud_run_jobs": {"jobs": jobs}}
    assert configs["swarming"] == {"swarming_v1": {"swarming": {"url": tfvars["swarming_host"]}}}
    assert configs["jobsim"]  # distributor_config's own stay
    # dm starts from that environment: each distributor accepts its config.
    b = backends.from_env(deployed(remote, tmp_path, monkeypatch))
    try:
        assert set(configs) <= set(b.engine.registry.config_names)
    finally:
        b.close()
    # Options left to Terraform's defaults: a worker's own URL and audience.
    mm = model(
        http_workers={
            "w": {
                "service": "w",
                "service_account": "w@x.iam.gserviceaccount.com",
                "region": "us-east1",
                "url": "https://worker.example.com",
                "audience": "aud",
            }
        }
    )
    assert dm_config(mm)["w"]["http"]["url"] == "https://worker.example.com"
    assert dm_config(mm)["w"]["http"]["audience"] == "aud"
    (grant,) = [g for _, g in members(mm, "google_cloud_run_v2_service_iam_member")]
    assert (grant["location"], grant["name"]) == ("us-east1", "w")


def test_remote_distributors_grant_exactly_what_each_needs(m: Model, remote: Model) -> None:
    tfvars = example_tfvars()
    runtime = f"serviceAccount:{sa_email(remote, 'runtime')}"
    invoker = remote.computed(remote.resource("google_service_account.worker_invoker"))[0]
    queue = remote.computed(remote.resource("google_cloud_tasks_queue.http"))[0]
    # Nothing project-wide: the project's grants are the same with or without them.
    assert grants(remote, "google_project_iam_member") == grants(m, "google_project_iam_member")
    # cloud_run_jobs: run.developer for dm, on each named job and no other.
    on_jobs = {
        (f"projects/{g['project']}/locations/{g['location']}/jobs/{g['name']}", g["role"])
        for _, g in members(remote, "google_cloud_run_v2_job_iam_member")
        if g["member"] == runtime
    }
    assert on_jobs == {(j["job"], "roles/run.developer") for j in tfvars["cloud_run_jobs"]}
    assert len(members(remote, "google_cloud_run_v2_job_iam_member")) == len(on_jobs)
    # http: dm creates, reads and deletes tasks on the http queue (the engine's queues
    # keep their enqueuer grant only) and acts as the worker invoker ...
    by_queue: dict[str, set[str]] = {}
    for _, g in members(remote, "google_cloud_tasks_queue_iam_member"):
        assert g["member"] == runtime
        by_queue.setdefault(g["name"], set()).add(g["role"])
    assert by_queue.pop(queue["name"]) == {
        "roles/cloudtasks.enqueuer",
        "roles/cloudtasks.viewer",
        "roles/cloudtasks.taskDeleter",
    }
    assert by_queue
    assert all(roles == {"roles/cloudtasks.enqueuer"} for roles in by_queue.values())
    acts_as = {
        (g["service_account_id"], g["role"], g["member"])
        for _, g in members(remote, "google_service_account_iam_member")
    }
    assert (invoker["name"], "roles/iam.serviceAccountUser", runtime) in acts_as
    # ... which may invoke each worker service, and is granted nothing else.
    worker_grants = [g for _, g in members(remote, "google_cloud_run_v2_service_iam_member")]
    assert {(g["name"], g["role"], g["member"]) for g in worker_grants} == {
        (w["service"], "roles/run.invoker", invoker["member"])
        for w in tfvars["http_workers"].values()
    }
    everything = [
        g
        for res in remote.resources.values()
        if "_iam_" in res.type
        for g in (remote.body(res, s) for s in remote.instances(res))
    ]
    assert sum(g.get("member") == invoker["member"] for g in everything) == len(worker_grants)
    # Workers and jobs report to dm's topic and call dm_api; Swarming publishes its ends.
    accounts = {w["service_account"] for w in tfvars["http_workers"].values()} | {
        j["service_account"] for j in tfvars["cloud_run_jobs"]
    }
    topic = remote.computed(remote.resource("google_pubsub_topic.notify"))["name"]
    publishers = {
        g["member"]
        for _, g in members(remote, "google_pubsub_topic_iam_member")
        if g["topic"] == topic
    }
    assert publishers == {
        runtime,
        *(f"serviceAccount:{a}" for a in accounts),
        f"serviceAccount:{tfvars['swarming_pubsub_publisher']}",
    }
    api = {
        g["member"]
        for _, g in members(remote, "google_cloud_run_service_iam_member")
        if g["service"] == functions(remote)["dm_api"]["name"]
    }
    assert api == {*(f"serviceAccount:{a}" for a in accounts), *tfvars["api_invokers"]}
    for a in accounts:  # and nothing else
        assert sum(g.get("member") == f"serviceAccount:{a}" for g in everything) == 2


def _validations(mm: Model, variable: str) -> bool:
    """Whether ``variable``'s value in ``mm`` passes all of its validation blocks."""
    spec = next(b[variable] for b in mm.blocks["variable"] if variable in b)
    return all(mm.eval(v["condition"]) for v in spec.get("validation", []))


def test_remote_distributor_inputs_are_checked() -> None:
    sa = "w@p.iam.gserviceaccount.com"
    job = "projects/p/locations/l/jobs/j"
    ok: dict[str, Any] = {
        "http_workers": {"w": {"service": "w", "service_account": sa}},
        "cloud_run_jobs": [{"job": job, "service_account": sa}],
        "swarming_host": "https://chromium-swarm.appspot.com",
        "swarming_pubsub_publisher": sa,
        "http_max_attempts": 100,
    }
    bad: dict[str, Any] = {
        "http_workers": {"w": {"service": "w", "service_account": f"serviceAccount:{sa}"}},
        "cloud_run_jobs": [{"job": "jobs/j", "service_account": sa}],
        "swarming_host": "https://chromium-swarm.appspot.com/",
        "swarming_pubsub_publisher": "swarming",
        "http_max_attempts": 101,
    }
    for name, value in ok.items():
        assert _validations(model(**{name: value}), name), name
        assert not _validations(model(**{name: bad[name]}), name), name
    twice = [{"job": job, "service_account": sa}] * 2
    assert not _validations(model(cloud_run_jobs=twice), "cloud_run_jobs")
    # Across variables: the preconditions of the functions.
    fn = "google_cloudfunctions2_function.fn"
    assert all(_preconditions(model(**ok), fn).values())
    taken = json.dumps({"distributor_configs": {"w": {"jobsim": {}}}})
    clash = model(http_workers=ok["http_workers"], distributor_config=taken)
    assert not any(_preconditions(clash, fn).values())
    assert not any(_preconditions(model(swarming_host=ok["swarming_host"]), fn).values())


# -- checkov, isolated ----------------------------------------------------------------------------


BAD = """
resource "google_cloud_run_service_iam_member" "public" {
  location = "x"
  service  = "s"
  role     = "roles/run.invoker"
  member   = "allUsers"
}
resource "google_cloud_scheduler_job" "sweep" {
  name     = "s"
  schedule = "* * * * *"
  http_target {
    uri = "https://x"
  }
}
resource "google_cloud_tasks_queue" "q" {
  name     = "q"
  location = "x"
  retry_config {
    max_attempts = -1
  }
}
resource "google_pubsub_subscription" "push" {
  name  = "p"
  topic = "t"
  push_config {
    push_endpoint = "https://x"
  }
}
resource "google_cloudfunctions2_function" "f" {
  name     = "f"
  location = "x"
  build_config {
    runtime     = "python312"
    entry_point = "dm_api"
  }
}
"""


def checkov(directory: pathlib.Path) -> dict[str, Any]:
    """checkov's JSON report on ``directory`` with dm's policies (its own venv, offline)."""
    out = subprocess.run(
        [
            *bundle._uv(),
            "tool",
            "run",
            "--from",
            CHECKOV,
            "checkov",
            "-d",
            str(directory),
            "--framework",
            "terraform",
            "--external-checks-dir",
            str(POLICIES),
            "--skip-download",
            "-o",
            "json",
        ],
        env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert out.returncode in (0, 1), out.stderr[-3000:]
    report = json.loads(out.stdout)
    if isinstance(report, list):
        (report,) = [r for r in report if r.get("check_type") == "terraform"]
    assert isinstance(report, dict)
    return report


def _policy_ids() -> set[str]:
    ids = set()
    for path in POLICIES.glob("*.yaml"):
        match = re.search(r'id:\s*"?([A-Z0-9_]+)"?', path.read_text())
        assert match, path
        ids.add(match.group(1))
    return ids


def test_checkov_passes_with_dm_policies() -> None:
    report = checkov(TERRAFORM)
    summary = report["summary"]
    failed = [(f["check_id"], f["resource"]) for f in report["results"]["failed_checks"]]
    assert summary["parsing_errors"] == 0, summary
    assert summary["failed"] == 0, failed
    passed = {p["check_id"] for p in report["results"]["passed_checks"]}
    assert _policy_ids() <= passed, _policy_ids() - passed
    # Checks skipped in the code: only these, each with its reason in the resource.
    skipped = {s["check_id"] for s in report["results"]["skipped_checks"]}
    assert skipped <= {"CKV_GCP_62", "CKV_GCP_83", "CKV_GCP_124"}, skipped


def test_dm_policies_catch_what_they_are_for(tmp_path: pathlib.Path) -> None:
    (tmp_path / "main.tf").write_text(BAD)
    (tmp_path / "broken.tf").write_text('resource "google_pubsub_topic" "t" {\n  name = "x"\n')
    report = checkov(tmp_path)
    failed = {f["check_id"] for f in report["results"]["failed_checks"]}
    assert _policy_ids() <= failed, _policy_ids() - failed
    assert report["summary"]["parsing_errors"] == 1  # so the check above can see them
