"""`hs-tx status`: is a run going on, did the last recovery work, what ran last."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..base.errors import EXIT_DAMAGED, EXIT_OK
from ..core.context import Context
from ..core.lock import lock_holder
from ..core.netguard import current as current_network
from ..core.orphans import find_orphans
from ..core.recovery import RECOVERY_REPORT
from ..core.space import cached_space
from ..journal import Phase, Status, Step, TxInfo
from ..modules.discovery import discover_usable
from .history import summary


def status(ctx: Context) -> tuple[dict[str, Any], int]:
    """The status as a JSON-ready dict, and the exit code: 3 when something needs repair
    (an unfinished transaction no live process owns, a failed rollback not accepted,
    a failed recovery).

    `running` is None or `{pid, tx, phase, module}` of the run holding the lock;
    `unfinished` lists only transactions no live process owns. `orphan_snapshots`
    lists {path, kind, why} of the snapshots no journal relies on (hs-tx prune
    --orphans). `net` is the guarded network as captured now (see core.netguard.current).
    `snapshot_space` is what the kept snapshots held after the last commit
    (`bytes`, `transactions`: [{id, bytes, method}], `at`), or None."""
    config = ctx.config
    holder = lock_holder(config.lock_path)
    out: dict[str, Any] = {
        "state_dir": str(config.state_dir),
        "running": _running(holder) if holder else None,
        "last_recovery": None,
        "unfinished": [],
        "rollback_failed": [],
        "last_transaction": None,
        "broken_modules": _broken(config.modules_dir),
        "journal_missing": ctx.journal_missing(),
        "orphan_snapshots": [
            {
                "path": str(config.snapshots_dir / name),
                "kind": "dir",
                "why": "the journal is missing",
            }
            for name in ctx.orphan_snapshots()
        ],
        "net": current_network(config),
        "snapshot_space": cached_space(config),
    }
    report = config.state_dir / RECOVERY_REPORT
    if report.is_file():
        out["last_recovery"] = json.loads(report.read_text())
    if config.journal_path.exists():
        _from_journal(ctx, out)
    damaged = (
        out["journal_missing"]
        or out["unfinished"]
        or out["rollback_failed"]
        or (out["last_recovery"] or {}).get("exit_code", 0) != 0
    )
    return out, EXIT_DAMAGED if damaged else EXIT_OK


def _broken(modules_dir: Path) -> list[dict[str, str | None]]:
    """The installed modules whose index.json is unusable now (they do not run)."""
    if not modules_dir.is_dir():
        return []
    return [
        {"name": item.name, "problem": item.problem} for item in discover_usable(modules_dir)[1]
    ]


def _from_journal(ctx: Context, out: dict[str, Any]) -> None:
    journal = ctx.journal
    running = out["running"]
    live_tx = running["tx"] if running else None
    unfinished = [t for t in journal.unfinished() if t.id != live_tx]
    if running is not None and live_tx is not None:
        info = journal.transaction(live_tx)
        if info is not None:
            running.update(_phase_and_module(info))
    out["unfinished"] = [summary(t) for t in unfinished]
    out["rollback_failed"] = [summary(t) for t in journal.failed_rollbacks()]
    recent = journal.transactions(limit=1)
    out["last_transaction"] = summary(recent[0]) if recent else None
    out["orphan_snapshots"] = [
        {"path": str(o.path), "kind": o.kind, "why": o.why}
        for o in find_orphans(ctx.config, journal)
    ]


_HOLDER = re.compile(r"pid (\d+), transaction (\d+|none yet)")


def _running(holder: str) -> dict[str, Any]:
    """`{pid, tx, phase, module}` of the lock holder's text (unknown parts None)."""
    match = _HOLDER.search(holder)
    pid = int(match.group(1)) if match else None
    tx = int(match.group(2)) if match and match.group(2).isdigit() else None
    return {"pid": pid, "tx": tx, "phase": None, "module": None}


def _phase_and_module(info: TxInfo) -> dict[str, Any]:
    """The phase of the newest event, and the module running now (an intent of
    `modules` without its outcome yet)."""
    phase = info.events[-1].phase if info.events else None
    module = None
    for event in info.events:
        if event.phase == Phase.MODULES and event.step in (Step.RUN, Step.MAINTENANCE):
            name = (event.detail or {}).get("module")
            module = name if event.status == Status.INTENT else None
    return {"phase": phase, "module": module}
