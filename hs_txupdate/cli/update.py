"""`hs-tx update [--check] [--wait] [--allow-downgrade] [--accept-rewritten-source]`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..base.errors import EXIT_DAMAGED
from ..commands.check import CheckReport, check
from ..commands.context import Context
from ..commands.update import UpdateOptions, update
from .table import table


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
    """Run the update (progress on stderr), or with --check print what it would do."""
    if args.check:
        report = check(ctx, wait=args.wait, allow_downgrade=args.allow_downgrade)
        print(render_check(report))
        return EXIT_DAMAGED if report.leaked else 0
    options = UpdateOptions(
        wait=args.wait,
        allow_downgrade=args.allow_downgrade,
        accept_rewritten_source=args.accept_rewritten_source,
    )
    return update(ctx, options)


def render_check(report: CheckReport) -> str:
    """The human-readable report of `update --check`."""
    lines = ["Phase 1 would install:"]
    rows = [[c["module"], c["installed"] or "(new)", c["source"]] for c in report.schema]
    lines.append(table(rows, ["Module", "Installed", "Source"]) if rows else "  nothing")
    if report.self_update:
        lines.append(
            f"Phase 3 would update hs-tx {report.self_update['installed']}"
            f" -> {report.self_update['source']}"
        )
    lines += ["", "Module checks (in a throwaway copy of the system; nothing was kept):"]
    checks = [
        [m["name"], m["status"], m["error"] or json.dumps(m["result"], sort_keys=True)]
        for m in report.modules
    ]
    lines.append(table(checks, ["Module", "Status", "Result"]) if checks else "  no modules")
    for m in report.modules:
        lines += [f"{m['name']} would {c['change']:>8}: {c['path']}" for c in m["would_write"]]
        lines += [f"{m['name']} would run: {call}" for call in m["services"]]
    lines += _audit_lines(report.audit)
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def _audit_lines(audit: dict[str, Any]) -> list[str]:
    """What the write audit proved about the real filesystems."""
    leaked = audit.get("leaked", [])
    if audit.get("method") != "fanotify":
        why = audit.get("reason") or "fanotify could not be used"
        found = f"; {len(leaked)} path(s) changed meanwhile, by the checks or not" if leaked else ""
        return [f"note: the write audit could only scan ({why}){found}"]
    if not leaked:
        return ["write audit: no write of a check reached the real filesystems"]
    lines = [f"FAILED: {len(leaked)} write(s) of a check reached the real filesystems:"]
    return lines + [f"  {c['module'] or '?'} {c['change']} {c['path']}" for c in leaked]
