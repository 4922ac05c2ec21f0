"""The terraform of ``terraform/`` as data, for tests that cross-check it against the code.

``terraform validate/plan`` cannot run here (the google provider cannot be
downloaded), so the tests read the configuration with python-hcl2 and
evaluate the small expression language the module uses themselves:
references (``var.``, ``local.``, ``each.``, ``count.``, resources and their
computed attributes), string templates, ``[for ...]`` / ``{for ...}`` (with
``if``), object literals,
``a ? b : c``, ``==`` / ``!=`` / ``<=`` / ``>=`` / ``<`` / ``>``, ``&&`` / ``||`` /
``!``, ``fn(...)[n].attr``, and a few functions (``join``, ``values``, ``keys``,
``tostring``, ``toset``, ``concat``, ``coalesce``, ``filesha256``, ``length``,
``merge``, ``jsonencode``, ``jsondecode``, ``split``, ``setintersection``,
``distinct``, ``alltrue``, ``can``, ``regex``). Anything else raises
:class:`Unsupported`, so a test fails loudly rather than guessing.

Computed attributes are modelled after the provider's documented formats
(e.g. a topic's ``id`` is ``projects/P/topics/NAME``, a service account's
``email`` is ``ID@P.iam.gserviceaccount.com``); ``data.google_project.*.number``
is :data:`PROJECT_NUMBER` (or the model's ``project_number``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import hcl2

ROOT = pathlib.Path(__file__).resolve().parent.parent
TERRAFORM = ROOT / "terraform"
MODULE = TERRAFORM / "modules" / "dm"
EXAMPLE = TERRAFORM / "examples" / "basic"
PROJECT_NUMBER = "123456789012"

_OPTS = hcl2.SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)


_META = ("depends_on", "for_each", "count", "lifecycle", "provider")


class Unsupported(Exception):
    """An expression the test evaluator does not know."""


def load(directory: pathlib.Path) -> dict[str, list[Any]]:
    """Every top-level block of the ``*.tf`` files in ``directory``, merged by kind."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as f:
            doc = hcl2.load(f, serialization_options=_OPTS)
        for kind, blocks in doc.items():
            merged.setdefault(kind, []).extend(blocks)
    return merged


@dataclasses.dataclass(frozen=True)
class Resource:
    type: str
    name: str
    body: dict[str, Any]

    @property
    def address(self) -> str:
        return f"{self.type}.{self.name}"


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` where it is outside brackets and strings."""
    parts: list[str] = []
    depth, i, start, quote = 0, 0, 0, False
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                quote = False
        elif c == '"':
            quote = True
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _template_parts(text: str) -> Iterator[tuple[bool, str]]:
    """(is_expression, text) pieces of a string with ``${...}`` interpolations."""
    i = 0
    while i < len(text):
        j = text.find("${", i)
        if j < 0:
            yield False, text[i:]
            return
        if j > i:
            yield False, text[i:j]
        depth, k, quote = 0, j + 2, False
        while k < len(text):
            c = text[k]
            if quote:
                if c == "\\":
                    k += 1
                elif c == '"':
                    quote = False
            elif c == '"':
                quote = True
            elif c == "{":
                depth += 1
            elif c == "}":
                if depth == 0:
                    break
                depth -= 1
            k += 1
        yield True, text[j + 2 : k]
        i = k + 1


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    " == ": lambda a, b: a == b,
    " != ": lambda a, b: a != b,
    " <= ": lambda a, b: a <= b,
    " >= ": lambda a, b: a >= b,
    " < ": lambda a, b: a < b,
    " > ": lambda a, b: a > b,
}
_CALL_THEN = re.compile(r"^([a-z0-9_]+\(.*\))((?:\.[A-Za-z_]\w*|\[\d+\])+)$", re.S)
_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+|\[[^\]]+\])*$")
_CALL = re.compile(r"^([a-z0-9_]+)\((.*)\)$", re.S)
_FOR = re.compile(r"^for\s+(\w+)(?:\s*,\s*(\w+))?\s+in\s+(.+)$", re.S)


class Model:
    """One terraform module (or root) with variable values, evaluated on demand."""

    def __init__(
        self,
        directory: pathlib.Path,
        variables: Mapping[str, Any],
        *,
        project_number: str = PROJECT_NUMBER,
    ) -> None:
        self.directory = directory
        self.project_number = project_number
        self.blocks = load(directory)
        self.variables: dict[str, Any] = {}
        for block in self.blocks.get("variable", []):
            for name, spec in block.items():
                self.variables[name] = spec.get("default")
        unknown = set(variables) - set(self.variables)
        if unknown:
            raise KeyError(f"no such variables: {sorted(unknown)}")
        self.variables.update(variables)
        for block in self.blocks.get("variable", []):
            for name, spec in block.items():
                if "type" in spec and self.variables[name] is not None:
                    self.variables[name] = self.convert(spec["type"], self.variables[name])
        self.locals: dict[str, Any] = {}
        for block in self.blocks.get("locals", []):
            self.locals.update(block)
        self.resources: dict[str, Resource] = {}
        for block in self.blocks.get("resource", []):
            for rtype, by_name in block.items():
                for name, body in by_name.items():
                    self.resources[f"{rtype}.{name}"] = Resource(rtype, name, body)

    def convert(self, type_expr: str, value: Any) -> Any:
        """``value`` as terraform converts it to ``type_expr``: an object's missing
        ``optional(...)`` attributes are set (null, or their default); a missing
        required one raises. Primitive types are taken as they are."""
        t = type_expr.strip()
        if t.startswith("${") and t.endswith("}"):
            t = t[2:-1].strip()
        if value is None:
            return None
        outer, _, inner = t.partition("(")
        inner = inner[:-1] if inner.endswith(")") else inner
        if outer in ("map", "list", "set"):
            if isinstance(value, dict):
                return {k: self.convert(inner, v) for k, v in value.items()}
            return [self.convert(inner, v) for v in value]
        if outer == "object":
            attrs = {}
            for item in _split_top(inner.strip()[1:-1].strip(), ","):
                if item:
                    key, attr_type = _split_top(item, " = ")
                    attrs[key.strip('"')] = attr_type
            unknown = set(value) - set(attrs)
            if unknown:
                raise KeyError(f"no such attributes: {sorted(unknown)}")
            out = {}
            for key, attr_type in attrs.items():
                if key in value:
                    out[key] = self.convert(attr_type, value[key])
                elif attr_type.startswith("optional("):
                    args = _split_top(attr_type[len("optional(") : -1], ",")
                    out[key] = self.expr(args[1], {}) if len(args) > 1 else None
                else:
                    raise KeyError(f"attribute {key!r} is required")
            return out
        if outer == "optional":
            return self.convert(_split_top(inner, ",")[0], value)
        return value

    # -- queries -------------------------------------------------------------------------

    def of_type(self, rtype: str) -> list[Resource]:
        return [r for r in self.resources.values() if r.type == rtype]

    def resource(self, address: str) -> Resource:
        return self.resources[address]

    def instances(self, res: Resource) -> list[dict[str, Any]]:
        """The evaluation scopes of a resource's instances (``for_each`` / ``count``)."""
        if "for_each" in res.body:
            items = self.eval(res.body["for_each"])
            pairs = items.items() if isinstance(items, dict) else ((v, v) for v in items)
            return [{"each": {"key": k, "value": v}} for k, v in pairs]
        if "count" in res.body:
            return [{"count": {"index": i}} for i in range(int(self.eval(res.body["count"])))]
        return [{}]

    def body(self, res: Resource, scope: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A resource instance's arguments, evaluated (meta-arguments left out)."""
        args = {k: v for k, v in res.body.items() if k not in _META}
        out: dict[str, Any] = self.eval(args, scope)
        return out

    def attr(self, res: Resource, path: str, scope: Mapping[str, Any] | None = None) -> Any:
        """A (dotted, ``block.0.attr``) attribute of a resource body, evaluated."""
        value: Any = res.body
        for part in path.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        return self.eval(value, scope)

    # -- evaluation ----------------------------------------------------------------------

    def eval(self, value: Any, scope: Mapping[str, Any] | None = None) -> Any:
        scope = dict(scope or {})
        if isinstance(value, dict):
            return {k: self.eval(v, scope) for k, v in value.items() if k != "__is_block__"}
        if isinstance(value, list):
            return [self.eval(v, scope) for v in value]
        if not isinstance(value, str):
            return value
        parts = list(_template_parts(value))
        if len(parts) == 1 and parts[0][0]:
            return self.expr(parts[0][1], scope)
        out = []
        for is_expr, text in parts:
            out.append(_str(self.expr(text, scope)) if is_expr else text)
        return "".join(out)

    def expr(self, text: str, scope: Mapping[str, Any]) -> Any:
        text = text.strip()
        if text.startswith("(") and _one_call("f" + text):  # (a == b)
            return self.expr(text[1:-1], scope)
        if text.startswith('"') and text.endswith('"'):
            return self.eval(text[1:-1].replace('\\"', '"'), scope)
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return float(text) if "." in text else int(text)
        if text in ("true", "false"):
            return text == "true"
        if text == "null":
            return None
        if len(cond := _split_top(text, " ? ")) == 2:
            yes, no = _split_top(cond[1], " : ")
            return self.expr(yes if self.expr(cond[0], scope) else no, scope)
        if len(sides := _split_top(text, " || ")) > 1:
            return any(self.expr(side, scope) for side in sides)
        if len(sides := _split_top(text, " && ")) > 1:
            return all(self.expr(side, scope) for side in sides)
        for op, compare in _COMPARE.items():
            if len(sides := _split_top(text, op)) == 2:
                return compare(self.expr(sides[0], scope), self.expr(sides[1], scope))
        if text.startswith("!"):
            return not self.expr(text[1:], scope)
        if text[:1] in "[{" and _FOR.match(text[1:-1].strip()):
            return self.for_expr(text, scope)
        if text.startswith("[") and text.endswith("]"):
            inner = text[1:-1].strip()
            return [self.expr(p, scope) for p in _split_top(inner, ",") if p] if inner else []
        if text.startswith("{") and text.endswith("}"):  # an object literal
            obj = {}
            for item in _split_top(text[1:-1].strip(), ","):
                if item:
                    key, value = _split_top(item, " = ")
                    obj[key.strip('"')] = self.expr(value, scope)
            return obj
        if (m := _CALL_THEN.match(text)) and _one_call(m.group(1)):  # fn(...)[n].attr
            parts = re.findall(r"[A-Za-z_]\w*|\d+", m.group(2))
            return _walk(self.expr(m.group(1), scope), parts)
        if (m := _CALL.match(text)) and _one_call(text):
            args = [a for a in _split_top(m.group(2), ",") if a]
            if m.group(1) == "can":  # whether its argument evaluates without an error
                try:
                    self.expr(args[0], scope)
                except (ValueError, KeyError, IndexError, TypeError):
                    return False
                return True
            return self.call(m.group(1), [self.expr(a, scope) for a in args])
        if _REF.match(text):
            return self.ref(text, scope)
        raise Unsupported(f"expression {text!r}")

    def for_expr(self, text: str, scope: Mapping[str, Any]) -> Any:
        """``[for a[, b] in C : body [if cond]]`` or ``{for a[, b] in C : k => v [if cond]}``."""
        m = _FOR.match(text[1:-1].strip())
        assert m is not None
        first, second, rest = m.groups()
        coll, body = _split_top(rest, " : ")
        body, *cond = _split_top(body, " if ")
        items = self.expr(coll, scope)
        pairs = list(items.items()) if isinstance(items, dict) else list(enumerate(items))
        scopes = [
            {**scope, first: k, second: v} if second else {**scope, first: v} for k, v in pairs
        ]
        scopes = [s for s in scopes if not cond or self.expr(cond[0], s)]
        if text.startswith("["):
            return [self.expr(body, s) for s in scopes]
        key, value = _split_top(body, " => ")
        return {self.expr(key, s): self.expr(value, s) for s in scopes}

    def call(self, fn: str, args: list[Any]) -> Any:
        if fn == "join":
            return args[0].join(_str(a) for a in args[1])
        if fn == "values":
            return list(args[0].values())
        if fn == "keys":
            return list(args[0].keys())
        if fn == "tostring":
            return _str(args[0])
        if fn == "toset":
            return list(dict.fromkeys(args[0]))
        if fn == "concat":
            return [x for a in args for x in a]
        if fn == "coalesce":
            return next(a for a in args if a not in (None, ""))
        if fn == "filesha256":
            return hashlib.sha256(pathlib.Path(args[0]).read_bytes()).hexdigest()
        if fn == "length":
            return len(args[0])
        if fn == "merge":
            return {k: v for a in args for k, v in a.items()}
        if fn == "jsonencode":
            return json.dumps(args[0], separators=(",", ":"), sort_keys=True)
        if fn == "jsondecode":
            return json.loads(args[0])
        if fn == "split":
            return args[1].split(args[0])
        if fn == "setintersection":
            return [x for x in args[0] if all(x in a for a in args[1:])]
        if fn == "distinct":
            return list(dict.fromkeys(args[0]))
        if fn == "alltrue":
            return all(args[0])
        if fn == "regex":
            m = re.search(args[0], args[1])
            if m is None:
                raise ValueError(f"regex {args[0]!r} does not match {args[1]!r}")
            return list(m.groups()) if m.groups() else m.group(0)
        raise Unsupported(f"function {fn}()")

    def ref(self, text: str, scope: Mapping[str, Any]) -> Any:
        parts: list[Any] = re.findall(r"[A-Za-z0-9_-]+|\[[^\]]+\]", text)
        # An index is an expression: fn["dm_tasks"], tasks[count.index].
        parts = [self.expr(p[1:-1], scope) if p.startswith("[") else p for p in parts]
        head, rest = parts[0], parts[1:]
        if head in scope:
            return _walk(scope[head], rest)
        if head == "var":
            return _walk(self.variables[rest[0]], rest[1:])
        if head == "local":
            return _walk(self.eval(self.locals[rest[0]]), rest[1:])
        if head == "path" and rest == ["module"]:
            return str(self.directory)
        if head == "data" and rest[:3] == ["google_project", "this", "number"]:
            return self.project_number
        address = f"{head}.{rest[0]}"
        if address in self.resources:
            return _walk(self.computed(self.resources[address]), rest[1:])
        raise Unsupported(f"reference {text!r}")

    def computed(self, res: Resource) -> Any:
        """A resource as its references see it: one object, or a list/map of instances."""
        scopes = self.instances(res)
        objects = [self._object(res, s) for s in scopes]
        if "for_each" in res.body:
            return {s["each"]["key"]: o for s, o in zip(scopes, objects, strict=True)}
        if "count" in res.body:
            return objects
        return objects[0]

    def _object(self, res: Resource, scope: Mapping[str, Any]) -> dict[str, Any]:
        obj = self.body(res, scope)
        project = obj.get("project", self.variables.get("project"))
        if res.type == "google_service_account":
            email = f"{obj['account_id']}@{project}.iam.gserviceaccount.com"
            obj |= {
                "email": email,
                "member": f"serviceAccount:{email}",
                "name": f"projects/{project}/serviceAccounts/{email}",
                "id": f"projects/{project}/serviceAccounts/{email}",
            }
        elif res.type == "google_pubsub_topic":
            obj["id"] = f"projects/{project}/topics/{obj['name']}"
        elif res.type == "google_pubsub_subscription":
            obj["id"] = f"projects/{project}/subscriptions/{obj['name']}"
        elif res.type == "google_cloud_tasks_queue":
            obj["id"] = f"projects/{project}/locations/{obj['location']}/queues/{obj['name']}"
        elif res.type == "google_secret_manager_secret":
            obj["id"] = obj["name"] = f"projects/{project}/secrets/{obj['secret_id']}"
        elif res.type == "google_cloudfunctions2_function":
            obj["service_config"][0]["service"] = obj["name"]
        elif res.type == "google_firestore_database":
            obj["id"] = f"projects/{project}/databases/{obj['name']}"
        elif res.type == "google_storage_bucket":
            obj["id"] = obj["name"]
        elif res.type == "random_password":
            obj["result"] = "r" * int(obj["length"])
        return obj


def _one_call(text: str) -> bool:
    """Whether ``text`` (``fn(...)``) is one call: its first ``(`` closes at the end."""
    depth, quote = 0, False
    for i, c in enumerate(text):
        if quote:
            quote = c != '"' or text[i - 1] == "\\"
        elif c == '"':
            quote = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i == len(text) - 1
    return False


def _walk(value: Any, parts: list[Any]) -> Any:
    for part in parts:
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
