"""`hs-tx update [--wait]`."""

from __future__ import annotations

import argparse

from ..core.context import Context
from ..core.update import update


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `update` subcommand."""
    p = sub.add_parser("update", help="run every enabled module in one transaction")
    p.add_argument("--wait", action="store_true", help="wait for another run instead of exit 75")
    p.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Run the update; progress goes to stderr."""
    return update(ctx, wait=args.wait)
