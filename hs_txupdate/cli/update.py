"""`hs-tx update [--check [--json]] [--wait] [--progress=json|lines] [--allow-downgrade]
[--accept-rewritten-source]`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from ..base.errors import EXIT_DAMAGED, UsageError
from ..commands.check import CheckReport, check
from ..commands.context import Context
from ..commands.progress import PROGRESS, Progress
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
        report = check(ctx, wait=args.wait, allow_downgrade=args.allow_downgrade)
        if args.json:
            json.dump(asdict(report), sys.stdout, indent=2)
            sys.stdout.write("\n")
        elif args.log_format == "homeserver":
            print("\n".join(homeserver_check(report)))
        else:
            print(render_check(report))
        return EXIT_DAMAGED if report.leaked else 0
    if args.json:
        raise UsageError("--json goes with --check", "hs-tx update --progress=json for a run")
    options = UpdateOptions(
        wait=args.wait,
        allow_downgrade=args.allow_downgrade,
        accept_rewritten_source=args.accept_rewritten_source,
        progress=Progress(args.progress, sys.stdout).event if args.progress else None,
    )
    return update(ctx, options)


def homeserver_check(report: CheckReport) -> list[str]:
    """The report as the HOMESERVER orchestrator's check-only mode words it, then what
    hs-tx adds: each module's own check, what it would write, the audit's proof."""
    lines = ["Check-only mode: detecting updates without applying..."]
    if report.self_update:
        lines.append(
            f"Orchestrator update available (hs-tx {report.self_update['installed']}"
            f" -> {report.self_update['source']})"
        )
    else:
        lines.append("Orchestrator is up to date")
    if report.schema:
        lines.append("Schema updates available:")
        lines += [f"  - {c['module']} (schema update needed)" for c in report.schema]
    else:
        lines.append("All module schemas are up to date")
    lines.append("Checking enabled modules for content updates...")
    for m in report.modules:
        said = m["error"] or json.dumps(m["result"], sort_keys=True)
        lines.append(f"  - {m['name']} module: {m['status']}: {said}")
        lines += [f"    would {c['change']}: {c['path']}" for c in m["would_write"]]
    lines += _audit_lines(report.audit)
    lines += [f"note: {note}" for note in report.notes]
    return lines


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
