"""`hs-tx status [--json]`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..commands.context import Context
from ..commands.status import status
from .history import local_time


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], text: str) -> None:
    """Add the `status` subcommand."""
    p = sub.add_parser("status", help=text)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Print the status; exit 3 when something needs repair."""
    info, code = status(ctx)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render(info))
    return code


def _tx_line(tx: dict[str, Any]) -> str:
    line = f"transaction {tx['id']} ({tx['kind']}) {tx['state']}, {local_time(tx['started_at'])}"
    return line + (f": {tx['error']}" if tx["error"] else "")


def _running_line(running: dict[str, Any] | None) -> str:
    if running is None:
        return "nothing"
    line = f"pid {running['pid']}, transaction {running['tx'] or 'none yet'}"
    if running["phase"]:
        line += f", phase {running['phase']}"
    if running["module"]:
        line += f", module {running['module']}"
    return line


def render(info: dict[str, Any]) -> str:
    """The human-readable status."""
    lines = [f"state dir: {info['state_dir']}"]
    lines.append(f"running: {_running_line(info['running'])}")
    rec = info["last_recovery"]
    if rec is None:
        lines.append("last recovery: none recorded")
    else:
        what = ", ".join(f"{t['id']} {t['was']} -> {t['now']}" for t in rec["transactions"])
        verdict = "ok" if rec["exit_code"] == 0 else f"FAILED (exit {rec['exit_code']})"
        lines.append(
            f"last recovery: {local_time(rec['at'])} {verdict}; {what or 'nothing to recover'}"
        )
    for tx in info["unfinished"]:
        lines.append("UNFINISHED " + _tx_line(tx) + " (run: hs-tx recover)")
    for tx in info["rollback_failed"]:
        lines.append("ROLLBACK FAILED " + _tx_line(tx) + f" (see: hs-tx show {tx['id']})")
    last = info["last_transaction"]
    lines.append("last: " + (_tx_line(last) if last else "no transactions yet"))
    if info["journal_missing"]:
        lines.append(f"JOURNAL MISSING: {info['journal_missing']}")
    for orphan in info["orphan_snapshots"]:
        lines.append(f"ORPHANED SNAPSHOT {orphan['path']}: {orphan['why']}")
    if info["orphan_snapshots"] and not info["journal_missing"]:
        lines.append("  (no journal relies on them: hs-tx prune --orphans removes them)")
    space = info["snapshot_space"]
    if space is not None:
        count = len(space["transactions"])
        lines.append(
            f"kept snapshots: {space['bytes'] / (1 << 20):.1f} MiB held by {count}"
            f" transaction(s) (measured {local_time(space['at'])})"
        )
    for broken in info["broken_modules"]:
        lines.append(f"BROKEN MODULE {broken['name']}: {broken['problem']} (it does not run)")
    lines += _net_lines(info["net"])
    return "\n".join(lines)


def _net_lines(net: dict[str, Any]) -> list[str]:
    """The guarded network now, one line per link and default route."""
    if not net["guard"]:
        return ["network guard: off"]
    lines = ["network guard: on; guarded now:"] + [f"  {line}" for line in net["lines"]]
    if net["error"]:
        lines.append(f"  error: {net['error']}")
    return lines
