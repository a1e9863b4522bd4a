"""`hs-tx show ID [--json]`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..commands.context import Context
from ..commands.history import describe_network, show
from .history import format_duration, local_time
from .table import table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], text: str) -> None:
    """Add the `show` subcommand."""
    p = sub.add_parser("show", help=text)
    p.add_argument("id", type=int, help="transaction id (see hs-tx history)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    """Print one transaction as text, or as JSON with --json."""
    tx = show(ctx, args.id)
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
    if tx.get("source_signer"):
        signed = tx["source_signer"]
        lines.append(f"  source    signed by {signed['signer']} ({signed['key']})")
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
                    _origin(p),
                ]
                for p in tx["paths"]
            ],
            ["Path", "Existed", "Backend", "Snapshot", "Changed", "Origin"],
        ),
    ]
    lines += ["", *render_outside(tx)]
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
    lines += ["", *render_net(tx["net"])]
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


def _origin(path: dict[str, Any]) -> str:
    origin = path.get("origin") or ""
    return f"{origin} ({path['added_by']})" if path.get("added_by") else origin


def render_outside(tx: dict[str, Any]) -> list[str]:
    """What the run changed outside its scope, and how the write audit watched."""
    audit = tx["audit"]
    if audit["method"] is None:
        return ["Write audit: none (the run changed nothing but its scope, or predates it)"]
    lines = [f"Write audit: {audit['method']}, {audit['others'] or 0} write(s) by other processes"]
    if audit["reason"]:
        lines.append(f"  note: {audit['reason']}")
    if tx["run_changes"]:
        rows = [[c["path"], _change(c), c["module"] or "(the run)"] for c in tx["run_changes"]]
        lines += ["Changed in the system scope:", _table(rows, ["Path", "Change", "Module"])]
    if not tx["outside_scope"]:
        return [*lines, "Changed outside the scope: nothing"]
    rows = [
        [
            o["path"],
            _change(o),
            o["module"] or "(the run)",
            {True: "yes", False: "NO", None: ""}[o["restored"]],
        ]
        for o in tx["outside_scope"]
    ]
    table = _table(rows, ["Path", "Change", "Module", "Restored"])
    return [*lines, "Changed outside the scope:", table]


def _change(change: dict[str, Any]) -> str:
    count = int(change["count"])
    return str(change["change"]) + (f" ({count} entries)" if count > 1 else "")


def render_net(net: dict[str, Any]) -> list[str]:
    """The network guard's part of `show`: states before and after, gate, changes."""
    if not net["guarded"]:
        return ["Network guard: not guarded (guard off, or the run stopped before the capture)"]
    lines = [f"Network guard: {net['outcome']} (interfaces: {', '.join(net['interfaces'])})"]
    if net["preflight"]:
        pre = net["preflight"]
        found = pre.get("error") or f"{pre['host']} via {pre.get('gateway') or 'on-link'}"
        lines.append(f"  preflight {pre['status']}: {found}")
    for title, state in (("before", net["before"]), ("after", net["after"])):
        if state is not None:
            lines += [f"  {title}:"] + [f"    {line}" for line in describe_network(state)]
    if net["gate"]:
        problems = "; ".join(net["gate"]["problems"]) or "the network held"
        lines.append(f"  gate {net['gate']['status']}: {problems}")
    if net["actions"]:
        lines.append("  changes made by the guard:")
        for action in net["actions"]:
            error = f" ({action['error']})" if action.get("error") else ""
            lines.append(f"    {action['status']:<7} {action['command']}{error}")
    if net["restored"] is not None:
        lines += ["  after the restore:"] + [
            f"    {line}" for line in describe_network(net["restored"])
        ]
    check = net["check"]
    if check and check["status"] == "failed":
        lines.append(f"  NOT RESTORED: {'; '.join(check['problems'])}")
        lines += ["  restore by hand:"] + [f"    {c}" for c in check["commands"]]
    return lines


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    return table(rows, headers=headers) if rows else "  (none)"
