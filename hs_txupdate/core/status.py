"""`hs-tx status`: is a run going on, did the last recovery work, what ran last."""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any

from ..net.guard import current as current_network
from .context import Context
from .errors import EXIT_DAMAGED, EXIT_OK
from .query import summary
from .recovery import RECOVERY_REPORT


def lock_holder(ctx: Context) -> str | None:
    """Who holds the state-dir lock (its text), or None when nobody does.

    Probes with a shared non-blocking flock on a separate descriptor, which
    never disturbs the holder.
    """
    try:
        fd = os.open(ctx.config.lock_path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown holder"
    finally:
        os.close(fd)
    return None


def status(ctx: Context) -> tuple[dict[str, Any], int]:
    """The status as a JSON-ready dict, and the exit code: 3 when something needs repair
    (an unfinished transaction nobody is running, a failed rollback, a failed recovery).

    `net` is the guarded network as captured now (see net.guard.current)."""
    config = ctx.config
    out: dict[str, Any] = {
        "state_dir": str(config.state_dir),
        "running": lock_holder(ctx),
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
        out["rollback_failed"] = [summary(t) for t in recent if t.state == "rollback_failed"]
        out["last_transaction"] = summary(recent[0]) if recent else None
    damaged = (
        (out["unfinished"] and out["running"] is None)
        or out["rollback_failed"]
        or (out["last_recovery"] or {}).get("exit_code", 0) != 0
    )
    return out, EXIT_DAMAGED if damaged else EXIT_OK
