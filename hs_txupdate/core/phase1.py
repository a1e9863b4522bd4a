"""Phase 1, schema updates: bring module code from the git source onto the system.

Planning reads only the fetched commit and the installed index.json files
(nothing changes); applying stages each new module dir beside the old one and
swaps it in with one atomic exchange, inside the transaction's scope.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import ModuleDefinitionError
from ..base.fsio import durable_write, exchange, fsync_dir
from ..journal import Phase, Step
from ..modules.discovery import Module, check_module_name, module_from_index
from ..modules.merge import merge_local_state
from ..snapshot.base import tx_key
from ..snapshot.entries import STAGE_PREFIX, remove_entry
from ..sync.git import SourceError, SourceState, check_tree, export_tree, read_blob, subdirs
from ..sync.versions import Version, VersionError
from .context import Context

SOURCE_MODULES = "modules"


@dataclass
class SchemaChange:
    """One module phase 1 installs or replaces."""

    name: str
    version_from: str | None  # None: new in the source
    version_to: str
    index: dict[str, Any]  # the incoming index.json with local state merged in
    module: Module  # as it will be once installed


@dataclass
class Phase1Plan:
    """What phase 1 will do, and what it noticed but will not do."""

    state: SourceState
    changes: list[SchemaChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def future(self, installed: dict[str, Module]) -> dict[str, Module]:
        """The modules as they will be once this plan is applied, by name."""
        future = dict(installed)
        future.update((change.name, change.module) for change in self.changes)
        return dict(sorted(future.items()))


def plan(
    state: SourceState,
    modules_dir: Path,
    installed: dict[str, Module],
    allow_downgrade: bool = False,
) -> Phase1Plan:
    """Compare the source's modules with the installed ones. Changes nothing.

    Raises SourceError when the source has no modules/ dir or a module to install
    holds a submodule, BadTreeEntry for a tree entry no checkout could hold, and
    ModuleDefinitionError for a source module without a usable index.json.
    """
    names = subdirs(state, SOURCE_MODULES)
    if names is None:
        raise SourceError(
            f"the source (commit {state.commit[:12]}) has no {SOURCE_MODULES}/ directory",
            "check [source] url and branch: the source must hold modules/<name>/index.json",
        )
    result = Phase1Plan(state)
    for name in names:
        change = _plan_one(state, modules_dir, name, installed.get(name), allow_downgrade, result)
        if change is not None:
            result.changes.append(change)
    for name in sorted(set(installed) - set(names)):
        result.notes.append(f"module {name} is installed but gone from the source; it stays")
    return result


def _plan_one(
    state: SourceState,
    modules_dir: Path,
    name: str,
    current: Module | None,
    allow_downgrade: bool,
    result: Phase1Plan,
) -> SchemaChange | None:
    check_module_name(name)
    incoming = _source_index(state, name)
    raw = incoming.get("metadata", {}).get("schema_version") if isinstance(incoming, dict) else None
    try:
        version_to = Version.parse(raw)
    except VersionError:
        result.notes.append(
            f"source module {name}: schema_version {raw!r} is not a semantic version; not updated"
        )
        return None
    version_from = _installed_version(current, result)
    if current is not None and version_from is None:
        return None
    if version_from is not None:
        if version_to == version_from:
            return None
        if version_to < version_from and not allow_downgrade:
            result.notes.append(
                f"module {name}: source has {version_to}, older than installed {version_from};"
                " not applied (use --allow-downgrade)"
            )
            return None
    check_tree(state, f"{SOURCE_MODULES}/{name}")  # before any change, not mid-install
    index = merge_local_state(current.index, incoming) if current is not None else incoming
    module = module_from_index(name, modules_dir / name, index)
    return SchemaChange(
        name, str(version_from) if version_from else None, str(version_to), index, module
    )


def _source_index(state: SourceState, name: str) -> dict[str, Any]:
    data = read_blob(state, f"{SOURCE_MODULES}/{name}/index.json")
    where = f"source module {name}"
    if data is None:
        raise ModuleDefinitionError(
            f"{where}: {SOURCE_MODULES}/{name}/index.json is missing in the source",
            "every module dir in the source needs an index.json",
        )
    try:
        index = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModuleDefinitionError(f"{where}: index.json is malformed: {exc}", "fix it") from exc
    if not isinstance(index, dict) or not isinstance(index.get("metadata"), dict):
        raise ModuleDefinitionError(f"{where}: field 'metadata' is missing", "fix its index.json")
    return index


def _installed_version(current: Module | None, result: Phase1Plan) -> Version | None:
    if current is None:
        return None
    try:
        return Version.parse(current.schema_version)
    except VersionError:
        result.notes.append(
            f"module {current.name}: installed schema_version {current.schema_version!r}"
            " is not a semantic version; not updated"
        )
        return None


def apply_change(
    state: SourceState, modules_dir: Path, change: SchemaChange, stage_id: str
) -> None:
    """Install or replace one module dir: build it beside, then swap it in atomically.

    `stage_id` names the staging dir (`.hs-tx-stage-<journal-uuid>-<txid>-m-<name>`) so recovery
    can find and remove it.
    """
    live = modules_dir / change.name
    stage = modules_dir / f"{STAGE_PREFIX}{stage_id}"
    if os.path.lexists(stage):
        remove_entry(stage)
    export_tree(state, f"{SOURCE_MODULES}/{change.name}", stage)
    durable_write(stage / "index.json", (json.dumps(change.index, indent=2) + "\n").encode(), 0o644)
    if os.path.lexists(live):
        exchange(stage, live)
        fsync_dir(modules_dir)
        remove_entry(stage)  # now the old version
    else:
        os.rename(stage, live)
    fsync_dir(modules_dir)


def run_phase1(ctx: Context, tx_id: int, schema: Phase1Plan) -> dict[str, str]:
    """Install or replace every module of the plan, each journaled; return the
    versions the replaced modules had, by name."""
    versions_from = {}
    for change in schema.changes:
        detail = {"module": change.name, "from": change.version_from, "to": change.version_to}
        with ctx.journal.step(tx_id, Phase.SCHEMA, Step.REPLACE, detail):
            verb = f"replacing module {change.name} {change.version_from} ->"
            if change.version_from is None:
                verb = f"installing module {change.name}"
            ctx.log(f"hs-tx: {verb} {change.version_to}")
            apply_change(
                schema.state,
                ctx.config.modules_dir,
                change,
                f"{tx_key(ctx.journal.uuid, tx_id)}-m-{change.name}",
            )
        if change.version_from:
            versions_from[change.name] = change.version_from
    return versions_from
