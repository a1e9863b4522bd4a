"""`hs-tx modules list|status|components [--json]`, `hs-tx modules enable|disable NAME
[COMPONENT] [--wait]`, `hs-tx modules branch NAME BRANCH [--wait]`,
`hs-tx modules scope NAME [--json] [--forget PATH [--wait]]`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..commands.context import Context
from ..commands.module_config import set_branch, set_enabled
from ..commands.modules import (
    forget,
    list_modules,
    module_components,
    module_scope,
    module_status,
)
from .table import table

HEADERS = ["Name", "Installed", "Source", "Enabled", "Group", "Last result"]
STATUS_HEADERS = ["Name", "Enabled", "Installed", "Source", "Branch", "Last run", "Description"]
_YES = {True: "yes", False: "no", None: "?"}
_WORD = {True: "ENABLED", False: "DISABLED"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], text: str) -> None:
    """Add the `modules` subcommand and its actions."""
    p = sub.add_parser("modules", help=text)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="installed modules, versions, last results")
    _json(listing).set_defaults(run=run_list)
    status = actions.add_parser("status", help="each module's state, settings and last run")
    status.add_argument("name", metavar="NAME", nargs="?", help="only this module")
    _json(status).set_defaults(run=run_status)
    parts = actions.add_parser("components", help="a module's components, on or off")
    parts.add_argument("name", metavar="NAME", help="the module's directory name")
    _json(parts).set_defaults(run=run_components)
    for action in ("enable", "disable"):
        q = actions.add_parser(
            action, help=f"{action} a module or one of its components (journaled)"
        )
        q.add_argument("name", metavar="NAME", help="the module's directory name")
        q.add_argument("component", metavar="COMPONENT", nargs="?", help="only this component")
        _wait(q).set_defaults(run=run_set, enabled=action == "enable")
    branch = actions.add_parser(
        "branch", help="the branch of a module's own app repository (journaled)"
    )
    branch.add_argument("name", metavar="NAME", help="the module's directory name")
    branch.add_argument("branch", metavar="BRANCH", help="a branch the repository has")
    _wait(branch).set_defaults(run=run_branch)
    scope = actions.add_parser("scope", help="the paths a module's runs snapshot, and why")
    scope.add_argument("name", metavar="NAME", help="the module's directory name")
    scope.add_argument("--forget", metavar="PATH", help="drop a path learned from earlier runs")
    scope.add_argument("--wait", action="store_true", help="with --forget: wait for the lock")
    _json(scope).set_defaults(run=run_scope)


def _json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p


def _wait(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--wait", action="store_true", help="wait for another run instead of exit 75")
    return p


def _dump(rows: Any) -> int:
    json.dump(rows, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def run_list(ctx: Context, args: argparse.Namespace) -> int:
    """Print the modules as a table, as JSON with --json, or as the orchestrator listed
    them with --log-format homeserver."""
    if args.log_format == "homeserver" and not args.json:
        return _homeserver_list(module_status(ctx))
    rows = list_modules(ctx)
    if args.json:
        return _dump(rows)
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
    last = row["last_result"]
    return [
        row["name"],
        row["installed_version"] or "-",
        row["source_version"] or "-",
        _YES[row["enabled"]],
        row["group"] or "-",
        f"{last['status']} (tx {last['tx']})" if last else "-",
    ]


def run_status(ctx: Context, args: argparse.Namespace) -> int:
    """Print every module's status as a table, one module's in full, or JSON."""
    rows = module_status(ctx, args.name)
    if args.json:
        return _dump(rows)
    if args.log_format == "homeserver":
        if args.name is None:
            return _homeserver_list(rows)
        print("\n".join(_homeserver_status(rows[0])))
        return 0
    if args.name is not None:
        print("\n".join(_status_lines(rows[0])))
        return 0
    if not rows:
        print(f"no modules installed in {ctx.config.modules_dir}")
        return 0
    print(table([_status_cells(r) for r in rows], STATUS_HEADERS))
    return 0


def _last_run(row: dict[str, Any]) -> str:
    last = row["last_run"]
    return f"{last['status']} (tx {last['tx']})" if last else "-"


def _status_cells(row: dict[str, Any]) -> list[str]:
    return [
        row["name"],
        _YES[row["enabled"]],
        row["version"] or "-",
        row["source_version"] or "-",
        row["branch"] or "-",
        _last_run(row),
        (row["description"] or row["problem"] or "-")[:50],
    ]


def _status_lines(row: dict[str, Any]) -> list[str]:
    """One module's status, a field a line."""
    branch = row["branch"]
    shown = f"{branch} (default {row['default_branch']})" if branch else "-"
    lines = [
        f"Module:         {row['name']}",
        f"Enabled:        {_YES[row['enabled']]}",
        f"Installed:      {row['version'] or '-'}",
        f"Source:         {row['source_version'] or '- (no fetched source)'}",
        f"Branch:         {shown}",
        f"Description:    {row['description'] or '-'}",
    ]
    last = row["last_run"]
    if last:
        lines.append(f"Last run:       {last['status']} in transaction {last['tx']}, {last['at']}")
    else:
        lines.append("Last run:       never")
    if row["problem"]:
        lines.append(f"Problem:        {row['problem']}")
    if row["components"]:
        lines.append("Components:")
        lines += [f"  {line}" for line in _component_lines(row["components"])]
    return lines


def _homeserver_list(rows: list[dict[str, Any]]) -> int:
    """The modules as the HOMESERVER orchestrator lists them (its Admin UI parses these
    lines): `NAME ENABLED|DISABLED vVERSION [BRANCH branch default_branch] description`,
    then the total; a module whose index.json is unusable is a warning instead."""
    usable = [r for r in rows if r["problem"] is None]
    for row in rows:
        if row["problem"] is not None:
            print(f"hs-tx: warning: {row['problem']}", file=sys.stderr)
    print("Available modules:")
    for row in usable:
        words = [row["name"], _WORD[row["enabled"] is not False], f"v{row['version']}"]
        if row["branch"]:
            words += ["BRANCH", row["branch"], row["default_branch"]]
        words.append(row["description"] or "No description")
        print(" ".join(words))
    enabled = sum(1 for r in usable if r["enabled"] is not False)
    total = len(usable)
    print(f"Total: {total} modules ({enabled} enabled, {total - enabled} disabled)")
    return 0


def _homeserver_status(row: dict[str, Any]) -> list[str]:
    """One module as the HOMESERVER orchestrator shows it, and what hs-tx adds."""
    lines = [
        f"Module: {row['name']}",
        f"Status: {_WORD[row['enabled'] is not False]}",
        f"Version: {row['version'] or 'unknown'}",
        f"Source version: {row['source_version'] or 'unknown'}",
    ]
    if row["branch"]:
        lines.append(f"Branch: {row['branch']} (default {row['default_branch']})")
    lines.append(f"Description: {row['description'] or 'No description'}")
    last = row["last_run"]
    done = f"{last['status']} in transaction {last['tx']} at {last['at']}" if last else "never"
    lines.append(f"Last run: {done}")
    if row["components"]:
        lines.append("Components:")
        for part in row["components"]:
            word = _WORD[part["enabled"] is not False]
            text = part["description"] or "No description"
            lines.append(f"  {part['name']:<15} {word:<10} {text}")
    return lines


def _component_lines(rows: list[dict[str, Any]]) -> list[str]:
    cells = [[r["name"], _YES[r["enabled"]], r["description"] or ""] for r in rows]
    return table(cells, ["Component", "Enabled", "Description"]).splitlines()


def run_components(ctx: Context, args: argparse.Namespace) -> int:
    """Print a module's components, or JSON."""
    rows = module_components(ctx, args.name)
    if args.json:
        return _dump(rows)
    if not rows:
        print(f"module {args.name} has no components")
        return 0
    print("\n".join(_component_lines(rows)))
    return 0


def run_set(ctx: Context, args: argparse.Namespace) -> int:
    """Enable or disable one module or component; progress goes to stderr."""
    return set_enabled(ctx, args.name, args.enabled, args.wait, args.component)


def run_branch(ctx: Context, args: argparse.Namespace) -> int:
    """Set the branch of a module's app repository; progress goes to stderr."""
    return set_branch(ctx, args.name, args.branch, args.wait)


def run_scope(ctx: Context, args: argparse.Namespace) -> int:
    """Print a module's scope with each path's origin, or forget a learned path."""
    if args.forget:
        return forget(ctx, args.name, args.forget, args.wait)
    rows = module_scope(ctx, args.name)
    if args.json:
        return _dump(rows)
    cells = [[r["path"], r["origin"], "" if r["exists"] else "(absent)"] for r in rows]
    print(table(cells, ["Path", "Origin", ""]))
    return 0
