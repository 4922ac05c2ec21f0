"""The house rules on imports, checked on the source (DESIGN.md §2).

* No import circles inside ``dmcore``, counting imports inside functions too
  (a lazy import hides a circle from Python, not from the reader); only
  ``if TYPE_CHECKING:`` imports are left out.
* ``dmcore`` never imports ``distributors`` or ``functions``.
* Google Cloud client libraries only inside their adapters.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DMCORE = ROOT / "dmcore"

GOOGLE_CLIENT_ADAPTERS = {
    "dmcore.store.firestore": "google.cloud.firestore",
    "dmcore.queue.cloudtasks": "google.cloud.tasks",
    # The local Cloud Tasks stand-in (dm dev, tests) serves the same API with its types.
    "dmcore.queue.cloudtasks_standin": "google.cloud.tasks",
    "dmcore.notify.pubsub": "google.cloud.pubsub",
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def dmcore_modules() -> dict[str, pathlib.Path]:
    return {
        module_name(p): p
        for p in DMCORE.rglob("*.py")
        if not p.name.endswith("_pb2.py") and "vendor" not in p.parts
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(path: pathlib.Path, name: str) -> set[str]:
    """Every module ``path`` imports at run time, as dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for stmt in node.orelse:
                visit(stmt)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = dmcore_modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        # "from dmcore.engine import docs" is an edge to the module docs, not to
        # the package: keep only names that are modules, else the nearest module.
        edges = set()
        for imp in imported_names(path, name):
            if imp in mods:
                edges.add(imp)
            elif imp.rpartition(".")[0] in mods and not any(m.startswith(imp + ".") for m in mods):
                edges.add(imp.rpartition(".")[0])
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):
                continue  # a package importing its own submodules (its __init__)
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)) is not None:
            return cycle
    return None


def test_dmcore_has_no_import_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_dmcore_imports_neither_distributors_nor_functions() -> None:
    for name, path in dmcore_modules().items():
        bad = {
            i
            for i in imported_names(path, name)
            if i.split(".")[0] in ("distributors", "functions")
        }
        assert not bad, f"{name} imports {sorted(bad)}"


def test_google_cloud_clients_only_in_their_adapters() -> None:
    for name, path in dmcore_modules().items():
        # "from google.cloud import x" names both google.cloud and google.cloud.x
        clients = {i for i in imported_names(path, name) if i.startswith("google.cloud.")}
        allowed = GOOGLE_CLIENT_ADAPTERS.get(name)
        bad = {c for c in clients if allowed is None or not c.startswith(allowed)}
        assert not bad, f"{name} imports Google Cloud clients outside its adapter: {sorted(bad)}"
