"""Snapshot of the google provider's documented arguments, for the terraform tests.

``terraform validate`` cannot run where dm is developed (the provider cannot
be downloaded), so ``tests/test_terraform.py`` checks every argument, block
and attribute the module uses against the provider's own documentation
instead. This reads the documentation pages (``website/docs/r/*.html.markdown``)
of a checkout of hashicorp/terraform-provider-google for the resource types
dm uses and writes their names to ``tests/google_provider_docs.json``::

    python -m scripts.provider_docs PROVIDER_GIT_DIR [COMMIT]

where PROVIDER_GIT_DIR is a clone (a bare one will do). Run it again when
the module starts using a new resource type; the test names the missing one.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
TERRAFORM = ROOT / "terraform"
OUT = ROOT / "tests" / "google_provider_docs.json"

_FIELD = re.compile(r"^\* `([a-z0-9_/]+)` -\s*(.*)$")
_SECTION = re.compile(
    r'^(?:<a name="(nested_[a-z0-9_]+)"></a>)?\s*The `([a-z0-9_]+)` block supports'
)
_LINK = re.compile(r"\(#(nested_[a-z0-9_]+)\)")
_KIND = re.compile(r"\((Required|Optional|Output|Computed)(\)|,| only| if| except)?")


def page_of(rtype: str) -> str:
    """The documentation page of a resource type (IAM member/binding/policy share one)."""
    base = re.sub(r"_iam_(member|binding|policy)$", "_iam", rtype)
    short = base.removeprefix("google_")
    if short in ("project_iam", "project_service", "service_account", "service_account_iam"):
        return f"website/docs/r/google_{short}.html.markdown"
    return f"website/docs/r/{short}.html.markdown"


def _sections(text: str) -> tuple[str, str]:
    """(argument reference, attributes reference) of a page."""
    args = text.split("## Argument Reference", 1)[1]
    args, _, rest = args.partition("## Attributes Reference")
    attrs = re.split(r"\n## ", rest, maxsplit=1)[0]
    return args, attrs


def _fields(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """anchor ("" for the top) -> field -> {"kind", "link"}.

    A nested block's section is ``<a name="nested_X"></a>The `b` block supports:``
    (generated pages) or just ``The `b` block supports:`` (hand-written ones,
    whose fields say "Structure is documented below" without a link): it is
    filed under both ``nested_X`` and ``block:b``.
    """
    out: dict[str, dict[str, dict[str, str]]] = {"": {}}
    section: dict[str, dict[str, str]] = out[""]
    current = None
    for raw in text.splitlines():
        line = raw
        if m := _SECTION.match(line):
            section = {}
            if m.group(1):
                out[m.group(1)] = section
            out.setdefault(f"block:{m.group(2)}", section)
            current = None
            continue
        if m := _FIELD.match(line):
            names = m.group(1).split("/")
            current = {"kind": "", "link": f"block:{names[0]}"}
            for name in names:
                section[name] = current
            line = m.group(2)
        if current is None:
            continue
        if not current["kind"] and (k := _KIND.search(line)):
            kind = "Output" if k.group(1) == "Computed" else k.group(1)
            # "Required only by ...", "Required if ...": not always.
            current["kind"] = "Optional" if kind == "Required" and k.group(2) != ")" else kind
        if link := _LINK.search(line):
            current["link"] = link.group(1)
    return out


def describe(text: str) -> dict[str, Any]:
    """The documented argument paths (dotted through blocks) and exported attributes."""
    args_text, attrs_text = _sections(text)
    fields = _fields(args_text)
    arguments: dict[str, str] = {}

    def walk(anchor: str, prefix: str, seen: frozenset[str]) -> None:
        for name, f in fields.get(anchor, {}).items():
            path = f"{prefix}{name}"
            arguments[path] = f["kind"] or "Optional"
            if f["link"] and f["link"] not in seen:
                walk(f["link"], path + ".", seen | {f["link"]})

    walk("", "", frozenset())
    attributes = sorted(
        m.group(1).split("/")[0] for line in attrs_text.splitlines() if (m := _FIELD.match(line))
    )
    return {"arguments": dict(sorted(arguments.items())), "attributes": attributes}


def used_types() -> set[str]:
    """The google_* resource types declared anywhere under ``terraform/``."""
    declared = re.compile(r'^resource\s+"(google_[a-z0-9_]+)"', re.M)
    return {t for p in TERRAFORM.rglob("*.tf") for t in declared.findall(p.read_text())}


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    git_dir, commit = argv[0], argv[1] if len(argv) == 2 else "HEAD"
    commit = subprocess.run(
        ["git", "-C", git_dir, "rev-parse", commit], capture_output=True, text=True, check=True
    ).stdout.strip()
    resources = {}
    for rtype in sorted(used_types()):
        page = page_of(rtype)
        text = subprocess.run(
            ["git", "-C", git_dir, "show", f"{commit}:{page}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        resources[rtype] = {"page": page, **describe(text)}
    doc = {
        "source": f"hashicorp/terraform-provider-google@{commit}",
        "generated_by": "python -m scripts.provider_docs",
        "resources": resources,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{OUT}: {len(resources)} resource types from {doc['source']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
