"""`hs-tx recover`: finish every transaction an earlier run left unfinished."""

from __future__ import annotations

from ..base.errors import EXIT_OK
from ..core.context import Context
from ..core.recovery import recover_all


def recover(ctx: Context, wait: bool = False) -> int:
    """Recover under the lock (waiting for it with `wait`); the outcome is recorded
    for `hs-tx status`. Returns 0 when every transaction is final afterwards, 3
    otherwise; raises LockedError when another run holds the lock."""
    with ctx.lock(wait):
        code = recover_all(ctx, always_record=True)
    if code == EXIT_OK:
        ctx.log("hs-tx: every transaction is in a final state")
    return code
