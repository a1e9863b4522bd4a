"""`hs-tx recover`."""

from __future__ import annotations

import argparse

from ..core.context import Context
from ..core.recovery import recover_all


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `recover` subcommand."""
    p = sub.add_parser("recover", help="finish transactions an earlier run left unfinished")
    p.add_argument("--wait", action="store_true", help="wait for another run instead of exit 75")
    p.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Recover under the lock; 0 when everything is final afterwards, 3 otherwise."""
    with ctx.lock(args.wait):
        code = recover_all(ctx, always_record=True)
    if code == 0:
        ctx.log("hs-tx: every transaction is in a final state")
    return code
