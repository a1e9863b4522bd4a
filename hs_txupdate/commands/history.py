"""`hs-tx history` and `hs-tx show ID`: read-only views of the journal, as JSON-ready dicts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..base.errors import DamagedError, UsageError
from ..core.context import Context
from ..journal import EventInfo, Phase, RunStatus, Status, Step, TxInfo
from ..net.model import NetState, describe


def duration_s(info: TxInfo) -> float | None:
    """Seconds from start to end of a finished transaction (None while running)."""
    if info.finished_at is None:
        return None
    start = datetime.fromisoformat(info.started_at)
    return (datetime.fromisoformat(info.finished_at) - start).total_seconds()


def summary(info: TxInfo) -> dict[str, Any]:
    """One `history` row: the transaction without its paths and events."""
    failed = [m for m in info.modules if m.status != RunStatus.SUCCESS]
    return {
        "id": info.id,
        "kind": info.kind,
        "state": info.state,
        "started_at": info.started_at,
        "finished_at": info.finished_at,
        "duration_s": duration_s(info),
        "undoes": info.undoes,
        "undone_by": info.undone_by,
        "user": info.user,
        "host": info.host,
        "command": info.command,
        "exit_code": info.exit_code,
        "error": info.error,
        "modules_run": len({m.name for m in info.modules}),
        "modules_failed": len({m.name for m in failed}),
        "snapshots_pruned_at": info.snapshots_pruned_at,
        "source_before": info.source_before,
        "source_after": info.source_after,
    }


PAGE = 50  # what `hs-tx history` shows without --limit


def history(
    ctx: Context, limit: int | None = PAGE, malformed: list[DamagedError] | None = None
) -> list[dict[str, Any]]:
    """`hs-tx history`: transactions newest first, at most `limit` (None: all). A transaction with a
    malformed journal row is left out and its error added to `malformed` (without
    that list, MalformedRowError is raised).

    Raises UsageError for a limit below 1.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be 1 or more (got {limit})", "e.g. --limit 20")
    missing = ctx.journal_missing()
    if missing is not None:
        raise DamagedError(
            missing,
            "if it was moved aside on purpose, the next hs-tx update starts a new journal;"
            " hs-tx status lists the orphaned snapshots",
        )
    return [summary(info) for info in ctx.journal.transactions(limit, malformed)]


def show(ctx: Context, tx_id: int) -> dict[str, Any]:
    """`hs-tx show ID`: everything journaled about one transaction.

    Raises UsageError for an unknown id.
    """
    info = ctx.journal.transaction(tx_id)
    if info is None:
        raise UsageError(f"no transaction {tx_id}", "see `hs-tx history` for the ids")
    out = summary(info)
    out["paths"] = [
        {
            "path": p.path,
            "existed": p.existed,
            "backend": p.backend,
            "snapshot": p.snapshot,
            "changed": p.changed,
            "size": p.size,
            "checksum": p.checksum,
            "pruned_at": p.pruned_at,
            "origin": p.origin,
            "added_by": p.added_by,
        }
        for p in info.paths
    ]
    out["outside_scope"] = [
        {
            "path": o.path,
            "change": o.change,
            "module": o.module,
            "count": o.count,
            "restored": o.restored,
        }
        for o in info.outside
    ]
    out["run_changes"] = [
        {"path": c.path, "change": c.change, "module": c.module, "count": c.count}
        for c in info.run_changes
    ]
    out["audit"] = {
        "method": info.audit_method,
        "reason": info.audit_reason,
        "others": info.audit_others,
    }
    out["modules"] = [
        {
            "name": m.name,
            "kind": m.kind or "main",
            "version_from": m.version_from or m.schema_version,
            "version_to": m.version_to or m.schema_version,
            "status": m.status,
            "duration_s": m.duration_s,
            "exit_status": m.exit_status,
            "error": m.error,
            "output_tail": m.output_tail,
        }
        for m in info.modules
    ]
    out["events"] = [
        {
            "seq": e.seq,
            "phase": e.phase,
            "step": e.step,
            "status": e.status,
            "at": e.at,
            "detail": e.detail,
        }
        for e in info.events
    ]
    out["net"] = net_detail(info)
    fetched = [e for e in info.events if e.phase == Phase.SOURCE and e.status == Status.DONE]
    signed = fetched[-1].detail if fetched and fetched[-1].detail else {}
    out["source_signer"] = (
        {"signer": signed["signer"], "key": signed.get("key")} if "signer" in signed else None
    )
    return out


def net_detail(info: TxInfo) -> dict[str, Any]:
    """What the network guard saw and did in one transaction (`show`'s key `net`).

    `outcome`: `not guarded`, `captured` (it stopped before the gate), `held`,
    `restored` (the guard put the network back), `restored by the rollback`
    (restoring the files and restarting the services was enough) or
    `not restored` (see `check.commands` for the `ip` commands to run by hand).
    """
    last = {e.step: e for e in info.events if e.phase == Phase.NET}
    gate, check, preflight = last.get(Step.GATE), last.get(Step.CHECK), last.get(Step.PREFLIGHT)
    actions = info.net_actions or []
    return {
        "guarded": info.net_before is not None,
        "interfaces": (info.net_before or {}).get("interfaces", []),
        "before": info.net_before,
        "after": info.net_after,
        "preflight": _step(preflight),
        "gate": _step(gate),
        "actions": actions,
        "restored": info.net_restored,
        "check": _step(check),
        "outcome": _net_outcome(info, gate is not None and gate.status == Status.FAILED, check),
    }


def _step(event: EventInfo | None) -> dict[str, Any] | None:
    """A journaled guard step as `{"status": ..., **detail}`, or None if it never ran."""
    return {"status": event.status, **(event.detail or {})} if event else None


def _net_outcome(info: TxInfo, gate_failed: bool, check: EventInfo | None) -> str:
    if info.net_before is None:
        return "not guarded"
    if check is not None and check.status == Status.FAILED:
        return "not restored"
    if info.net_actions:
        return "restored"
    if gate_failed:
        return "restored by the rollback"
    return "held" if info.net_after is not None else "captured"


def describe_network(state: NetState) -> list[str]:
    """One line per guarded link and default route of a captured network state."""
    return describe(state)
