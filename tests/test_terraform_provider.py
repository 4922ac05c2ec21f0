"""Every argument, block and attribute ``terraform/`` uses exists in the google provider.

``terraform validate`` would catch a misspelt argument, but the provider
cannot be downloaded where dm is developed. So this checks the module
against the provider's own documentation, snapshotted in
``tests/google_provider_docs.json`` by ``python -m scripts.provider_docs``
(its ``source`` names the provider commit): each argument path (through
nested blocks) is documented for its resource type, each required argument
is set, and each reference to another resource's attribute
(``google_x.name.attr``, ``...service_config[0].service``) names a
documented argument or attribute.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

from scripts import provider_docs
from tests.tfmodel import ROOT, TERRAFORM, load

DOCS = json.loads(provider_docs.OUT.read_text())
RESOURCES: dict[str, dict[str, Any]] = DOCS["resources"]
META = {"count", "for_each", "depends_on", "lifecycle", "provider"}
IAM_LOCATORS = {"member", "members", "policy_data"}
"""Shared by an IAM page's member/binding/policy resources: each needs only its own."""

_REF = re.compile(
    r"(?<![\w.])(google_[a-z0-9_]+)\.([a-z0-9_]+)(?:\[[^\]]*\])?((?:\.[a-z_][a-z0-9_]*(?:\[\d+\])?)+)"
)


def _directories() -> list[pathlib.Path]:
    return sorted({p.parent for p in TERRAFORM.rglob("*.tf")})


def _resources() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(directory, type, name, raw body) of every resource under terraform/."""
    for d in _directories():
        for block in load(d).get("resource", []):
            for rtype, by_name in block.items():
                for name, body in by_name.items():
                    yield d.relative_to(ROOT).as_posix(), rtype, name, body


def _is_block(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(b, dict) for b in value)


def argument_paths(body: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the arguments and nested blocks set in a (raw) resource body."""
    for key, value in body.items():
        if key == "__is_block__" or (not prefix and key in META):
            continue
        if key == "dynamic":  # dynamic "name" { for_each = ..., content { ... } }
            for block in value if isinstance(value, list) else [value]:
                for name, spec in block.items():
                    yield prefix + name
                    for content in spec.get("content", []):
                        yield from argument_paths(content, f"{prefix}{name}.")
            continue
        yield prefix + key
        if _is_block(value):
            for block in value:
                yield from argument_paths(block, f"{prefix}{key}.")


def required_paths(rtype: str, body: dict[str, Any]) -> set[str]:
    """Required arguments missing from ``body`` (at the top, and inside each set block)."""
    documented = RESOURCES[rtype]["arguments"]
    present = set(argument_paths(body))
    missing = set()
    for path, kind in documented.items():
        if kind != "Required":
            continue
        if rtype.endswith(("_iam_member", "_iam_binding", "_iam_policy")):
            own = {"_iam_member": "member", "_iam_binding": "members", "_iam_policy": "policy_data"}
            if path in IAM_LOCATORS and not rtype.endswith(
                next(k for k, v in own.items() if v == path)
            ):
                continue
        parent = path.rpartition(".")[0]
        if (not parent or parent in present) and path not in present:
            missing.add(path)
    return missing


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def references(doc: Any) -> Iterator[tuple[str, str]]:
    """(resource type, dotted attribute path) of each ``google_x.name.attr...`` reference."""
    for text in _strings(doc):
        for m in _REF.finditer(text):
            rtype, attrs = m.group(1), m.group(3)
            path = ".".join(re.sub(r"\[\d+\]", "", a) for a in attrs.strip(".").split("."))
            yield rtype, path


# -- the checks ------------------------------------------------------------------------------


def test_snapshot_covers_every_resource_type_used() -> None:
    used = {rtype for _, rtype, _, _ in _resources() if rtype.startswith("google_")}
    missing = sorted(used - set(RESOURCES))
    assert not missing, f"run `python -m scripts.provider_docs PROVIDER_GIT_DIR`: {missing}"
    assert DOCS["source"].startswith("hashicorp/terraform-provider-google@")


@pytest.mark.parametrize("directory", [d.relative_to(ROOT).as_posix() for d in _directories()])
def test_every_argument_is_documented(directory: str) -> None:
    problems = []
    for d, rtype, name, body in _resources():
        if d != directory or not rtype.startswith("google_"):
            continue
        documented = RESOURCES[rtype]["arguments"]
        for path in argument_paths(body):
            if path not in documented:
                problems.append(f"{rtype}.{name}: no argument or block `{path}`")
            elif documented[path] == "Output":
                problems.append(f"{rtype}.{name}: `{path}` is output only")
        for path in sorted(required_paths(rtype, body)):
            problems.append(f"{rtype}.{name}: required `{path}` is not set")
    assert not problems, "\n".join(problems)


def documented_reference(rtype: str, path: str) -> bool:
    """Whether ``google_x.name.<path>`` names a documented argument or attribute."""
    doc = RESOURCES[rtype]
    known = set(doc["arguments"]) | set(doc["attributes"]) | {"id"}
    # A block is followed into its own attribute; past that, a map may be indexed.
    parts = path.split(".")
    nested = len(parts) > 1 and parts[0] in doc["arguments"]
    return (".".join(parts[:2]) if nested else parts[0]) in known


def test_every_reference_names_a_documented_attribute() -> None:
    problems = []
    for d in _directories():
        for rtype, path in references(load(d)):
            # (data sources and other providers' types are not in the snapshot)
            if rtype in RESOURCES and not documented_reference(rtype, path):
                problems.append(f"{d.relative_to(ROOT)}: {rtype}.*.{path} is not documented")
    assert not problems, "\n".join(problems)


# -- the checks catch what they are for --------------------------------------------------------


def test_the_checks_catch_misspellings() -> None:
    body = {
        "name": "f",
        "location": "r",
        "build_config": [{"runtime": "python312", "entrypoint": "dm_api"}],
        "service_config": [{"uri": "x", "secret_volumes": [{"mount_path": "/s"}]}],
        "depends_on": ["${google_project_service.apis}"],
    }
    rtype = "google_cloudfunctions2_function"
    documented = RESOURCES[rtype]["arguments"]
    paths = set(argument_paths(body))
    assert "depends_on" not in paths
    assert {p for p in paths if p not in documented} == {"build_config.entrypoint"}
    assert documented["service_config.uri"] == "Output"
    assert required_paths(rtype, body) == {
        "service_config.secret_volumes.secret",
        "service_config.secret_volumes.project_id",
    }
    assert required_paths(rtype, {"name": "f"}) == {"location"}
    member = {"role": "r", "service": "s"}
    assert required_paths("google_cloud_run_service_iam_member", member) == {"member"}
    refs = set(
        references(
            {"a": '${google_cloudfunctions2_function.fn["dm_api"].service_config[0].service}'}
        )
    )
    assert refs == {("google_cloudfunctions2_function", "service_config.service")}
    dyn = {"dynamic": [{"oidc_token": {"content": [{"audience": "a"}]}}]}
    assert set(argument_paths(dyn)) == {"oidc_token", "oidc_token.audience"}
    fn = "google_cloudfunctions2_function"
    assert documented_reference(fn, "service_config.service")
    assert not documented_reference(fn, "service_config.service_name")
    assert documented_reference("google_service_account", "member")
    assert not documented_reference("google_service_account", "principal")
