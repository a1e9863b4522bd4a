"""`hs-tx undo ID [--cascade] [--force] [--wait]`."""

from __future__ import annotations

import argparse

from ..commands.context import Context
from ..commands.undo import UndoOptions, undo


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], text: str) -> None:
    """Add the `undo` subcommand."""
    p = sub.add_parser("undo", help=text)
    p.add_argument("id", type=int, help="transaction id (see hs-tx history)")
    p.add_argument(
        "--cascade",
        action="store_true",
        help="also undo the later transactions that changed the same paths, newest first",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="undo even paths that changed outside hs-tx since (those changes are lost)",
    )
    p.add_argument("--wait", action="store_true", help="wait for another run instead of exit 75")
    p.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Undo; progress on stderr."""
    options = UndoOptions(cascade=args.cascade, force=args.force, wait=args.wait)
    return undo(ctx, args.id, options)
