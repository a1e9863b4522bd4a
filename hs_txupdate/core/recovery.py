"""Finishing transactions that an earlier hs-tx left in a running state.

Works from the journal's events alone: a durable commit decision means
committed; events of a phase that changes the system mean roll back from the
snapshots; otherwise nothing changed and the transaction is aborted.
"""

from __future__ import annotations

import json

from ..base.errors import EXIT_DAMAGED, EXIT_OK, HsTxError
from ..base.fsio import durable_write
from ..base.proc import CommandError
from ..journal import CHANGING_PHASES, Decision, Phase, State, Status, Step, TxInfo, now_iso
from .context import Context
from .snapshots import delete_snapshots, remove_stage_dirs
from .transaction import finish_commit, roll_back

RECOVERY_REPORT = "last-recovery.json"


def recover_all(ctx: Context, always_record: bool = False) -> int:
    """Finish every unfinished transaction; 0 when all are final, 3 otherwise.

    The caller holds the lock. When there was something to recover (or
    `always_record`), the outcome is written to `state_dir/last-recovery.json`
    for `hs-tx status`.
    """
    code = EXIT_OK
    outcomes = []
    for info in ctx.journal.unfinished():
        ctx.log(f"hs-tx: recovering transaction {info.id} (left {info.state})")
        try:
            if recover_one(ctx, info) == EXIT_DAMAGED:
                code = EXIT_DAMAGED
        except HsTxError as exc:
            ctx.log(f"hs-tx: error: transaction {info.id}: {exc}")
            code = EXIT_DAMAGED
        after = ctx.journal.transaction(info.id)
        outcomes.append({"id": info.id, "was": info.state, "now": after.state if after else None})
    for info in ctx.journal.final_with_snapshots():
        # snapshots of a rolled-back or aborted run can never serve an undo
        try:
            delete_snapshots(ctx.config, ctx.journal, info.id, info.paths)
        except (OSError, CommandError) as exc:
            ctx.log(f"hs-tx: warning: could not delete the snapshots of {info.id}: {exc}")
    if outcomes or always_record:
        report = {"at": now_iso(), "exit_code": code, "transactions": outcomes}
        path = ctx.config.state_dir / RECOVERY_REPORT
        durable_write(path, (json.dumps(report, indent=2) + "\n").encode())
    return code


def recover_one(ctx: Context, info: TxInfo) -> int:
    """Finish one transaction in its own row; return the exit code of that outcome."""
    ctx.journal.event(info.id, Phase.RECOVER, Step.START, Status.INTENT, {"state": info.state})
    decision = _decision(info)
    if decision == Decision.COMMIT:
        return finish_commit(ctx, info.id)
    if decision == Decision.ROLLBACK or _may_have_changed(info):
        reason = info.error or "hs-tx stopped before the transaction finished"
        if not reason.startswith("recovered: "):
            reason = f"recovered: {reason}"
        return roll_back(ctx, info.id, reason)
    delete_snapshots(ctx.config, ctx.journal, info.id, info.paths)
    remove_stage_dirs(info.id, info.paths, ctx.config.modules_dir)
    ctx.journal.set_state(
        info.id, State.ABORTED, error="hs-tx stopped before changing anything", exit_code=1
    )
    ctx.log(f"hs-tx: transaction {info.id} aborted; it had changed nothing")
    return EXIT_OK


def _decision(info: TxInfo) -> str | None:
    for event in reversed(info.events):
        if event.step == Step.DECISION and event.status == Status.DONE and event.detail:
            return event.detail.get("outcome")
    return None


def _may_have_changed(info: TxInfo) -> bool:
    return any(e.phase in CHANGING_PHASES for e in info.events)
