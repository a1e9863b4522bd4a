"""`hs-tx modules list|enable|disable|scope`: what is installed, switching a module on or
off, and the paths its runs snapshot.

`list` only reads (no lock, no transaction, no fetch). `enable` and `disable`
rewrite one index.json inside a `config` transaction whose scope is the
module's dir, so the change is journaled, undoable, and rolled back when it is
cut off. The setting survives schema updates: phase 1 keeps `metadata.enabled`
(see modules.merge).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from ..base.errors import EXIT_DAMAGED, EXIT_OK, ModuleDefinitionError, UsageError
from ..base.fsio import durable_write
from ..core.config import Config, require_modules_dir
from ..core.context import Context
from ..core.phase1 import SOURCE_MODULES
from ..core.scope import Planned
from ..core.start import open_transaction, recover_first, snapshot_scope
from ..core.transaction import run_transaction
from ..journal import Kind, LastRunInfo, Origin, Phase, Step
from ..modules.discovery import (
    Listed,
    check_module_name,
    discover_all,
    is_installed,
    load_module,
)
from ..sync.git import fetched_state, open_existing, read_blob

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
    with repo:  # closes GitPython's cat-file processes
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


# --- enable / disable ------------------------------------------------------------------


def set_enabled(ctx: Context, name: str, enabled: bool, wait: bool = False) -> int:
    """`hs-tx modules enable|disable NAME`: set `metadata.enabled` in one transaction.

    Returns 0 when committed or already so (no transaction then), 1 when it
    was rolled back or aborted, 3 when an earlier transaction cannot be
    repaired. Raises UsageError/ModuleDefinitionError (exit 2, nothing
    written) for a bad or unknown name or an unusable index.json, and
    LockedError (exit 75) when another run holds the lock and not `wait`.
    """
    index_file = _index_file(ctx.config, name)  # before the lock: a refusal writes nothing
    word = "enabled" if enabled else "disabled"
    with ctx.lock(wait) as lock:
        if not recover_first(ctx, "starting a new one"):
            return EXIT_DAMAGED
        index = read_index(index_file)  # again: recovery may have put an older one back
        if _metadata(index).get("enabled", True) is enabled:
            ctx.log(f"hs-tx: module {name} is already {word}; nothing to do")
            return EXIT_OK
        tx_id = open_transaction(ctx, lock, Kind.CONFIG)
        ctx.log(f"hs-tx: transaction {tx_id} opened")
        return _run_config(ctx, tx_id, index_file, index, enabled)


def _index_file(config: Config, name: str) -> Path:
    """The index.json of installed module `name`, checked to be rewritable.

    Raises ModuleDefinitionError for a bad name or index.json, UsageError when
    no such module is installed, ConfigError when the modules dir is missing.
    """
    check_module_name(name)
    modules_dir = require_modules_dir(config)
    if not is_installed(modules_dir, name):
        raise UsageError(
            f"module {name!r} is not installed in {modules_dir}",
            "see `hs-tx modules list` for the installed modules",
        )
    index_file = modules_dir / name / "index.json"
    read_index(index_file)
    return index_file


def read_index(index_file: Path) -> dict[str, Any]:
    """The parsed index.json, which must be a regular file holding a `metadata` object.

    Raises ModuleDefinitionError otherwise: rewriting a file hs-tx cannot
    parse would lose what is in it.
    """
    name = index_file.parent.name
    try:
        st = index_file.lstat()
        if not stat.S_ISREG(st.st_mode):
            raise ModuleDefinitionError(
                f"module {name}: {index_file} is not a regular file",
                "replace it with the module's index.json",
            )
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModuleDefinitionError(
            f"module {name}: {index_file} is missing", "every module dir needs an index.json"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModuleDefinitionError(
            f"module {name}: index.json is malformed: {exc}", f"fix {index_file}"
        ) from exc
    if not isinstance(index, dict) or not isinstance(index.get("metadata"), dict):
        raise ModuleDefinitionError(
            f"module {name}: field 'metadata' is missing or not an object", f"fix {index_file}"
        )
    return index


def _run_config(
    ctx: Context, tx_id: int, index_file: Path, index: dict[str, Any], enabled: bool
) -> int:
    """Snapshot the module dir, rewrite its index.json, then commit or roll back."""
    return run_transaction(
        ctx,
        tx_id,
        lambda: snapshot_scope(
            ctx, tx_id, [Planned(index_file.parent, Origin.MODULE, index_file.parent.name)]
        ),
        lambda _plan: _write_enabled(ctx, tx_id, index_file, index, enabled),
    )


def _write_enabled(
    ctx: Context, tx_id: int, index_file: Path, index: dict[str, Any], enabled: bool
) -> None:
    """Set `metadata.enabled` and replace index.json durably, keeping its mode."""
    name = index_file.parent.name
    before = index["metadata"].get("enabled", True)
    detail = {"module": name, "from": before, "to": enabled, "path": str(index_file)}
    with ctx.journal.step(tx_id, Phase.CONFIG, Step.SET_ENABLED, detail):
        index["metadata"]["enabled"] = enabled
        mode = stat.S_IMODE(os.lstat(index_file).st_mode)
        durable_write(index_file, (json.dumps(index, indent=2) + "\n").encode(), mode)
    ctx.log(f"hs-tx: module {name} {'enabled' if enabled else 'disabled'}")


# --- scope ------------------------------------------------------------------------------


def module_scope(ctx: Context, name: str) -> list[dict[str, Any]]:
    """`hs-tx modules scope NAME`: the paths a run snapshots for module `name` and where
    each comes from: its dir (module), index.json's backup_paths, the config's
    `[scope.modules.NAME] paths`, learned from earlier runs, and (added when the
    module backs them up) its StateManager paths. Keys: path, origin, exists.

    Reads only. Raises ModuleDefinitionError / UsageError for a bad or unknown name.
    """
    index_file = _index_file(ctx.config, name)
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
