"""How `hs-tx update --check` words its report: as hs-tx does, or as the HOMESERVER
orchestrator's check-only mode does."""

from __future__ import annotations

import json
from typing import Any

from ..commands.check import CheckReport
from .table import table


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
