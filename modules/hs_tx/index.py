"""The `hs_tx` module: installs hs-tx's own systemd units and keeps them current.

`main(None)` writes every unit in `configuration.units` whose installed copy
in `unit_dir` is missing or differs from the module's `units/<name>`, runs
`reload_command` once when it wrote any, and `enable_command` for each unit
in `enable` that it installed fresh (a unit the operator disabled stays
disabled). A failing command fails the module, so hs-tx puts the unit files
back. A second run finds everything current and runs nothing.
`main(["--check"])` and `main(["--version"])` change nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .commands import run_command
from .definition import (
    DefinitionError,
    Settings,
    failure,
    load_index,
    log_message,
    parse_flags,
    read_settings,
    schema_version,
)
from .files import DIFFERS, MISSING, OPERATOR, UnitPlan, ensure_dir, installed_state, write_durably

# abspath, not resolve: the module is wherever it was installed, symlinks included
MODULE_DIR = Path(os.path.abspath(__file__)).parent
INDEX = MODULE_DIR / "index.json"
UNITS = MODULE_DIR / "units"


def main(args: object = None) -> dict[str, Any]:
    """Bring the installed units up to date (args None), or report (`--check`, `--version`).

    Returns the orchestrator's result dict; never raises for a bad definition,
    an unwritable unit dir or a failing command (all give success False).
    """
    try:
        flags = parse_flags(args, ("--check", "--version"))
        index = load_index(INDEX)
        if "--version" in flags:
            return {"success": True, "schema_version": schema_version(index), "module": "hs_tx"}
        settings = read_settings(index)
        plans = plan_units(settings)
    except DefinitionError as exc:
        return failure(f"hs_tx: {exc}")
    except OSError as exc:
        return failure(f"hs_tx: cannot look at the installed units: {exc}")
    if "--check" in flags:
        return check(settings, plans)
    return apply(settings, plans)


def plan_units(settings: Settings) -> list[UnitPlan]:
    """Each configured unit with the module's bytes and the state of its installed copy.

    Raises DefinitionError when the module lacks a unit's file, OSError when
    the installed copy cannot be looked at.
    """
    plans = []
    for name in settings.units:
        try:
            data = (UNITS / name).read_bytes()
        except OSError as exc:
            raise DefinitionError(f"the module has no readable units/{name}: {exc}") from exc
        target = settings.target(name)
        plans.append(UnitPlan(name, data, target, installed_state(target, data)))
    return plans


def check(settings: Settings, plans: list[UnitPlan]) -> dict[str, Any]:
    """What a run would do; reads only."""
    fresh = {p.name for p in plans if p.state == MISSING}
    return {
        "success": True,
        "outdated": [p.name for p in plans if p.outdated],
        "missing": sorted(fresh),
        "would_enable": [u for u in settings.enable if u in fresh],
        "left_to_operator": [p.name for p in plans if p.state == OPERATOR],
        "unit_dir": str(settings.unit_dir),
    }


def apply(settings: Settings, plans: list[UnitPlan]) -> dict[str, Any]:
    """Write the outdated units, then reload and enable; stop at the first failure."""
    for plan in plans:
        if plan.state == OPERATOR:
            log_message(f"hs_tx: {plan.target} is a symlink (masked or linked): left alone")
    outdated = [p for p in plans if p.outdated]
    report: dict[str, Any] = {
        "installed": [p.name for p in outdated if p.state == MISSING],
        "updated": [p.name for p in outdated if p.state == DIFFERS],
        "enabled": [],
        "commands": [],
    }
    if not outdated:
        log_message(f"hs_tx: all {len(plans)} units in {settings.unit_dir} are current")
        return {"success": True, **report}
    error = write_units(settings, outdated)
    if error:
        return failure(error, **report)
    error = run_commands(settings, report)
    if error:
        return failure(error, **report)
    return {"success": True, **report}


def write_units(settings: Settings, outdated: list[UnitPlan]) -> str:
    """Create unit_dir if needed and write each outdated unit; return "" or why it failed."""
    try:
        for created in ensure_dir(settings.unit_dir):
            log_message(f"hs_tx: created {created}")
        for plan in outdated:
            write_durably(plan.target, plan.data)
            verb = "installed" if plan.state == MISSING else "restored"
            log_message(f"hs_tx: {verb} {plan.target}")
    except OSError as exc:
        return f"hs_tx: cannot write the units into {settings.unit_dir}: {exc}"
    return ""


def run_commands(settings: Settings, report: dict[str, Any]) -> str:
    """Reload systemd, then enable the listed units that were just installed.

    Units that were there already are never enabled again: the operator may
    have disabled them on purpose. Records each command in `report`; returns
    "" or the first command's error.
    """
    argvs = [list(settings.reload_command)]
    to_enable = [u for u in settings.enable if u in report["installed"]]
    argvs += [settings.enable_argv(u) for u in to_enable]
    for argv in argvs:
        report["commands"].append(argv)
        error = run_command(argv, settings.command_timeout)
        if error:
            return f"hs_tx: {error}"
    report["enabled"] = to_enable
    return ""
