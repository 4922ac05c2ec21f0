"""The file ``dm run`` takes: quests to ensure and the attempts wanted of each.

JSON or YAML::

    quests:
      - distributor_config_name: local
        parameters: {corpus: data/corpus.txt}       # an object (or a JSON string); default {}
        distributor_parameters: {command: [python3, merge.py]}
        meta: {retry: {failed: 2}, timeouts: {run: 600s}}
        attempts: [1]                                 # default [1]

Field names as in protobuf JSON. Errors name the place in the file.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import yaml

from dmcore import ids
from dmcore.errors import InvalidArgument
from dmcore.ids import AttemptID
from dmcore.proto import dm_pb2


class BadFile(Exception):
    """A user's file cannot be used; the message says where and why."""


def load_document(path: pathlib.Path) -> Any:
    """Parse a JSON or YAML file (``.json`` as JSON, anything else as YAML)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadFile(f"{path}: no such file") from None
    except OSError as e:
        raise BadFile(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise BadFile(f"{path}: not UTF-8 text") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise BadFile(f"{path}: not valid JSON: {e}") from None
    except yaml.YAMLError as e:
        raise BadFile(f"{path}: not valid YAML: {e}") from None


@dataclasses.dataclass
class RunRequest:
    """What a run file asks for."""

    request: dm_pb2.EnsureGraphDataReq
    attempts: list[AttemptID]


def parse_run_file(path: pathlib.Path) -> RunRequest:
    data = load_document(path)
    if not isinstance(data, dict) or not isinstance(data.get("quests"), list):
        raise BadFile(f"{path}: expected an object with a list 'quests'")
    extra = set(data) - {"quests"}
    if extra:
        raise BadFile(f"{path}: unknown top-level field(s): {', '.join(sorted(extra))}")
    if not data["quests"]:
        raise BadFile(f"{path}: quests: empty")
    req = dm_pb2.EnsureGraphDataReq()
    wanted: list[AttemptID] = []
    for i, entry in enumerate(data["quests"]):
        where = f"{path}: quests[{i}]"
        if not isinstance(entry, dict):
            raise BadFile(f"{where}: must be an object")
        q = dict(entry)
        # Convenience of the file format: absent JSON parameters mean {}.
        q.setdefault("parameters", {})
        q.setdefault("distributor_parameters", {})
        attempts = q.pop("attempts", [1])
        if (
            not isinstance(attempts, list)
            or not attempts
            or not all(
                isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= ids.MAX_NUM
                for n in attempts
            )
        ):
            raise BadFile(
                f"{where}.attempts: must be a non-empty list of numbers from 1 to {ids.MAX_NUM}"
            )
        try:
            desc = ids.normalize_desc(q)
        except InvalidArgument as e:
            raise BadFile(f"{where}: {e.message}") from None
        qid = ids.quest_id_of_normalized(desc)
        req.quest.append(desc)
        req.quest_attempt.add(nums=sorted(set(attempts), reverse=True))
        wanted += [AttemptID(qid, n) for n in sorted(set(attempts))]
    return RunRequest(req, list(dict.fromkeys(wanted)))
