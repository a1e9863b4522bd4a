"""`hs-tx show ID [--json]`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tabulate import tabulate

from ..core.context import Context
from ..core.query import detail
from .history import format_duration, local_time


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `show` subcommand."""
    p = sub.add_parser("show", help="everything journaled about one transaction")
    p.add_argument("id", type=int, help="transaction id (see hs-tx history)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Print one transaction as text, or as JSON with --json."""
    tx = detail(ctx, args.id)
    if args.json:
        json.dump(tx, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(render(tx))
    return 0


def render(tx: dict[str, Any]) -> str:
    """The human-readable report of one transaction."""
    lines = [
        f"Transaction {tx['id']} ({tx['kind']}): {tx['state']}",
        f"  started   {local_time(tx['started_at'])}   finished {local_time(tx['finished_at'])}"
        f"   duration {format_duration(tx['duration_s'])}",
        f"  by        {tx['user']}@{tx['host']}: {' '.join(tx['command'])}",
        f"  exit code {tx['exit_code']}",
    ]
    if tx["undoes"]:
        lines.append(f"  undoes    transaction {tx['undoes']}")
    if tx["undone_by"]:
        lines.append(f"  undone by transaction {tx['undone_by']}")
    if tx["error"]:
        lines.append(f"  error     {tx['error']}")
    if tx["snapshots_pruned_at"]:
        lines.append(f"  snapshots deleted by retention at {local_time(tx['snapshots_pruned_at'])}")
    lines += [
        "",
        "Paths:",
        _table(
            [
                [
                    p["path"],
                    "yes" if p["existed"] else "no",
                    p["backend"],
                    p["snapshot"] or "",
                    {True: "yes", False: "no", None: ""}[p["changed"]],
                ]
                for p in tx["paths"]
            ],
            ["Path", "Existed", "Backend", "Snapshot", "Changed"],
        ),
    ]
    lines += [
        "",
        "Modules:",
        _table(
            [
                [
                    m["name"],
                    m["version_from"],
                    m["version_to"],
                    m["status"],
                    format_duration(m["duration_s"]),
                    m["error"] or "",
                ]
                for m in tx["modules"]
            ],
            ["Module", "From", "To", "Status", "Duration", "Error"],
        ),
    ]
    for m in tx["modules"]:
        if m["output_tail"]:
            lines += ["", f"Output of {m['name']} (last lines):"]
            lines += ["  " + line for line in m["output_tail"].rstrip("\n").split("\n")]
    lines += [
        "",
        "Events:",
        _table(
            [
                [
                    e["seq"],
                    local_time(e["at"]),
                    e["phase"],
                    e["step"],
                    e["status"],
                    json.dumps(e["detail"]) if e["detail"] else "",
                ]
                for e in tx["events"]
            ],
            ["Seq", "At", "Phase", "Step", "Status", "Detail"],
        ),
    ]
    return "\n".join(lines)


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="simple") if rows else "  (none)"
