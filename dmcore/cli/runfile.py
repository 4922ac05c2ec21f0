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
import pathlib
from collections.abc import Callable

from dmcore import fingerprint as dmfingerprint
from dmcore import ids
from dmcore.errors import InvalidArgument
from dmcore.ids import AttemptID
from dmcore.proto import dm_pb2
from dmcore.runtime.files import BadFile, load_document


@dataclasses.dataclass
class RunRequest:
    """What a run file asks for."""

    request: dm_pb2.EnsureGraphDataReq
    attempts: list[AttemptID]
    warnings: list[str] = dataclasses.field(default_factory=list)
    """Things that are allowed but likely a mistake (an ``inputs`` glob matching nothing)."""


def parse_run_file(
    path: pathlib.Path, fingerprint: Callable[[str], bool] | None = None
) -> RunRequest:
    """Read a run file. ``fingerprint``: whether quests of a distributor config
    (by name) get the fingerprint of the files they run (:mod:`dmcore.fingerprint`)."""
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
    warnings: list[str] = []
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
        name = q.get("distributor_config_name")
        if fingerprint is not None and isinstance(name, str) and fingerprint(name):
            try:
                q = dmfingerprint.add(q)
                params = q["distributor_parameters"]
                missing = dmfingerprint.unmatched(params) if isinstance(params, dict) else []
            except (OSError, ValueError) as e:
                raise BadFile(f"{where}: cannot fingerprint what it runs: {e}") from None
            warnings += [
                f"{where}: inputs {p!r} matches no file (inputs are read when the run "
                "starts: list files that exist then, not files a step writes)"
                for p in missing
            ]
        try:
            desc = ids.normalize_desc(q)
        except InvalidArgument as e:
            raise BadFile(f"{where}: {e.message}") from None
        qid = ids.quest_id_of_normalized(desc)
        req.quest.append(desc)
        req.quest_attempt.add(nums=sorted(set(attempts), reverse=True))
        wanted += [AttemptID(qid, n) for n in sorted(set(attempts))]
    return RunRequest(req, list(dict.fromkeys(wanted)), warnings)
