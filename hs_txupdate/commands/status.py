"""`hs-tx status`: is a run going on, did the last recovery work, what ran last."""

from __future__ import annotations

import json
from typing import Any

from ..base.errors import EXIT_DAMAGED, EXIT_OK
from ..core.context import Context
from ..core.lock import lock_holder
from ..core.netguard import current as current_network
from ..core.recovery import RECOVERY_REPORT
from .history import summary


def status(ctx: Context) -> tuple[dict[str, Any], int]:
    """The status as a JSON-ready dict, and the exit code: 3 when something needs repair
    (an unfinished transaction nobody is running, a failed rollback, a failed recovery).

    `net` is the guarded network as captured now (see core.netguard.current)."""
    config = ctx.config
    out: dict[str, Any] = {
        "state_dir": str(config.state_dir),
        "running": lock_holder(config.lock_path),
        "last_recovery": None,
        "unfinished": [],
        "rollback_failed": [],
        "last_transaction": None,
        "net": current_network(config),
    }
    report = config.state_dir / RECOVERY_REPORT
    if report.is_file():
        out["last_recovery"] = json.loads(report.read_text())
    if config.journal_path.exists():
        journal = ctx.journal
        out["unfinished"] = [summary(t) for t in journal.unfinished()]
        recent = journal.transactions(limit=50)
        out["rollback_failed"] = [summary(t) for t in journal.failed_rollbacks()]
        out["last_transaction"] = summary(recent[0]) if recent else None
    damaged = (
        (out["unfinished"] and out["running"] is None)
        or out["rollback_failed"]
        or (out["last_recovery"] or {}).get("exit_code", 0) != 0
    )
    return out, EXIT_DAMAGED if damaged else EXIT_OK
