"""`hs-tx history [--json] [--limit N]`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime

from ..base.errors import EXIT_DAMAGED, DamagedError
from ..commands.context import Context
from ..commands.history import PAGE, history
from .table import table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], text: str) -> None:
    """Add the `history` subcommand."""
    p = sub.add_parser("history", help=text)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--limit", type=int, metavar="N", default=PAGE, help=f"show at most N (default {PAGE})"
    )
    p.set_defaults(run=run)


def local_time(iso: str | None) -> str:
    """An ISO 8601 time as local 'YYYY-MM-DD HH:MM:SS' (empty for None)."""
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    """A duration such as '4.2 s' or '3 min 5 s' (empty while running)."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Print the history as a table, or as JSON with --json."""
    malformed: list[DamagedError] = []
    rows = history(ctx, args.limit, malformed)
    for error in malformed:  # the rest is listed; these are named, and the exit says so
        print(f"hs-tx: error: {error}", file=sys.stderr)
    code = EXIT_DAMAGED if malformed else 0
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return code
    cells = [
        [
            r["id"],
            local_time(r["started_at"]),
            r["kind"] + (f" of {r['undoes']}" if r["undoes"] else ""),
            r["state"] + (f" (undone by {r['undone_by']})" if r["undone_by"] else ""),
            f"{r['modules_run']}/{r['modules_failed']}",
            format_duration(r["duration_s"]),
        ]
        for r in rows
    ]
    headers = ["ID", "Date and time", "Kind", "State", "Modules run/failed", "Duration"]
    print(table(cells, headers) if cells else "no transactions yet")
    if len(rows) + len(malformed) >= args.limit:
        print(f"hs-tx: the newest {args.limit} shown; --limit N shows more", file=sys.stderr)
    return code
