"""Finishing transactions that an earlier hs-tx left in a running state.

Works from the journal's events alone: a durable commit decision means
committed; events of a phase that changes the system mean roll back from the
snapshots; otherwise nothing changed and the transaction is aborted.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..base.errors import EXIT_DAMAGED, EXIT_OK, DamagedError, HsTxError
from ..base.fsio import durable_write
from ..base.proc import CommandError
from ..journal import CHANGING_PHASES, Decision, Kind, Phase, State, Status, Step, TxInfo, now_iso
from ..modules import cgroup
from .audit import audit_cut_off
from .context import Context
from .pruning import delete_snapshots, remove_stage_dirs
from .transaction import finish_commit, roll_back, warn_malformed

RECOVERY_REPORT = "last-recovery.json"


def recover_all(ctx: Context, always_record: bool = False, retry_failed: bool = False) -> int:
    """Finish every unfinished transaction and, with `retry_failed`, retry every failed
    rollback; 0 when all are final (and no rollback is left failed), 3 otherwise.

    The caller holds the lock. When there was something to recover (or
    `always_record`), the outcome is written to `state_dir/last-recovery.json`
    for `hs-tx status`.
    """
    code = EXIT_OK
    outcomes = []
    if retry_failed:
        for info in ctx.journal.failed_rollbacks():
            ctx.log(f"hs-tx: retrying the failed rollback of transaction {info.id}")
            if _retry(ctx, info) == EXIT_DAMAGED:
                code = EXIT_DAMAGED
            after = ctx.journal.transaction(info.id)
            outcomes.append(
                {"id": info.id, "was": info.state, "now": after.state if after else None}
            )
    for info in ctx.journal.unfinished():
        ctx.log(f"hs-tx: recovering transaction {info.id} (left {info.state})")
        try:
            if recover_one(ctx, info) == EXIT_DAMAGED:
                code = EXIT_DAMAGED
        except HsTxError as exc:
            ctx.log(f"hs-tx: error: transaction {info.id}: {exc}")
            code = EXIT_DAMAGED
        outcomes.append(_outcome(ctx, info))
    malformed: list[DamagedError] = []
    finals = ctx.journal.final_with_snapshots(malformed)
    warn_malformed(ctx, malformed)
    for info in finals:
        # snapshots of a rolled-back or aborted run can never serve an undo
        try:
            delete_snapshots(ctx.config, ctx.journal, info)
        except (OSError, CommandError, DamagedError) as exc:
            ctx.log(f"hs-tx: warning: could not delete the snapshots of {info.id}: {exc}")
    if outcomes or always_record:
        report = {"at": now_iso(), "exit_code": code, "transactions": outcomes}
        path = ctx.config.state_dir / RECOVERY_REPORT
        durable_write(path, (json.dumps(report, indent=2) + "\n").encode())
    return code


def _outcome(ctx: Context, info: TxInfo) -> dict[str, object]:
    """The report line of one recovered transaction: its state before and now."""
    after = ctx.journal.transaction(info.id)
    return {"id": info.id, "was": info.state, "now": after.state if after else None}


def _retry(ctx: Context, info: TxInfo) -> int:
    """Run a failed rollback again (it is idempotent); its exit code."""
    try:
        return roll_back(ctx, info.id, "recover: retrying the rollback that failed")
    except HsTxError as exc:
        ctx.log(f"hs-tx: error: transaction {info.id}: {exc}")
        return EXIT_DAMAGED


def accept_current(ctx: Context) -> list[int]:
    """Declare the current state good for every failed rollback (journaled on each);
    return their ids. The caller holds the lock."""
    accepted = []
    for info in ctx.journal.failed_rollbacks():
        detail = {"note": "the operator declared the current state good"}
        ctx.journal.event(info.id, Phase.RECOVER, Step.ACCEPT_CURRENT, Status.DONE, detail)
        ctx.log(f"hs-tx: transaction {info.id}: its failed rollback is accepted as it is")
        accepted.append(info.id)
    return accepted


def refuse_if_rollback_failed(ctx: Context) -> None:
    """Raise DamagedError (exit 3) while a failed rollback is not repaired or accepted:
    nothing may be built on a half-restored system."""
    failed = ctx.journal.failed_rollbacks()
    if failed:
        ids = ", ".join(str(info.id) for info in failed)
        raise DamagedError(
            f"the rollback of transaction {ids} failed ({failed[0].error}); nothing new starts"
            " until it is repaired",
            "fix the cause, then run hs-tx recover to retry it, or hs-tx recover"
            " --accept-current to declare the current state good",
        )


def recover_one(ctx: Context, info: TxInfo) -> int:
    """Finish one transaction in its own row; return the exit code of that outcome."""
    ctx.journal.event(info.id, Phase.RECOVER, Step.START, Status.INTENT, {"state": info.state})
    _kill_leftovers(ctx, info)
    decision = _decision(info)
    if decision == Decision.COMMIT:
        return finish_commit(ctx, info.id)
    if info.kind == Kind.PRUNE:  # its deletions are final: nothing to put back
        error = "hs-tx stopped during the prune; the deletions its events record are done"
        ctx.journal.set_state(info.id, State.COMMITTED, error=error, exit_code=EXIT_OK)
        return EXIT_OK
    if decision == Decision.ROLLBACK or _may_have_changed(info):
        audit_cut_off(ctx, info)
        reason = info.error or "hs-tx stopped before the transaction finished"
        if not reason.startswith("recovered: "):
            reason = f"recovered: {reason}"
        return roll_back(ctx, info.id, reason)
    delete_snapshots(ctx.config, ctx.journal, info)
    remove_stage_dirs(ctx.journal, info.id, info.paths, ctx.config.modules_dir)
    ctx.journal.set_state(
        info.id, State.ABORTED, error="hs-tx stopped before changing anything", exit_code=1
    )
    ctx.log(f"hs-tx: transaction {info.id} aborted; it had changed nothing")
    return EXIT_OK


def _kill_leftovers(ctx: Context, info: TxInfo) -> None:
    """Kill whatever is left in the cgroups the transaction's modules ran in, before
    anything is restored (a module still running would write into the restored tree)."""
    for event in info.events:
        path = (event.detail or {}).get("cgroup") if event.status == Status.INTENT else None
        if event.phase == Phase.MODULES and path:
            killed = cgroup.kill(Path(path))
            if killed:
                ctx.log(f"hs-tx: killed {killed} process(es) left by a module of {info.id}")


def _decision(info: TxInfo) -> str | None:
    for event in reversed(info.events):
        if event.step == Step.DECISION and event.status == Status.DONE and event.detail:
            return event.detail.get("outcome")
    return None


def _may_have_changed(info: TxInfo) -> bool:
    return any(e.phase in CHANGING_PHASES for e in info.events)
