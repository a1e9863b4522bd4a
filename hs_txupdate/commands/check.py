"""`hs-tx update --check`: what an update would do, changing nothing.

It fetches into the source clone (the only write), reports what phase 1 and
phase 3 would install, and runs every enabled module's `main(["--check"])` in
a private mount namespace where each scope path is an overlay with a
throwaway upper dir. It opens no transaction.
"""

from __future__ import annotations

import json
import sys
from dataclasses import astuple, dataclass, field
from typing import Any

from ..base.errors import HsTxError, UsageError
from ..base.fsio import ensure_private_dir
from ..base.proc import CommandError, run
from ..core.config import require_modules_dir
from ..core.context import Context
from ..core.phase2 import module_env, select_group_winners
from ..core.planning import plan_run
from ..core.runtime import module_runtime
from ..core.source import fetch_configured
from ..modules.discovery import discover_usable


@dataclass
class CheckReport:
    """What `--check` found."""

    schema: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    self_update: dict[str, str] | None = None
    modules: list[dict[str, Any]] = field(default_factory=list)


def check(ctx: Context, wait: bool = False, allow_downgrade: bool = False) -> CheckReport:
    """Plan an update and run the modules' checks in isolation; return the report.

    Raises HsTxError when the source cannot be fetched or the checks cannot be
    isolated.
    """
    config = ctx.config
    usable, broken = discover_usable(require_modules_dir(config))
    installed = {m.name: m for m in usable}
    state = None
    if config.source is not None:
        with ctx.lock(wait):  # the fetch writes into the one source clone
            state = fetch_configured(config)
    learned = _learned(ctx)
    plan = plan_run(config, installed, state, allow_downgrade, learned)
    report = CheckReport(notes=[*plan.notes, *(f"{b.problem}; it does not run" for b in broken)])
    if plan.schema is not None:
        report.schema = [
            {"module": c.name, "installed": c.version_from, "source": c.version_to}
            for c in plan.schema.changes
        ]
    if plan.self_update is not None:
        update = plan.self_update
        report.self_update = {"installed": update.version_from, "source": update.version_to}
    enabled = [m for m in installed.values() if m.enabled]
    selected, group_notes = select_group_winners(enabled, ctx.services.is_active)
    report.notes.extend(group_notes)
    ensure_private_dir(config.state_dir)
    spec = {
        "state_dir": str(config.state_dir),
        "modules_dir": str(config.modules_dir),
        "scope": [str(p.path) for p in plan.paths],
        "modules": [m.name for m in sorted(selected, key=lambda m: m.sort_key)],
        "env": module_env(ctx),
        "runtime": list(astuple(module_runtime(config))),
    }
    report.modules = _run_isolated(spec)
    return report


def _learned(ctx: Context) -> list[tuple[str, str]]:
    """The learned footprints, without creating a journal where there is none."""
    if not ctx.config.journal_path.exists():
        return []
    return [(m, p) for m, p, _tx in ctx.journal.footprints()]


def _run_isolated(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the checks in a private mount namespace; return each module's outcome."""
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "unchanged",
        "--",
        sys.executable,
        "-m",
        "hs_txupdate.modules.checkns",
        json.dumps(spec),
    ]
    try:
        result = run(argv, check=False, timeout=None, pass_stderr=True)
    except CommandError as exc:
        raise UsageError("unshare is not installed", "install util-linux") from exc
    lines = result.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if "modules" not in answer:
        reason = (
            answer.get("error") or f"the isolated check process failed (exit {result.returncode})"
        )
        raise HsTxError(reason, "nothing was changed")
    modules: list[dict[str, Any]] = answer["modules"]
    return modules
