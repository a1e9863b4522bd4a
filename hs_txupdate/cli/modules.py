"""`hs-tx modules list [--json]`, `hs-tx modules enable|disable NAME [--wait]`,
`hs-tx modules scope NAME [--json] [--forget PATH [--wait]]`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..commands.context import Context
from ..commands.modules import forget, list_modules, module_scope, set_enabled
from .table import table

HEADERS = ["Name", "Installed", "Source", "Enabled", "Group", "Last result"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], text: str) -> None:
    """Add the `modules` subcommand with its `list`, `enable`, `disable`, `scope` actions."""
    p = sub.add_parser("modules", help=text)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="installed modules, versions, last results")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(run=run_list)
    for action in ("enable", "disable"):
        q = actions.add_parser(action, help=f"{action} a module (in a journaled transaction)")
        q.add_argument("name", metavar="NAME", help="the module's directory name")
        q.add_argument(
            "--wait", action="store_true", help="wait for another run instead of exit 75"
        )
        q.set_defaults(run=run_set, enabled=action == "enable")
    scope = actions.add_parser("scope", help="the paths a module's runs snapshot, and why")
    scope.add_argument("name", metavar="NAME", help="the module's directory name")
    scope.add_argument("--json", action="store_true", help="print one JSON document")
    scope.add_argument("--forget", metavar="PATH", help="drop a path learned from earlier runs")
    scope.add_argument("--wait", action="store_true", help="with --forget: wait for the lock")
    scope.set_defaults(run=run_scope)


def run_list(ctx: Context, args: argparse.Namespace) -> int:
    """Print the modules as a table, or as JSON with --json."""
    rows = list_modules(ctx)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print(f"no modules installed in {ctx.config.modules_dir}")
        return 0
    print(table([_cells(r) for r in rows], HEADERS))
    problems = [r for r in rows if r["problem"]]
    if problems:
        print("\nProblems:")
        for row in problems:
            print(f"  {row['name']}: {row['problem']}")
    return 0


def _cells(row: dict[str, Any]) -> list[str]:
    """One table row; '-' where a value is unknown or absent."""
    enabled = {True: "yes", False: "no", None: "?"}[row["enabled"]]
    last = row["last_result"]
    return [
        row["name"],
        row["installed_version"] or "-",
        row["source_version"] or "-",
        enabled,
        row["group"] or "-",
        f"{last['status']} (tx {last['tx']})" if last else "-",
    ]


def run_set(ctx: Context, args: argparse.Namespace) -> int:
    """Enable or disable one module; progress goes to stderr."""
    return set_enabled(ctx, args.name, args.enabled, args.wait)


def run_scope(ctx: Context, args: argparse.Namespace) -> int:
    """Print a module's scope with each path's origin, or forget a learned path."""
    if args.forget:
        return forget(ctx, args.name, args.forget, args.wait)
    rows = module_scope(ctx, args.name)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    cells = [[r["path"], r["origin"], "" if r["exists"] else "(absent)"] for r in rows]
    print(table(cells, ["Path", "Origin", ""]))
    return 0
