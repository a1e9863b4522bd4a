"""`hs-tx prune --orphans`."""

from __future__ import annotations

import argparse

from ..base.errors import UsageError
from ..commands.context import Context
from ..commands.prune import prune_orphans


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], text: str) -> None:
    """Add the `prune` subcommand."""
    p = sub.add_parser("prune", help=text)
    p.add_argument(
        "--orphans", action="store_true", help="the orphaned snapshots hs-tx status lists"
    )
    p.add_argument("--wait", action="store_true", help="wait for another run instead of exit 75")
    p.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Delete the orphans, printing each deleted path."""
    if not args.orphans:
        raise UsageError(
            "hs-tx prune needs --orphans",
            "retention of recorded snapshots is automatic ([snapshot] keep)",
        )
    done, code = prune_orphans(ctx, args.wait)
    for orphan in done:
        print(f"deleted {orphan.path} ({orphan.why})")
    return code
