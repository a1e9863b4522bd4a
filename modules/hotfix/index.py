"""The `hotfix` module: targeted emergency fixes, each applied at most once.

index.json lists targets in order: {id, description, version_check, has_run}.
`main(None)` validates every target first, then, for each target not run yet
whose version_check says it applies, runs `bash src/<id>.sh` with a timeout
and after it exits 0 records has_run true durably. A target that does not
apply is skipped and stays pending (it may apply later). The first failing
script fails the module: under hs-tx the whole transaction then rolls back.
`main(["--check"])` and `main(["--version"])` change nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from . import checks
from .support import (
    DefinitionError,
    failure,
    item_list,
    load_index,
    log_message,
    mark_has_run,
    parse_flags,
    run_script,
    schema_version,
    script_timeout,
)

# abspath, not resolve: module_schema looks beside where this module is installed
MODULE_DIR = Path(os.path.abspath(__file__)).parent
MODULES_DIR = MODULE_DIR.parent
INDEX = MODULE_DIR / "index.json"
SRC = MODULE_DIR / "src"
DEFAULT_SCRIPT_TIMEOUT_S = 300.0


def main(args: object = None) -> dict[str, Any]:
    """Apply pending, applicable targets (args None), or report (`--check`, `--version`).

    Returns the orchestrator's result dict; never raises for a bad definition
    or a failing script (both give success False and an error).
    """
    try:
        flags = parse_flags(args, ("--check", "--version"))
        index = load_index(INDEX)
        targets = read_targets(index)
        timeout_s = script_timeout(index, DEFAULT_SCRIPT_TIMEOUT_S)
    except DefinitionError as exc:
        return failure(f"hotfix: {exc}")
    if "--version" in flags:
        return {"success": True, "schema_version": schema_version(index), "module": "hotfix"}
    if "--check" in flags:
        return check(index, targets)
    return apply_pending(targets, timeout_s)


def read_targets(index: dict[str, Any]) -> list[dict[str, Any]]:
    """The target list, each with a validated `version_check`; DefinitionError if malformed."""
    targets = item_list(index, "targets")
    for target in targets:
        target["version_check"] = checks.validate(target.get("version_check"), target["id"])
    return targets


def script_for(target_id: str) -> Path:
    """The script that applies `target_id`."""
    return SRC / f"{target_id}.sh"


def triage(targets: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Split the targets not run yet into (applicable, not applicable) ids, logging why."""
    pending, skipped = [], []
    for target in targets:
        if target.get("has_run", False):
            continue
        ok, why = checks.applies(target["version_check"], MODULES_DIR)
        log_message(f"hotfix: {target['id']}: {why}: {'applies' if ok else 'skipped'}")
        (pending if ok else skipped).append(target["id"])
    return pending, skipped


def check(index: dict[str, Any], targets: list[dict[str, Any]]) -> dict[str, Any]:
    """What a run would do; runs only the read-only version checks."""
    pending, skipped = triage(targets)
    return {
        "success": True,
        "pending_targets": len(pending),
        "total_targets": len(targets),
        "schema_version": schema_version(index),
        "pending": pending,
        "not_applicable": skipped,
        "missing_scripts": [t for t in pending if not script_for(t).is_file()],
    }


def apply_pending(targets: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    """Apply every pending, applicable target in order; stop at the first failure."""
    pending, skipped = triage(targets)
    counts = {"total_targets": len(targets), "targets_skipped": skipped}
    applied: list[str] = []
    for target_id in pending:
        error = apply_one(target_id, timeout_s)
        if error:
            return failure(f"hotfix {target_id} failed: {error}", targets_applied=applied, **counts)
        applied.append(target_id)
    log_message(f"hotfix: {len(applied)} applied, {len(skipped)} not applicable")
    return {"success": True, "targets_applied": applied, **counts}


def apply_one(target_id: str, timeout_s: float) -> str:
    """Run one target's script and record it as run; return "" or why it failed."""
    script = script_for(target_id)
    if not script.is_file():
        return f"script src/{target_id}.sh is missing"
    bash = shutil.which("bash") or "/bin/bash"
    log_message(f"hotfix: applying {target_id}")
    try:
        result = run_script([bash, str(script)], SRC, timeout_s)
    except OSError as exc:
        return f"cannot start {script}: {exc}"
    if result.error():
        return result.error()
    try:
        mark_has_run(INDEX, "targets", target_id)
    except (OSError, ValueError) as exc:
        # applied but may run again: fail, so a transaction puts its effects back
        return f"it ran, but has_run could not be recorded: {exc}"
    log_message(f"hotfix: {target_id} applied")
    return ""
