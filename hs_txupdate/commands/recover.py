"""`hs-tx recover`: finish every transaction an earlier run left unfinished."""

from __future__ import annotations

from ..base.errors import EXIT_OK
from ..core.context import Context
from ..core.recovery import accept_current as accept
from ..core.recovery import recover_all


def recover(ctx: Context, wait: bool = False, accept_current: bool = False) -> int:
    """Recover under the lock (waiting for it with `wait`): finish unfinished
    transactions and retry failed rollbacks, or, with `accept_current`, declare the
    current state good for every failed rollback (journaled). The outcome is
    recorded for `hs-tx status`. Returns 0 when every transaction is final and no
    rollback is left failed, 3 otherwise; raises LockedError when another run
    holds the lock."""
    with ctx.lock(wait):
        if accept_current:
            accept(ctx)
        code = recover_all(ctx, always_record=True, retry_failed=not accept_current)
    if code == EXIT_OK:
        ctx.log("hs-tx: every transaction is in a final state")
    return code
