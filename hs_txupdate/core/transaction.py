"""The transaction state machine: open, snapshot, run, then commit or roll back.

States: open -> snapshotted -> running -> committed, or -> rolling_back ->
rolled_back / rollback_failed; aborted when it stopped before anything changed.
The decision (commit or roll back) is an event; once it is durable, recovery
finishes the transaction the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..base.errors import (
    EXIT_DAMAGED,
    EXIT_FAILED,
    EXIT_OK,
    DamagedError,
    HsTxError,
    exit_code_for,
)
from ..base.fsio import syncfs
from ..base.proc import CommandError
from ..journal import (
    Decision,
    JournalLostError,
    Origin,
    OutsideInfo,
    Phase,
    State,
    Status,
    Step,
    TxInfo,
)
from ..snapshot.changelist import ChangeLists
from ..snapshot.entries import remove_entry
from .audit import describe
from .context import Context
from .drift import fingerprint_of, left_fingerprint, restored_fingerprint
from .pruning import delete_snapshots, remove_stage_dirs
from .runstate import keep_run_states, read_run_states
from .services import put_back_services
from .signals import SignalGuard
from .snapshots import never_snapshotted, path_changes, restore_path, tx_dir
from .space import measure_later
from .system import (
    attributed,
    restore_filter,
    restored_paths,
    settle_changes,
    system_of,
)

_Plan = TypeVar("_Plan")


def run_transaction(
    ctx: Context,
    tx_id: int,
    prepare: Callable[[], _Plan],
    body: Callable[[_Plan], str | None],
    rollback: Callable[[str, int], int] | None = None,
) -> int:
    """The skeleton every kind of transaction shares; returns the exit code.

    `prepare` plans and snapshots (nothing on the system changes, so a failure
    aborts); `body` changes things (an error, an interruption or a returned
    reason rolls back, through `rollback(reason, exit code)` when given); else the
    transaction commits. A body that met damaged data (a snapshot not as recorded)
    ends with exit 3 even when the rollback succeeds. SIGINT/SIGTERM/SIGHUP
    interrupt `prepare` and `body`, never the rollback or the commit.
    """
    with SignalGuard() as guard:
        try:
            plan = prepare()
        except BaseException as exc:
            guard.disarm()
            return abort(ctx, tx_id, exc)
        code = EXIT_FAILED
        try:
            ctx.journal.set_state(tx_id, State.RUNNING)
            failure = body(plan)
        except HsTxError as exc:  # Interrupted among them
            failure = str(exc)
            if isinstance(exc, DamagedError) and not isinstance(exc, JournalLostError):
                code = EXIT_DAMAGED
        except OSError as exc:
            failure = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            failure = f"internal error: {type(exc).__name__}: {exc}"
        guard.disarm()
        if failure is not None:
            return rollback(failure, code) if rollback else roll_back(ctx, tx_id, failure, code)
        return commit(ctx, tx_id)


def commit(ctx: Context, tx_id: int) -> int:
    """Record which paths changed, make the commit decision durable, apply retention."""
    journal = ctx.journal
    info = _tx(ctx, tx_id)
    changes = {}
    # paths captured in one btrfs snapshot share its change list; its probe is deleted
    # once the decision is durable
    with ChangeLists() as lists:
        for path in info.paths:
            # the fingerprint lets a later undo notice changes made outside hs-tx
            if path.origin == Origin.SYSTEM:
                rels = settle_changes(ctx.config, journal, info, path)
                changed = bool(rels)
                fingerprint = fingerprint_of(Path(path.path), rels) if changed else None
            else:
                diff = path_changes(journal, path, lists)
                changed = bool(diff)
                fingerprint = left_fingerprint(tx_id, path, diff) if changed else None
            changes[path.n] = {"changed": changed, "fingerprint": fingerprint}
        _sync_scope(info)
        with journal.together():  # what changed, and the decision: one durable write
            for n, values in changes.items():
                journal.update_path(tx_id, n, **values)
            decision = {"outcome": Decision.COMMIT}
            journal.event(tx_id, Phase.COMMIT, Step.DECISION, Status.DONE, decision)
    return finish_commit(ctx, tx_id)


def _sync_scope(info: TxInfo) -> None:
    """Make what the run wrote durable before the commit record claims it: one
    syncfs per filesystem the scope lives on."""
    seen = set()
    for path in info.paths:
        probe = Path(path.path)
        while not probe.exists():
            probe = probe.parent
        dev = probe.stat().st_dev
        if dev not in seen:
            seen.add(dev)
            syncfs(probe)


def finish_commit(ctx: Context, tx_id: int) -> int:
    """Mark a transaction whose commit decision is durable committed; prune old snapshots."""
    ctx.journal.set_state(tx_id, State.COMMITTED, exit_code=EXIT_OK)
    ctx.log(f"hs-tx: transaction {tx_id} committed")
    apply_retention(ctx, tx_id)
    try:
        measure_later(ctx.config, ctx.journal)
    except (OSError, CommandError) as exc:  # a figure for status; the commit stands
        ctx.log(f"hs-tx: warning: could not measure the space snapshots hold: {exc}")
    return EXIT_OK


def apply_retention(ctx: Context, tx_id: int) -> None:
    """Delete the snapshots of committed transactions older than the newest `keep`."""
    malformed: list[DamagedError] = []
    kept = ctx.journal.committed_with_snapshots(malformed)
    warn_malformed(ctx, malformed)
    for old in kept[ctx.config.keep :]:
        try:
            delete_snapshots(ctx.config, ctx.journal, old, on_tx=tx_id)
        except (OSError, CommandError, DamagedError) as exc:
            ctx.log(f"hs-tx: warning: could not delete the snapshots of {old.id}: {exc}")


def warn_malformed(ctx: Context, malformed: list[DamagedError]) -> None:
    """Name each transaction a bulk read left out for a malformed row: its snapshots
    stay, and nothing else waits for it."""
    for error in malformed:
        ctx.log(f"hs-tx: warning: {error}; that transaction is left alone")


def roll_back(
    ctx: Context,
    tx_id: int,
    reason: str,
    exit_code: int = EXIT_FAILED,
    after_restore: Callable[[], str | None] | None = None,
) -> int:
    """Restore every scope path of `tx_id`, put its services back, finish it.

    Paths are restored newest snapshot first, so where scope paths nest (a
    StateManager backup added mid-run) the run-start state wins. `after_restore`
    runs once the files and services are back (the network guard's repair); it
    returns None, or what it could not put back. Idempotent: recovery calls it
    again for a rollback that was cut off. Returns `exit_code`, or 3 when a path
    (or what `after_restore` guards) could not be restored, or when the run
    changed paths outside its scope, which no rollback puts back.
    """
    journal = ctx.journal
    ctx.log(f"hs-tx: {reason}")
    ctx.log(f"hs-tx: rolling back transaction {tx_id}")
    journal.set_state(tx_id, State.ROLLING_BACK, error=reason)
    info = _tx(ctx, tx_id)
    decision = {"outcome": Decision.ROLLBACK, "reason": reason}
    incomplete = bool(system_of(info.paths)) and not attributed(info)
    if incomplete:
        decision["attribution"] = "incomplete"
        ctx.log(
            f"hs-tx: note: the write audit could not attribute every write of this run"
            f" ({info.audit_method or 'no audit'}); every change btrfs lists in the system"
            " scope is put back, except the ignored paths and the state dir"
        )
    journal.event(tx_id, Phase.ROLLBACK, Step.DECISION, Status.DONE, decision)
    run_states = read_run_states(ctx, info)
    problems, changed, put_back = [], [], 0
    # one probe per btrfs snapshot, before its first path is restored, deleted once
    # every path is
    with ChangeLists() as lists:
        for path in sorted(info.paths, key=lambda p: p.n, reverse=True):
            if never_snapshotted(path):
                continue  # added mid-run, cut off before its snapshot: nothing to restore from
            try:
                keep = None
                if path.origin == Origin.SYSTEM:
                    keep = restore_filter(ctx.config, info, path, listed=not incomplete)
                entries = restore_path(ctx.config, journal, tx_id, path, keep=keep, lists=lists)
                if entries:
                    changed += restored_paths(info, path)
                    put_back += entries
            except (HsTxError, OSError) as exc:
                problems.append(f"{path.path}: {exc}")
                failure = {"n": path.n, "error": str(exc)}
                journal.event(tx_id, Phase.ROLLBACK, Step.RESTORE, Status.FAILED, failure)
    if problems:
        error = "rollback failed for " + "; ".join(problems)
        journal.set_state(tx_id, State.ROLLBACK_FAILED, error=error, exit_code=EXIT_DAMAGED)
        ctx.log(f"hs-tx: {error}")
        ctx.log(f"hs-tx: snapshots are kept; see `hs-tx show {tx_id}` for each path's snapshot")
        return EXIT_DAMAGED
    remove_stage_dirs(ctx.journal, tx_id, info.paths, ctx.config.modules_dir)
    _record_restored_state(ctx, info)
    keep_run_states(ctx, tx_id, run_states)
    put_back_services(ctx, tx_id, info, changed)
    damage = _after_restore(after_restore)
    if damage is not None:
        error = f"{reason}; the files were restored, but {damage}"
        journal.set_state(tx_id, State.ROLLBACK_FAILED, error=error, exit_code=EXIT_DAMAGED)
        ctx.log(f"hs-tx: error: {damage}")
        ctx.log(
            f"hs-tx: transaction {tx_id} rollback_failed: every path in scope is as before,"
            " the rest is not (see above)"
        )
        _discard_snapshots(ctx, tx_id, info)
        return EXIT_DAMAGED
    return _finish_rollback(ctx, tx_id, info, exit_code, put_back)


def _finish_rollback(ctx: Context, tx_id: int, info: TxInfo, exit_code: int, put_back: int) -> int:
    """State rolled_back; "as before" only when the run changed nothing outside the
    scope and every path was snapshotted, else exit 3 naming what is not restored.
    `put_back` entries were restored, each read back and found to be its snapshot's."""
    lost = [p.path for p in info.paths if never_snapshotted(p)]
    outside = [*info.outside, *(OutsideInfo(p, "unknown", None, 1, False) for p in lost)]
    if info.outside:
        ctx.journal.set_outside_restored(tx_id, False)
    code = EXIT_DAMAGED if outside else exit_code
    ctx.journal.set_state(tx_id, State.ROLLED_BACK, exit_code=code)
    if outside:
        ctx.log(
            f"hs-tx: transaction {tx_id} rolled back: every path in its scope is restored, but"
            f" {len(outside)} path(s) the run changed outside its scope are not:"
            f" {describe(outside)}; see them all: hs-tx show {tx_id}"
        )
    else:
        ctx.log(
            f"hs-tx: transaction {tx_id} rolled back; every path in scope is as before"
            f" ({_checked(put_back)})"
        )
    _discard_snapshots(ctx, tx_id, info)
    return code


def _checked(put_back: int) -> str:
    """What backs "as before": the entries a rollback put back were each read back."""
    if not put_back:
        return "nothing in it had changed"
    return f"{put_back} entr{'y' if put_back == 1 else 'ies'} restored, each read back and checked"


def _record_restored_state(ctx: Context, info: TxInfo) -> None:
    """Fingerprint the paths a rollback put back, so a later undo does not take hs-tx's
    own restore for a change made outside hs-tx — but only for paths that were, when
    this transaction snapshotted them, in the state hs-tx last left them in."""
    latest: dict[str, str] = {}
    for tx, path, fingerprint in ctx.journal.latest_fingerprints():  # newest first
        if tx != info.id and fingerprint is not None:
            latest.setdefault(path, fingerprint)
    for scope_path in info.paths:
        last = latest.get(scope_path.path)
        if last is None or scope_path.origin == Origin.SYSTEM:
            continue  # a system entry's drift is checked on the entries each run changed
        fingerprint = restored_fingerprint(ctx.journal, scope_path, last)
        if fingerprint is not None:
            ctx.journal.update_path(info.id, scope_path.n, fingerprint=fingerprint)


def _after_restore(check: Callable[[], str | None] | None) -> str | None:
    """Run the post-restore step; an unexpected failure of it is damage, not a crash."""
    if check is None:
        return None
    try:
        return check()
    except Exception as exc:
        return f"the step after the restore failed: {type(exc).__name__}: {exc}"


def abort(ctx: Context, tx_id: int, exc: BaseException) -> int:
    """End a transaction that changed nothing: drop its partial snapshots, state aborted."""
    code = exit_code_for(exc)
    message = str(exc) if isinstance(exc, HsTxError) else f"internal error: {exc!r}"
    # first the space its archives hold: on a full disk the journal needs it to go on
    own = tx_dir(ctx.config, ctx.journal, tx_id)
    if own.is_dir():
        remove_entry(own)
    info = _tx(ctx, tx_id)
    try:
        _discard_snapshots(ctx, tx_id, info)
        remove_stage_dirs(ctx.journal, tx_id, info.paths, ctx.config.modules_dir)
    finally:
        ctx.journal.set_state(tx_id, State.ABORTED, error=message, exit_code=code)
    ctx.log(f"hs-tx: error: {message}")
    ctx.log(f"hs-tx: transaction {tx_id} aborted; nothing was changed")
    if not isinstance(exc, Exception):
        raise exc  # e.g. SystemExit: finish the journal, then let it through
    return code


def _discard_snapshots(ctx: Context, tx_id: int, info: TxInfo) -> None:
    """Snapshots of a rolled-back or aborted transaction can never be used for undo."""
    try:
        delete_snapshots(ctx.config, ctx.journal, info)
    except (OSError, CommandError, DamagedError) as exc:
        ctx.log(f"hs-tx: warning: could not delete the snapshots of transaction {tx_id}: {exc}")


def _tx(ctx: Context, tx_id: int) -> TxInfo:
    info = ctx.journal.transaction(tx_id)
    assert info is not None, f"transaction {tx_id} vanished from the journal"
    return info
