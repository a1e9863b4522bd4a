"""`hs-tx update [--check [--json]] [--wait] [--progress=json|lines] [--allow-downgrade]
[--accept-rewritten-source]`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from ..base.errors import EXIT_DAMAGED, UsageError
from ..commands.context import Context
from ..commands.progress import PROGRESS, Progress
from ..commands.update import UpdateOptions, update


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], text: str) -> None:
    """Add the `update` subcommand."""
    p = sub.add_parser("update", help=text)
    p.add_argument(
        "--check",
        action="store_true",
        help="report what an update would do and run the modules' checks; change nothing",
    )
    p.add_argument("--wait", action="store_true", help="wait for another run instead of exit 75")
    p.add_argument(
        "--progress",
        choices=PROGRESS,
        help="one line per step on stdout: json (for a progress bar) or lines (for a log)",
    )
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
    p.add_argument("--json", action="store_true", help="with --check: print one JSON document")
    p.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Run the update (progress on stderr), or with --check print what it would do."""
    if args.check:
        return _check(ctx, args)
    if args.json:
        raise UsageError("--json goes with --check", "hs-tx update --progress=json for a run")
    options = UpdateOptions(
        wait=args.wait,
        allow_downgrade=args.allow_downgrade,
        accept_rewritten_source=args.accept_rewritten_source,
        progress=Progress(args.progress, sys.stdout).event if args.progress else None,
    )
    return update(ctx, options)


def _check(ctx: Context, args: argparse.Namespace) -> int:
    """`update --check`: print the report (imported here: an update never needs it)."""
    from ..commands.check import check
    from .checkreport import homeserver_check, render_check

    report = check(ctx, wait=args.wait, allow_downgrade=args.allow_downgrade)
    if args.json:
        json.dump(asdict(report), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.log_format == "homeserver":
        print("\n".join(homeserver_check(report)))
    else:
        print(render_check(report))
    return EXIT_DAMAGED if report.leaked else 0
