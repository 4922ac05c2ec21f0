"""What a job process imports: only what a job needs.

Every ``local`` execution is a fresh interpreter (the job, then its
supervisor's report), so each module it imports is paid again per execution.
Checked in a fresh interpreter through ``sys.modules``: deterministic, no timing.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

CLIENT_LIBRARIES = ("google.cloud.tasks_v2", "google.cloud.run_v2", "google.auth", "grpc")


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def loaded(modules: set[str], *prefixes: str) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_the_job_sdk_does_not_import_the_engine() -> None:
    mods = modules_after("import dmcore.job")
    assert "dmcore.job" in mods
    assert loaded(mods, "dmcore.engine", "dmcore.service", "dmcore.client") == []
    assert loaded(mods, "dmcore.runtime", "dmcore.store", *CLIENT_LIBRARIES) == []


def test_a_job_script_of_the_example_does_not_import_the_engine() -> None:
    mods = modules_after(
        "import importlib.util\n"
        "spec = importlib.util.spec_from_file_location('count', 'examples/wordcount/count.py')\n"
        "assert spec is not None and spec.loader is not None\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))"
    )
    assert "dmcore.job" in mods
    assert loaded(mods, "dmcore.engine", "dmcore.service") == []


def test_loading_the_registry_imports_no_distributor_implementation(
    tmp_path: pathlib.Path,
) -> None:
    """What an embedded job (and its supervisor's report) loads: the registry of the
    home, with every built-in kind, imports their config messages only."""
    mods = modules_after(
        "from dmcore.runtime.embedded import home_registry\n"
        f"registry = home_registry({str(tmp_path)!r})\n"
        "assert {'local', 'http', 'cloud_run_jobs', 'swarming_v1'} <= set(registry.kinds)"
    )
    assert "distributors.http.config_pb2" in mods
    implementations = [f"distributors.{k}.distributor" for k in ("http", "cloud_run_jobs")]
    implementations += ["distributors.swarming_v1.distributor", "distributors.local.distributor"]
    assert loaded(mods, *implementations, *CLIENT_LIBRARIES) == []


def test_a_deferred_kind_is_imported_when_used() -> None:
    """Its config check and its factory still run: the implementation is imported then."""
    from dmcore.errors import InvalidArgument
    from dmcore.runtime.embedded import build_registry

    with pytest.raises(InvalidArgument, match=r"distributor_configs\.h\.http: queue: expected"):
        build_registry({"distributor_configs": {"h": {"http": {"url": "http://127.0.0.1:1/"}}}})
    mods = modules_after(
        "from dmcore.runtime.embedded import build_registry\n"
        "http = {'url': 'http://127.0.0.1:1/', 'queue': 'projects/p/locations/l/queues/q'}\n"
        "registry = build_registry({'distributor_configs': {'h': {'http': http}}})\n"
        "d, _ = registry.build_named('h')\n"
        "assert type(d).__name__ == 'HttpDistributor', d"
    )
    assert "distributors.http.distributor" in mods


def test_the_supervisor_starts_on_the_standard_library() -> None:
    """``run`` waits while the supervisor starts: it imports no dm and no protobuf."""
    mods = modules_after("import distributors.local.supervise")
    assert loaded(mods, "google.protobuf", "dmcore.engine", "dmcore.store") == []
