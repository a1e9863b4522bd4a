"""`hs-tx modules enable|disable NAME [COMPONENT]` and `hs-tx modules branch NAME BRANCH`:
switching a module, one of its components, or the branch of its own app repository.

Each rewrites one index.json inside a `config` transaction whose scope is the
module's dir, so the change is journaled, undoable, and rolled back when it is cut
off. The settings survive schema updates: phase 1 keeps them (see modules.merge).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.errors import EXIT_DAMAGED, EXIT_OK, ModuleDefinitionError, UsageError
from ..base.fsio import durable_write
from ..core.config import Config, require_modules_dir
from ..core.context import Context
from ..core.scope import Planned
from ..core.start import open_transaction, recover_first, snapshot_scope
from ..core.transaction import run_transaction
from ..journal import Kind, Origin, Phase, Step
from ..modules.discovery import check_module_name, is_installed
from ..modules.settings import components, repository
from ..sync.remote import check_branch_name, remote_branches


@dataclass
class Edit:
    """One change of a module's index.json: the step that journals it with `detail`,
    how it is made on the parsed index, and the line said once it is."""

    step: Step
    detail: dict[str, Any]
    apply: Callable[[dict[str, Any]], None]
    said: str


# What an edit plans from the module's index.json as it is: the Edit, or why there is
# nothing to do. Raises UsageError for a change that cannot be made.
Plan = Callable[[dict[str, Any]], Edit | str]


def set_enabled(
    ctx: Context, name: str, enabled: bool, wait: bool = False, component: str | None = None
) -> int:
    """`hs-tx modules enable|disable NAME [COMPONENT]`: set `metadata.enabled`, or the
    `enabled` flag of component `component`, in one transaction.

    Returns 0 when committed or already so (no transaction then), 1 when it was
    rolled back or aborted, 3 when an earlier transaction cannot be repaired.
    Raises UsageError/ModuleDefinitionError (exit 2, nothing written) for a bad or
    unknown module or component or an unusable index.json, and LockedError (exit
    75) when another run holds the lock and not `wait`.
    """
    word = "enabled" if enabled else "disabled"

    def plan(index: dict[str, Any]) -> Edit | str:
        if component is None:
            before = index["metadata"].get("enabled", True)
            if before is enabled:
                return f"module {name} is already {word}"
            return Edit(
                Step.SET_ENABLED,
                {"module": name, "from": before, "to": enabled},
                lambda ix: ix["metadata"].__setitem__("enabled", enabled),
                f"module {name} {word}",
            )
        before = _component(name, index, component).get("enabled", True)
        if before is enabled:
            return f"component {component} of module {name} is already {word}"
        return Edit(
            Step.SET_COMPONENT,
            {"module": name, "component": component, "from": before, "to": enabled},
            lambda ix: _component(name, ix, component).__setitem__("enabled", enabled),
            f"component {component} of module {name} {word}",
        )

    return _edit(ctx, name, wait, plan)


def set_branch(ctx: Context, name: str, branch: str, wait: bool = False) -> int:
    """`hs-tx modules branch NAME BRANCH`: point module `name`'s own app repository
    (`repo.branch`, else `config.repository.branch`) at `branch`, once `git ls-remote`
    shows that branch at the repository's url; in one transaction. A missing
    `default_branch` is set to the branch it had, so the Admin UI can offer it back.

    Returns as `set_enabled`. Raises UsageError (exit 2, nothing written) for a bad
    branch name, a module without a repository of its own, or a branch the
    repository does not have (naming the ones it has), and SourceError when the
    repository cannot be reached.
    """
    if not check_branch_name(branch):
        raise UsageError(
            f"invalid branch name {branch!r}", "a git branch name (see git check-ref-format)"
        )
    url = _repository_url(name, read_index(index_file_of(ctx.config, name)))
    found = remote_branches(url)
    if branch not in found:
        raise UsageError(
            f"the repository {url} of module {name} has no branch {branch!r}",
            f"its branches: {', '.join(found) or 'none'}; nothing was changed",
        )

    def plan(index: dict[str, Any]) -> Edit | str:
        if _repository_url(name, index) != url:
            raise UsageError(
                f"module {name}'s repository changed while its branch was checked",
                "run the command again",
            )
        repo = repository(index)
        assert repo is not None
        before = repo.get("branch")
        if before == branch:
            return f"module {name} is already on branch {branch}"

        def apply(ix: dict[str, Any]) -> None:
            target = repository(ix)
            assert target is not None
            if isinstance(before, str) and before:
                target.setdefault("default_branch", before)
            target["branch"] = branch

        detail = {"module": name, "from": before, "to": branch, "url": url}
        return Edit(Step.SET_BRANCH, detail, apply, f"module {name} set to branch {branch}")

    return _edit(ctx, name, wait, plan)


def index_file_of(config: Config, name: str) -> Path:
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


def _component(module: str, index: dict[str, Any], name: str) -> dict[str, Any]:
    """Component `name` of a parsed index.json. Raises UsageError naming the module's
    components when it has no such one."""
    found = components(index)
    entry = found.get(name) if found is not None else None
    if isinstance(entry, dict):
        return entry
    names = ", ".join(sorted(found or {})) or "none"
    raise UsageError(
        f"module {module} has no component {name!r}",
        f"its components: {names} (hs-tx modules components {module})",
    )


def _repository_url(name: str, index: dict[str, Any]) -> str:
    repo = repository(index)
    url = repo.get("url") if repo else None
    if not isinstance(url, str) or not url:
        raise UsageError(
            f"module {name} has no repository of its own (repo.url or"
            " config.repository.url in its index.json)",
            "only a module that installs an app from its own repository has a branch",
        )
    return url


def _edit(ctx: Context, name: str, wait: bool, plan: Plan) -> int:
    """Lock, recover, then make the edit `plan` makes of module `name`'s index.json in
    a config transaction (none when there is nothing to do)."""
    index_file = index_file_of(ctx.config, name)
    plan(read_index(index_file))  # before the lock: a refusal writes nothing
    with ctx.lock(wait) as lock:
        if not recover_first(ctx, "starting a new one"):
            return EXIT_DAMAGED
        index = read_index(index_file)  # again: recovery may have put an older one back
        edit = plan(index)
        if isinstance(edit, str):
            ctx.log(f"hs-tx: {edit}; nothing to do")
            return EXIT_OK
        tx_id = open_transaction(ctx, lock, Kind.CONFIG)
        ctx.log(f"hs-tx: transaction {tx_id} opened")
        return run_transaction(
            ctx,
            tx_id,
            lambda: snapshot_scope(
                ctx, tx_id, [Planned(index_file.parent, Origin.MODULE, index_file.parent.name)]
            ),
            lambda _plan: _write(ctx, tx_id, index_file, index, edit),
        )


def _write(ctx: Context, tx_id: int, index_file: Path, index: dict[str, Any], edit: Edit) -> None:
    """Make the edit and replace index.json durably, keeping its mode."""
    detail = {**edit.detail, "path": str(index_file)}
    with ctx.journal.step(tx_id, Phase.CONFIG, edit.step, detail):
        edit.apply(index)
        mode = stat.S_IMODE(os.lstat(index_file).st_mode)
        durable_write(index_file, (json.dumps(index, indent=2) + "\n").encode(), mode)
    ctx.log(f"hs-tx: {edit.said}")
