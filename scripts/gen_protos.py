"""Regenerate the committed protobuf code (``*_pb2.py`` and ``*_pb2.pyi``).

Uses the protoc bundled with the pinned grpcio-tools, so everyone produces
the same bytes. ``--check`` regenerates into a temporary folder and exits 1
when a committed file differs (the test suite runs that).

    uv run python -m scripts.gen_protos [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIRS = ("dmcore/proto", "distributors")


def proto_files() -> list[str]:
    """Every .proto of the project, as paths relative to the repository root."""
    found: list[str] = []
    for d in PROTO_DIRS:
        found.extend(str(p.relative_to(ROOT)) for p in sorted((ROOT / d).rglob("*.proto")))
    return found


def generate(out: pathlib.Path) -> None:
    """Run protoc over every project proto, writing into ``out``."""
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        *proto_files(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_names(files: list[str]) -> list[str]:
    """The generated files that belong to ``files``."""
    names = []
    for f in files:
        stem = f[: -len(".proto")]
        names += [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        generate(out)
        stale = []
        for name in generated_names(proto_files()):
            fresh, committed = out / name, ROOT / name
            if args.check:
                if not committed.exists() or not filecmp.cmp(fresh, committed, shallow=False):
                    stale.append(name)
            else:
                shutil.copyfile(fresh, committed)
    if stale:
        print("stale generated protobuf code (run `uv run python -m scripts.gen_protos`):")
        print("\n".join(f"  {s}" for s in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
