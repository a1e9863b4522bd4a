"""StateManager backups under hs-tx: asking the orchestrator to add them to the running
transaction, and to put them back (see state_manager.py)."""

from __future__ import annotations

import os
import time
from typing import Any

from hs_txupdate.base import channel

from ._backups import ModuleBackupInfo, capture_permissions
from .index import log_message

IN_TRANSACTION = "hs-tx transaction"  # backup_dir of a backup held by a transaction


def backup_in_transaction(
    module_name: str,
    description: str,
    files: list[str],
    services: list[str],
    databases: list[dict[str, str]],
) -> ModuleBackupInfo | None:
    """Ask hs-tx to snapshot `files`, record `services` and copy `databases` in the
    running transaction; return the index entry, or None (logged) when it refused."""
    paths = [os.path.abspath(p) for p in files]
    request = {
        "op": "backup",
        "name": module_name,
        "description": description,
        "files": paths,
        "services": services,
        "databases": databases,
    }
    reply = _ask(request)
    if not reply.get("ok"):
        log_message(f"Failed to create backup for module {module_name}: {reply.get('error')}")
        return None
    absent = [str(p) for p in reply.get("absent", [])]
    present = [p for p in paths if p not in absent]
    stamp = int(time.time())
    log_message(
        f"Backed up module {module_name} in hs-tx transaction {reply.get('tx')}: "
        f"{len(paths)} paths, {len(services)} services, {len(databases)} databases"
    )
    return ModuleBackupInfo(
        module_name, stamp, description or f"backup_{stamp}",
        f"{IN_TRANSACTION} {reply.get('tx')}", paths, services, databases, "",
        [i.to_dict() for i in capture_permissions(present)], absent,
    )  # fmt: skip


def _ask(request: dict[str, Any]) -> dict[str, Any]:
    """Ask hs-tx; its log lines go to the module's output. A lost orchestrator is an
    unsuccessful reply."""
    try:
        reply = channel.ask(request)
    except channel.ChannelError as exc:
        return {"ok": False, "error": str(exc)}
    for line in reply.get("log", []):
        log_message(str(line), "ERROR" if not reply.get("ok") else "INFO")
    return reply


def ask_restore(module_name: str, force_start: bool) -> bool:
    """Ask hs-tx to put back what the backup `module_name` holds, as it was then."""
    if not channel.available():
        log_message(
            f"The backup of {module_name} is in hs-tx's snapshots; only a module run by "
            "hs-tx can restore it (see hs-tx history and hs-tx undo)",
            "ERROR",
        )
        return False
    reply = _ask({"op": "restore", "name": module_name, "force_start": force_start})
    if not reply.get("ok"):
        log_message(f"Failed to restore module {module_name}: {reply.get('error')}", "ERROR")
        return False
    log_message(f"Restored module {module_name}")
    return True
