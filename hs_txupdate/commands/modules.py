"""`hs-tx modules list|status|components|scope`: what is installed, each module's state
and settings, and the paths its runs snapshot. These only read (no lock, no
transaction, no fetch); `enable`, `disable` and `branch` are in module_config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..base.errors import EXIT_DAMAGED, EXIT_OK, UsageError
from ..core.config import Config, require_modules_dir
from ..core.context import Context
from ..core.phase1 import SOURCE_MODULES
from ..core.start import recover_first
from ..journal import LastRunInfo, Origin
from ..modules.discovery import Listed, check_module_name, discover_all, load_module
from ..modules.settings import branch_of, component_rows
from ..sync.git import fetched_state, open_existing, read_blob
from .module_config import index_file_of, read_index

# --- list ------------------------------------------------------------------------------


def list_modules(ctx: Context) -> list[dict[str, Any]]:
    """Every installed module, sorted by name, as a JSON-ready dict.

    Keys: name, installed_version, source_version (from the clone as last
    fetched; None without one), enabled (None when unreadable), group,
    last_result ({tx, status, at} of its newest run, or None) and problem
    (why its index.json is unusable, or None). Reads only; raises ConfigError
    when the modules dir is missing.
    """
    listed = discover_all(require_modules_dir(ctx.config))
    source = _source_versions(ctx.config, [item.name for item in listed])
    last = _last_runs(ctx)
    return [_row(item, source.get(item.name), last.get(item.name)) for item in listed]


def _row(item: Listed, source_version: str | None, last: LastRunInfo | None) -> dict[str, Any]:
    meta = _metadata(item.index)
    # Without a metadata object nothing says whether it is enabled; do not guess.
    enabled = meta.get("enabled", True) if meta else None
    group = meta.get("group")
    return {
        "name": item.name,
        "installed_version": _version_of(item.index),
        "source_version": source_version,
        "enabled": enabled if isinstance(enabled, bool) else None,
        "group": group if isinstance(group, str) and group else None,
        "last_result": (
            {"tx": last.tx_id, "status": last.status, "at": last.started_at} if last else None
        ),
        "problem": item.problem,
    }


def _metadata(index: Any) -> dict[str, Any]:
    """The `metadata` object of a parsed index.json, or {} when it has none."""
    meta = index.get("metadata") if isinstance(index, dict) else None
    return meta if isinstance(meta, dict) else {}


def _version_of(index: Any) -> str | None:
    """`metadata.schema_version` as written (a malformed one is shown, not judged)."""
    raw = _metadata(index).get("schema_version")
    return None if raw is None else str(raw)


def _source_versions(config: Config, names: list[str]) -> dict[str, str]:
    """The schema_version of each named module in the source clone as last fetched.

    Empty without [source], without a clone, or when the clone holds another
    url's or branch's history; a module missing from the source is left out.
    Never fetches: `list` must work offline and change nothing.
    """
    if config.source is None:
        return {}
    repo = open_existing(config.state_dir / "source")
    if repo is None:
        return {}
    with repo:  # ends the clone's cat-file process
        state = fetched_state(repo, config.source.url, config.source.branch)
        if state is None:
            return {}
        versions = {}
        for name in names:
            data = read_blob(state, f"{SOURCE_MODULES}/{name}/index.json")
            version = _version_of(_loads(data)) if data is not None else None
            if version is not None:
                versions[name] = version
        return versions


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def _last_runs(ctx: Context) -> dict[str, LastRunInfo]:
    """The newest run of every module; {} without a journal (list must not create one)."""
    if not ctx.config.journal_path.exists():
        return {}
    return ctx.journal.last_module_runs()


# --- status, components -------------------------------------------------------------


def module_status(ctx: Context, name: str | None = None) -> list[dict[str, Any]]:
    """`hs-tx modules status [NAME]`: every installed module (or only `name`), sorted by
    name, with what the Admin UI shows of it, as JSON-ready dicts.

    Keys: name, enabled, version (installed), source_version (the clone as last
    fetched), branch and default_branch (of its own app repository; None without
    one), components ([{name, enabled, description}]), last_run ({tx, status, at,
    kind} of its newest run in the journal, or None), description, group, problem.
    Reads only. Raises ModuleDefinitionError / UsageError for a bad or unknown name.
    """
    if name is not None:
        index_file_of(ctx.config, name)
    listed = [
        item
        for item in discover_all(require_modules_dir(ctx.config))
        if name is None or item.name == name
    ]
    source = _source_versions(ctx.config, [item.name for item in listed])
    last = _last_runs(ctx)
    return [_status(item, source.get(item.name), last.get(item.name)) for item in listed]


def _status(item: Listed, source_version: str | None, last: LastRunInfo | None) -> dict[str, Any]:
    row = _row(item, source_version, last)
    meta = _metadata(item.index)
    branch, default_branch = branch_of(item.index)
    description = meta.get("description")
    return {
        "name": item.name,
        "enabled": row["enabled"],
        "version": row["installed_version"],
        "source_version": source_version,
        "branch": branch,
        "default_branch": default_branch,
        "components": component_rows(item.index),
        "last_run": (
            {"tx": last.tx_id, "status": last.status, "at": last.started_at, "kind": last.kind}
            if last
            else None
        ),
        "description": description if isinstance(description, str) else None,
        "group": row["group"],
        "problem": item.problem,
    }


def module_components(ctx: Context, name: str) -> list[dict[str, Any]]:
    """`hs-tx modules components NAME`: module `name`'s components as {name, enabled,
    description}, in index.json's order (empty when it has none). Reads only.
    Raises ModuleDefinitionError / UsageError for a bad or unknown name."""
    return component_rows(read_index(index_file_of(ctx.config, name)))


# --- scope ------------------------------------------------------------------------------


def module_scope(ctx: Context, name: str) -> list[dict[str, Any]]:
    """`hs-tx modules scope NAME`: the paths a run snapshots for module `name` and where
    each comes from: its dir (module), index.json's backup_paths, the config's
    `[scope.modules.NAME] paths`, learned from earlier runs, and (added when the
    module backs them up) its StateManager paths. Keys: path, origin, exists.

    Reads only. Raises ModuleDefinitionError / UsageError for a bad or unknown name.
    """
    index_file = index_file_of(ctx.config, name)
    module = load_module(index_file.parent)
    rows = [(module.path, Origin.MODULE)]
    rows += [(p, Origin.INDEX) for p in module.backup_paths]
    rows += [(p, Origin.CONFIG) for p in ctx.config.module_paths.get(name, ())]
    if ctx.config.journal_path.exists():
        rows += [(Path(p), Origin.LEARNED) for _m, p, _tx in ctx.journal.footprints(name)]
        rows += [(Path(p), Origin.STATEMANAGER) for p in ctx.journal.backup_paths(name)]
    seen: set[Path] = set()
    out = []
    for path, origin in rows:
        if path not in seen:
            seen.add(path)
            out.append({"path": str(path), "origin": str(origin), "exists": path.exists()})
    return out


def forget(ctx: Context, name: str, path: str, wait: bool = False) -> int:
    """`hs-tx modules scope NAME --forget PATH`: drop a learned path of module `name`.

    Returns 0 (3 when an earlier transaction cannot be repaired first). Raises
    UsageError when `name` has no such learned path, LockedError when another run
    holds the lock and not `wait`.
    """
    check_module_name(name)
    with ctx.lock(wait):
        if not recover_first(ctx, "forgetting"):
            return EXIT_DAMAGED
        if ctx.journal.forget(name, str(Path(os.path.normpath(path)))) == 0:
            raise UsageError(
                f"module {name} has no learned path {path}",
                f"see hs-tx modules scope {name} for its learned paths",
            )
    ctx.log(f"hs-tx: module {name} forgot {path}; a later run may learn it again")
    return EXIT_OK
