"""Starting a transaction, the same way for every command that changes anything:
recover what an earlier run left unfinished, open the journal row, then plan
and snapshot the scope before anything on the system changes.
"""

from __future__ import annotations

from typing import Any

from ..base.errors import EXIT_OK
from ..journal import Kind, Phase, State, Status, Step
from .context import Context, who
from .lock import StateLock
from .recovery import recover_all, refuse_if_rollback_failed
from .scope import Planned, check_scope
from .snapshots import capture_scope


def recover_first(ctx: Context, doing: str) -> bool:
    """Finish every earlier transaction before a new one starts (the caller holds
    the lock). Returns False, after saying so, when one could not be repaired;
    `doing` names what is then not done ("starting a new one", "undoing"). Raises
    DamagedError while an earlier rollback stays failed."""
    if recover_all(ctx) == EXIT_OK:
        refuse_if_rollback_failed(ctx)
        return True
    ctx.log(f"hs-tx: an earlier transaction could not be repaired; not {doing}")
    return False


def open_transaction(ctx: Context, lock: StateLock, kind: Kind) -> int:
    """Open a transaction row of `kind` (state open, durable), name it in the lock
    file, and return its id. Logging that it opened is the caller's."""
    user, host = who()
    tx_id = ctx.journal.begin(kind, ctx.argv, user, host)
    lock.set_holder(tx_id)
    return tx_id


def snapshot_scope(
    ctx: Context, tx_id: int, planned: list[Planned], plan: dict[str, Any] | None = None
) -> None:
    """Journal the planned scope (its paths, plus what `plan` adds), check it and
    snapshot it; state `snapshotted`. Changes nothing on the system.

    Raises ScopeError / NoSpaceError when a path may not be snapshotted.
    """
    detail = {"paths": [str(p.path) for p in planned], **(plan or {})}
    ctx.journal.event(tx_id, Phase.PLAN, Step.SCOPE, Status.DONE, detail)
    entries = check_scope(ctx.config, planned, ctx.log)
    capture_scope(ctx.config, ctx.journal, tx_id, entries)
    ctx.journal.set_state(tx_id, State.SNAPSHOTTED)
