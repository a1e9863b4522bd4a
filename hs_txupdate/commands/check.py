"""`hs-tx update --check`: what an update would do, changing nothing.

It fetches into the source clone (the only write), reports what phase 1 and
phase 3 would install, and runs every enabled module's `main(["--check"])`
chrooted into a throwaway copy of the whole system (core.checkrun), with service
control recorded instead of done, under the write audit. It opens no transaction.
"""

from __future__ import annotations

import json
import sys
from dataclasses import astuple, dataclass, field
from typing import Any

from ..base.errors import HsTxError, UsageError
from ..base.proc import CommandError, run
from ..core.config import require_modules_dir
from ..core.context import Context, ensure_state_dir
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
    # per module: name, status, error, result, would_write [{path, change}], services
    modules: list[dict[str, Any]] = field(default_factory=list)
    # the write audit's proof: method, reason, leaked [{path, change, module}]
    audit: dict[str, Any] = field(default_factory=dict)

    @property
    def leaked(self) -> bool:
        """True when a write by a check reached the real filesystems (the audit saw it
        as the check's own, which only fanotify can tell)."""
        return self.audit.get("method") == "fanotify" and bool(self.audit.get("leaked"))


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
    ensure_state_dir(config.state_dir)
    spec = {
        "state_dir": str(config.state_dir),
        "modules_dir": str(config.modules_dir),
        "watch": [str(p) for p in config.watch],
        "ignore": [str(p) for p in config.ignores],
        "modules": [m.name for m in sorted(selected, key=lambda m: m.sort_key)],
        "env": module_env(ctx),
        "runtime": list(astuple(module_runtime(config))),
    }
    report.modules, report.audit = _run_isolated(spec)
    return report


def _learned(ctx: Context) -> list[tuple[str, str]]:
    """The learned footprints, without creating a journal where there is none."""
    if not ctx.config.journal_path.exists():
        return []
    return [(m, p) for m, p, _tx in ctx.journal.footprints()]


def _run_isolated(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the checks in a private mount namespace; return each module's outcome and
    the write audit's proof."""
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "unchanged",
        "--",
        sys.executable,
        "-m",
        "hs_txupdate.core.checkrun",
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
    return answer["modules"], answer["audit"]
