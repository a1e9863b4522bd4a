"""`hs-tx update --check`: what an update would do, changing nothing.

It fetches into the source clone (the only write), reports what phase 1 and
phase 3 would install, and runs every enabled module's `main(["--check"])` in
a private mount namespace where each scope path is an overlay with a
throwaway upper dir. It opens no transaction.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from ..modules.discovery import discover
from ..sync.git import fetch
from . import phase3
from .config import require_modules_dir
from .context import Context
from .errors import HsTxError, UsageError
from .fsio import ensure_private_dir
from .phase1 import plan
from .phase2 import module_env, select_group_winners
from .proc import child_env
from .scope import plan_paths


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
    installed = {m.name: m for m in discover(require_modules_dir(config))}
    report = CheckReport()
    future = dict(installed)
    own = []
    if config.source is not None:
        with ctx.lock(wait):  # the fetch writes into the one source clone
            state = fetch(config.state_dir / "source", config.source.url, config.source.branch)
        schema = plan(state, config.modules_dir, installed, allow_downgrade)
        report.notes = schema.notes
        future = schema.future(installed)
        for change in schema.changes:
            report.schema.append(
                {
                    "module": change.name,
                    "installed": change.version_from,
                    "source": change.version_to,
                }
            )
        update, note = phase3.plan(state)
        if update is not None:
            report.self_update = {"installed": update.version_from, "source": update.version_to}
            own.append(update.install_dir)
        if note:
            report.notes.append(note)
    paths = plan_paths(config, installed.values(), future.values(), own)
    enabled = [m for m in installed.values() if m.enabled]
    selected, group_notes = select_group_winners(enabled, ctx.services.is_active)
    report.notes.extend(group_notes)
    ensure_private_dir(config.state_dir)
    spec = {
        "state_dir": str(config.state_dir),
        "modules_dir": str(config.modules_dir),
        "scope": [str(p) for p in paths],
        "modules": [m.name for m in sorted(selected, key=lambda m: m.sort_key)],
        "env": module_env(ctx),
    }
    report.modules = _run_isolated(spec)
    return report


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
        proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, env=child_env(), check=False)
    except FileNotFoundError as exc:
        raise UsageError("unshare is not installed", "install util-linux") from exc
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if "modules" not in answer:
        reason = (
            answer.get("error") or f"the isolated check process failed (exit {proc.returncode})"
        )
        raise HsTxError(reason, "nothing was changed")
    return answer["modules"]
