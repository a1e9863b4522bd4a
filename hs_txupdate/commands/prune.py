"""`hs-tx prune --orphans`: delete the snapshots no journal relies on.

Retention deletes only what this journal recorded; snapshots left by a journal
that was moved aside or lost, or by a capture cut off before it was recorded,
stay until the operator asks for them to go. The deletion is a journaled
transaction of kind `prune` (one step per snapshot), under the lock.
"""

from __future__ import annotations

from ..base.errors import EXIT_DAMAGED, EXIT_FAILED, EXIT_OK
from ..base.proc import CommandError
from ..core.context import Context
from ..core.orphans import Orphan, find_orphans, remove_orphan
from ..core.start import open_transaction, recover_first
from ..journal import Kind, Phase, State, Step


def prune_orphans(ctx: Context, wait: bool = False) -> tuple[list[Orphan], int]:
    """Delete every orphaned snapshot (see core.orphans) in one journaled transaction.

    Returns (the orphans deleted, exit code): 0 when all went (or there were none),
    1 when some could not be deleted (named on stderr; they stay listed by
    `hs-tx status`), 3 when an earlier transaction could not be repaired first.
    Raises LockedError when another run holds the lock and not `wait`.
    """
    with ctx.lock(wait) as lock:
        if not recover_first(ctx, "pruning"):
            return [], EXIT_DAMAGED
        orphans = find_orphans(ctx.config, ctx.journal)
        if not orphans:
            ctx.log("hs-tx: no orphaned snapshots")
            return [], EXIT_OK
        tx_id = open_transaction(ctx, lock, Kind.PRUNE)
        done, failed = [], []
        for orphan in orphans:
            detail = {"path": str(orphan.path), "why": orphan.why}
            with ctx.journal.step(tx_id, Phase.RETENTION, Step.DELETE_ORPHAN, detail) as step:
                try:
                    remove_orphan(orphan)
                    done.append(orphan)
                except (OSError, CommandError) as exc:
                    step.fail(error=str(exc))
                    failed.append(f"{orphan.path}: {exc}")
                    ctx.log(f"hs-tx: warning: could not delete {orphan.path}: {exc}")
        code = EXIT_FAILED if failed else EXIT_OK
        error = (
            f"could not delete {len(failed)} orphan(s): " + "; ".join(failed) if failed else None
        )
        ctx.journal.set_state(tx_id, State.COMMITTED, exit_code=code, error=error)
        ctx.log(f"hs-tx: transaction {tx_id}: deleted {len(done)} orphaned snapshot(s)")
        return done, code
