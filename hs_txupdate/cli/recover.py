"""`hs-tx recover`."""

from __future__ import annotations

import argparse

from ..commands.context import Context
from ..commands.recover import recover


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], text: str) -> None:
    """Add the `recover` subcommand."""
    p = sub.add_parser("recover", help=text)
    p.add_argument("--wait", action="store_true", help="wait for another run instead of exit 75")
    p.add_argument(
        "--accept-current",
        action="store_true",
        help="declare the current state good for every failed rollback (journaled)",
    )
    p.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Recover under the lock; 0 when everything is final afterwards, 3 otherwise."""
    return recover(ctx, args.wait, args.accept_current)
