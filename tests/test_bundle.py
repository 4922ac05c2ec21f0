"""The deployable bundle (``make bundle``) works on its own, as the Google buildpack installs it.

The zip is unpacked into a temporary folder, its ``requirements.txt`` is
installed into a fresh virtual environment (from PyPI, hashes checked; the
project itself is NOT installed, as on Cloud Functions), and a script run
there with the unpacked folder as its working directory imports ``main``,
builds the four functions with functions-framework and resolves every
built-in distributor kind (``distributors.BUILTIN``, so a new built-in
distributor is covered without touching this test) with no
``dm.distributors`` entry point in sight.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib
import zipfile

import pytest

import distributors
from scripts import bundle

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGETS = ("dm_api", "dm_notify", "dm_tasks", "dm_sweep")

# Run inside the bundle's own venv: stdlib + what requirements.txt installed + the bundle.
PROBE = r"""
import importlib.metadata, json, os, sys
import functions_framework
import main
import distributors
from dmcore.runtime.embedded import build_registry

apps = {t: functions_framework.create_app(t, "main.py") for t in %(targets)r}
registry = build_registry({"distributor_configs": {}})
print(json.dumps({
    "sys_path_has_checkout": any(p.startswith(%(root)r) for p in sys.path),
    "entry_points": [ep.name for ep in importlib.metadata.entry_points(group="dm.distributors")],
    "dm_installed": [d.metadata["Name"] for d in importlib.metadata.distributions()
                     if d.metadata["Name"] == "dm"],
    "builtin": sorted(distributors.BUILTIN),
    "kinds": sorted(registry.kinds),
    "config_types": {k: v.config_type.DESCRIPTOR.full_name for k, v in registry.kinds.items()},
    "apps": sorted(apps),
    "main_file": main.__file__,
}))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return bundle.build(tmp_path_factory.mktemp("bundle") / "functions.zip")


def test_bundle_layout_and_pins(built: pathlib.Path) -> None:
    with zipfile.ZipFile(built) as zf:
        names = zf.namelist()
        main_py = zf.read("main.py")
        reqs = zf.read("requirements.txt").decode()
    assert main_py == (ROOT / "functions" / "main.py").read_bytes()
    for pkg in bundle.PACKAGES:
        assert f"{pkg}/__init__.py" in names
    for target in TARGETS:
        assert f"functions/{target}.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.split("/")[0] in ("tests", "bench", "scripts")]

    # Every requirement pinned exactly, hashed, at the version uv.lock holds.
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^ ;\\\n]+)", reqs, re.M))
    assert pins, reqs[:500]
    assert all(locked.get(name) == ver for name, ver in pins.items()), {
        n: (v, locked.get(n)) for n, v in pins.items() if locked.get(n) != v
    }
    requirement_lines = [ln for ln in reqs.splitlines() if ln and not ln.startswith((" ", "#"))]
    assert all("==" in ln for ln in requirement_lines), requirement_lines
    assert reqs.count("--hash=sha256:") >= len(pins)
    assert "dm==" not in reqs  # the project is not installed; its packages are in the zip
    for dep in ("functions-framework", "google-cloud-firestore", "protobuf"):
        assert dep in pins


def test_bundle_is_reproducible(built: pathlib.Path, tmp_path: pathlib.Path) -> None:
    again = bundle.build(tmp_path / "again.zip")
    assert again.read_bytes() == built.read_bytes()


def test_bundle_runs_in_a_fresh_venv(built: pathlib.Path, tmp_path: pathlib.Path) -> None:
    src = tmp_path / "src"
    with zipfile.ZipFile(built) as zf:
        zf.extractall(src)
    venv = tmp_path / "venv"
    uv = bundle._uv()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    subprocess.run(
        [*uv, "venv", "--quiet", "--no-config", "--python", sys.executable, str(venv)],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    python = venv / "bin" / "python"
    install = ["pip", "install", "--quiet", "--no-config", "--python", str(python)]
    subprocess.run(
        [*uv, *install, "--require-hashes", "-r", str(src / "requirements.txt")],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    probe = PROBE % {"targets": TARGETS, "root": str(ROOT)}
    run_env = {k: v for k, v in env.items() if not k.startswith(("DM_", "K_"))}
    run_env["DM_BACKEND"] = "gcp"  # as deployed (the backend itself is built at first use)
    out = subprocess.run(
        [str(python), "-c", probe],
        check=False,
        env=run_env,
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["sys_path_has_checkout"]
    assert got["main_file"] == str(src / "main.py")
    assert got["entry_points"] == [] and got["dm_installed"] == []
    assert got["builtin"] == sorted(distributors.BUILTIN)
    assert set(distributors.BUILTIN) <= set(got["kinds"]), got
    assert all(got["config_types"][k] for k in distributors.BUILTIN)
    assert got["apps"] == sorted(TARGETS)
