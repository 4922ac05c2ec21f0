"""``dm config validate`` on the remote distributors' example configs (accepted) and on
malformed ones (refused with the field named, exit 2); the example run files'
quests pass their distributor's ``validate`` (what ``dm run`` checks first)."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
from typer.testing import CliRunner

from dmcore import distributor as dist
from dmcore.cli.commands import app
from dmcore.cli.runfile import parse_run_file
from dmcore.runtime.embedded import build_registry
from dmcore.runtime.files import load_document

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ["http", "cloud_run_jobs", "swarming_v1"]
runner = CliRunner()


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_example_configs_are_accepted(example: str) -> None:
    path = REPO / "examples" / example / "config.yaml"
    r = runner.invoke(app, ["config", "validate", str(path)])
    assert r.exit_code == 0, r.output
    assert "OK (1 config(s)" in r.output


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_example_quests_pass_validation(example: str) -> None:
    doc = load_document(REPO / "examples" / example / "config.yaml")
    registry = build_registry(doc)
    rr = parse_run_file(REPO / "examples" / example / "run.yaml")
    assert len(rr.request.quest) == 1
    for desc in rr.request.quest:
        d, _ = registry.build_named(desc.distributor_config_name)
        d.validate(desc.distributor_parameters)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "http: {url: 'https://w.example.com/', queue: q}",
            "distributor_configs.x.http: queue: expected projects/P/locations/L/queues/Q",
        ),
        (
            "http: {url: 'https://w.example.com/', queue: projects/p/locations/l/queues/q}",
            "distributor_configs.x.http: service_account_email: required",
        ),
        ("http: {urll: 'x'}", "distributor_configs.x.http: urll: unknown field (known: url,"),
        ("http: 'https://w.example.com/'", "distributor_configs.x.http: must be an object"),
        ("http: [1, 2]", "distributor_configs.x.http: must be an object of http's fields"),
        (
            "http: {url: 'https://w.example.com/', deadline: 10m}",
            'distributor_configs.x.http: deadline: Duration must end with letter "s": 10m',
        ),
        (
            "http: {url: 'https://w.example.com/', queue: projects/p/locations/l/queues/q, "
            "service_account_email: '@'}",
            "service_account_email: not an email: '@'",
        ),
        ("http: {url: 'https://w.example.com/', max_attempts: -1}", "max_attempts: Value out of"),
        ("cloud_run_jobs: {jobs: [projects/p/locations/l/jobs/j], container: A}", "container:"),
        ("cloud_run_jobs: {jobs: [myjob]}", "jobs[0]: expected projects/P/locations/L/jobs/J"),
        ("cloud_run_jobs: {max_task_count: -1}", "distributor_configs.x.cloud_run_jobs"),
        ("swarming_v1: {swarming: {url: 'https://Swarm.example.com'}}", "must be lower-case"),
        ("swarming_v1: {}", "swarming.url: required"),
        (
            "swarming_v1: {swarming: 'https://s.example.com'}",
            "distributor_configs.x.swarming_v1: swarming: must be an object, got str",
        ),
        (
            "swarming_v1: {swarming: {url: 'https://s.example.com'}, default_expiration: 1s}",
            "default_expiration: must be within 30s..7 days",
        ),
    ],
)
def test_malformed_configs_are_refused_with_the_field_named(
    tmp_path: pathlib.Path, body: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"distributor_configs:\n  x:\n    {body}\n")
    r = runner.invoke(app, ["config", "validate", str(path)])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())
    assert "Traceback" not in r.output


def test_a_snapshot_doc_is_its_fields_with_a_content_of_its_own() -> None:
    snap = dist.Snapshot("jobsim", "jobsim", "v1", {"pool": "p", "nested": {"list": [1, 2]}})
    doc = snap.to_doc()
    assert doc == dataclasses.asdict(snap)
    assert dist.Snapshot.from_doc(doc) == snap
    doc["content"]["nested"]["list"].append(3)  # a document changed later leaves the snapshot be
    assert snap.content == {"pool": "p", "nested": {"list": [1, 2]}}
