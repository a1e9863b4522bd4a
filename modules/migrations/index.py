"""The `migrations` module: one-off system changes, each run exactly once.

index.json lists migrations in the order they must run: {id, description,
has_run}. `main(None)` runs every pending one (has_run false) as
`python src/<id>.py` with a timeout, and after it exits 0 records has_run
true durably, so it never runs again. The first failure stops the module and
fails it: under hs-tx the whole transaction then rolls back, has_run flags
included. `main(["--check"])` and `main(["--version"])` change nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

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

# abspath, not resolve: the module is wherever it was installed, symlinks included
MODULE_DIR = Path(os.path.abspath(__file__)).parent
INDEX = MODULE_DIR / "index.json"
SRC = MODULE_DIR / "src"
DEFAULT_SCRIPT_TIMEOUT_S = 600.0


def main(args: object = None) -> dict[str, Any]:
    """Run pending migrations (args None), or report (`--check`, `--version`).

    Returns the orchestrator's result dict; never raises for a bad definition
    or a failing migration (both give success False and an error).
    """
    try:
        flags = parse_flags(args, ("--check", "--version"))
        index = load_index(INDEX)
        migrations = item_list(index, "migrations")
        timeout_s = script_timeout(index, DEFAULT_SCRIPT_TIMEOUT_S)
    except DefinitionError as exc:
        return failure(f"migrations: {exc}")
    if "--version" in flags:
        return {"success": True, "schema_version": schema_version(index), "module": "migrations"}
    if "--check" in flags:
        return check(index, migrations)
    return run_pending(migrations, timeout_s)


def pending_ids(migrations: list[dict[str, Any]]) -> list[str]:
    """Ids of the migrations not run yet, in list (= run) order."""
    return [m["id"] for m in migrations if not m.get("has_run", False)]


def check(index: dict[str, Any], migrations: list[dict[str, Any]]) -> dict[str, Any]:
    """What a run would do; reads only."""
    pending = pending_ids(migrations)
    return {
        "success": True,
        "pending_migrations": len(pending),
        "total_migrations": len(migrations),
        "schema_version": schema_version(index),
        "pending": pending,
        "missing_scripts": [i for i in pending if not script_for(i).is_file()],
    }


def script_for(migration_id: str) -> Path:
    """The script that carries out `migration_id`."""
    return SRC / f"{migration_id}.py"


def run_pending(migrations: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    """Run the pending migrations in order, recording each success; stop at a failure."""
    pending = pending_ids(migrations)
    counts = {"total_migrations": len(migrations)}
    if not pending:
        log_message("migrations: nothing pending")
        return {"success": True, "migrations_run": [], "pending_migrations": 0, **counts}
    done: list[str] = []
    for migration_id in pending:
        error = run_one(migration_id, timeout_s)
        if error:
            return failure(
                f"migration {migration_id} failed: {error}",
                migrations_run=done,
                pending_migrations=len(pending) - len(done),
                **counts,
            )
        done.append(migration_id)
    log_message(f"migrations: {len(done)} run ({', '.join(done)})")
    return {"success": True, "migrations_run": done, "pending_migrations": 0, **counts}


def run_one(migration_id: str, timeout_s: float) -> str:
    """Run one migration and record it as run; return "" or why it failed."""
    script = script_for(migration_id)
    if not script.is_file():
        if (SRC / f"{migration_id}.sh").exists():
            return f"only src/{migration_id}.sh exists; shell migrations are not run"
        return f"script src/{migration_id}.py is missing"
    log_message(f"migrations: running {migration_id}")
    try:
        result = run_script([sys.executable, str(script)], SRC, timeout_s)
    except OSError as exc:
        return f"cannot start {script}: {exc}"
    if result.error():
        return result.error()
    try:
        mark_has_run(INDEX, "migrations", migration_id)
    except (OSError, ValueError) as exc:
        # it ran but may run again: fail, so a transaction puts its effects back
        return f"it ran, but has_run could not be recorded: {exc}"
    log_message(f"migrations: {migration_id} done")
    return ""
