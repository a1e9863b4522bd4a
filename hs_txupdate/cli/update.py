"""`hs-tx update [--wait]`."""

from __future__ import annotations

import argparse

from ..core.context import Context
from ..core.update import UpdateOptions, update


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `update` subcommand."""
    p = sub.add_parser("update", help="run every enabled module in one transaction")
    p.add_argument("--wait", action="store_true", help="wait for another run instead of exit 75")
    p.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="install a module whose source version is lower than the installed one",
    )
    p.add_argument(
        "--accept-rewritten-source",
        action="store_true",
        help="go on when the source's history no longer holds the last applied commit",
    )
    p.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Run the update; progress goes to stderr."""
    options = UpdateOptions(
        wait=args.wait,
        allow_downgrade=args.allow_downgrade,
        accept_rewritten_source=args.accept_rewritten_source,
    )
    return update(ctx, options)
