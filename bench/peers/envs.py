"""The peers' own environments under ``.bench/`` (never dm's), made with uv.

Each is a virtual environment ``.bench/<name>`` on this Python version with
the pinned requirements of ``bench/peers/requirements/<name>.txt``; it is
made again only when that file changed (its text is kept in the
environment as a stamp).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOME = ROOT / ".bench"
REQUIREMENTS = pathlib.Path(__file__).resolve().parent / "requirements"
STAMP = ".requirements"


class EnvError(RuntimeError):
    """An environment could not be made."""


def uv() -> list[str]:
    """The uv command (the one on PATH, else ``python -m uv``)."""
    found = os.environ.get("UV") or shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def python(name: str) -> pathlib.Path:
    return HOME / name / "bin" / "python"


def ensure(name: str, *, log: pathlib.Path) -> pathlib.Path:
    """The Python of environment ``name``, made or updated as needed; its output goes to ``log``."""
    wanted = (REQUIREMENTS / f"{name}.txt").read_text()
    where = HOME / name
    stamp = where / STAMP
    if python(name).exists() and stamp.exists() and stamp.read_text() == wanted:
        return python(name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        for argv in (
            [*uv(), "venv", "--clear", "--python", version, str(where)],
            [
                *uv(),
                "pip",
                "install",
                "--python",
                str(python(name)),
                "-r",
                str(REQUIREMENTS / f"{name}.txt"),
            ],
        ):
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode:
                raise EnvError(f"making .bench/{name} failed: {' '.join(argv)} (see {log})")
    stamp.write_text(wanted)
    return python(name)


def version_of(py: pathlib.Path, package: str) -> str:
    """The installed version of ``package`` in the environment of ``py``."""
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "?"
