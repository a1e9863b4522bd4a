"""`updates.utils.state_manager`: one backup per module, restorable by name.

Modules back up what they are about to change (files, service states, SQLite
databases) and restore it when their own update fails.

Under hs-tx (a worker with an orchestrator channel) a backup joins the running
transaction: the worker asks hs-tx, which adds every named path to the
transaction's scope and snapshots it (or notes that its snapshot already holds
it) before the call returns, journals the services' states, and copies the
databases through SQLite's backup API. There is no second, private copy: the
transaction's snapshots are the backup, and `restore_module_state` asks hs-tx
to put the paths back as they were at the backup call. A whole-run rollback,
recovery and undo restore them with the rest of the scope.

Run outside hs-tx (no channel), the manager keeps private copies as the
original does. Either way its index lives under `$HS_TX_STATE_DIR/statemanager/`
(every backup dir a module names, such as "/var/backups/updates", is
redirected there), which hs-tx never snapshots or restores (layout: _backups.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hs_txupdate.base import channel
from hs_txupdate.base.fsio import durable_write

from ._backups import (
    INDEX_NAME,
    FilePermissionInfo,
    ModuleBackupInfo,
    StateManagerError,
    capture_permissions,
    check_module_name,
    resolve_backup_dir,
    slot_copy_path,
    statemanager_root,
)
from ._files import (
    contains,
    copy_exact,
    fsync_tree,
    make_private_dirs,
    put_back,
    remove_path,
    sqlite_copy,
    swap_in,
    tree_checksum,
)
from ._in_transaction import IN_TRANSACTION, ask_restore, backup_in_transaction
from ._services import (
    CHANGE_TIMEOUT_S,
    restore_services,
    service_state,
    start_services,
    systemctl,
)
from .index import log_message


class StateManager:
    """Single-slot-per-module backups of files, service states and SQLite databases."""

    def __init__(self, backup_dir: str | os.PathLike[str] | None = None) -> None:
        """Given the backup dir a module asked for (None: the default).

        The real dir is resolve_backup_dir(backup_dir), created 0700 with
        any missing parents. Raises OSError when it cannot be created.
        """
        self.requested_dir = None if backup_dir is None else os.fspath(backup_dir)
        self.backup_root = resolve_backup_dir(backup_dir)
        make_private_dirs(self.backup_root)
        self.index_file = self.backup_root / INDEX_NAME

    # ------------------------------------------------------------ index

    def _slot(self, module_name: str) -> Path:
        return self.backup_root / f"{check_module_name(module_name)}_backup"

    def _load_index(self) -> dict[str, ModuleBackupInfo]:
        """Return the index; {} (after a warning) when missing or unreadable."""
        try:
            raw = json.loads(self.index_file.read_text(encoding="utf-8"))
            return {name: ModuleBackupInfo.from_dict(entry) for name, entry in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log_message(f"Failed to load module backup index {self.index_file}: {exc}", "WARNING")
            return {}

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the index for one read-modify-write."""
        fd = os.open(self.backup_root / ".module_backups.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _update_index(self, change: Callable[[dict[str, ModuleBackupInfo]], None]) -> None:
        """Apply `change` to the index and write it durably. Raises OSError."""
        with self._index_lock():
            index = self._load_index()
            change(index)
            data = {name: info.to_dict() for name, info in index.items()}
            durable_write(self.index_file, json.dumps(data, indent=2).encode())

    # ------------------------------------------------------------ backup

    def backup_module_state(
        self,
        module_name: str,
        description: str = "",
        files: list[str] | None = None,
        services: list[str] | None = None,
        databases: list[dict[str, str]] | None = None,
    ) -> bool:
        """Back up files, service states and databases into the module's slot.

        Replaces the module's previous backup (only once the new one is
        complete). Returns False when nothing was given or the backup could
        not be written; True otherwise, also when single items failed or
        were missing (each logged as a warning), as the original did.
        """
        files, services, databases = list(files or []), list(services or []), list(databases or [])
        if not (files or services or databases):
            log_message(f"No backup data specified for module {module_name}", "WARNING")
            return False
        if channel.available():
            return self._backup_in_transaction(module_name, description, files, services, databases)
        try:
            slot = self._slot(module_name)
            info = self._build_backup(module_name, description, slot, files, services, databases)
            self._update_index(lambda index: index.__setitem__(module_name, info))
        except (OSError, ValueError, TypeError) as exc:
            log_message(f"Failed to create backup for module {module_name}: {exc}", "ERROR")
            return False
        log_message(
            f"Backed up module {module_name} to {slot}: {len(files)} paths, "
            f"{len(services)} services, {len(databases)} databases"
        )
        return True

    def _backup_in_transaction(
        self,
        module_name: str,
        description: str,
        files: list[str],
        services: list[str],
        databases: list[dict[str, str]],
    ) -> bool:
        """Ask hs-tx to add the backup to the running transaction; index it on success."""
        info = backup_in_transaction(module_name, description, files, services, databases)
        if info is None:
            return False
        try:
            self._update_index(lambda index: index.__setitem__(module_name, info))
        except OSError as exc:
            log_message(f"Failed to index backup for module {module_name}: {exc}", "ERROR")
            return False
        return True

    def _build_backup(
        self,
        module_name: str,
        description: str,
        slot: Path,
        files: list[str],
        services: list[str],
        databases: list[dict[str, str]],
    ) -> ModuleBackupInfo:
        """Fill a staging slot, swap it in, and return its index entry. Raises OSError."""
        staging = slot.with_name(f".{slot.name}.new")
        remove_path(staging)
        make_private_dirs(staging)
        try:
            paths = [os.path.abspath(p) for p in files]
            absent = self._backup_files(staging, paths)
            self._backup_services(staging, services)
            self._backup_databases(staging, databases)
            present = [p for p in paths if p not in absent]
            permissions = [info.to_dict() for info in capture_permissions(present)]
            checksum = tree_checksum(staging)
            fsync_tree(staging)
            swap_in(staging, slot)
        except BaseException:
            remove_path(staging)
            raise
        stamp = int(time.time())
        return ModuleBackupInfo(
            module_name, stamp, description or f"backup_{stamp}", str(slot),
            paths, services, databases, checksum, permissions, absent,
        )  # fmt: skip

    def _backup_files(self, slot: Path, paths: list[str]) -> list[str]:
        """Copy each path exactly into `slot/files/`; return the paths that did not exist."""
        absent: list[str] = []
        for path in paths:
            if not os.path.lexists(path):
                log_message(f"Source file not found, recorded as absent: {path}", "WARNING")
                absent.append(path)
                continue
            if contains(path, statemanager_root()):
                # copying it would copy the backup into itself without end
                log_message(f"Not backing up {path}: it holds hs-tx's backups", "ERROR")
                continue
            target = slot_copy_path(slot, path)
            try:
                make_private_dirs(target.parent)
                copy_exact(path, target)
            except OSError as exc:
                log_message(f"Failed to back up {path}: {exc}", "WARNING")
                continue
            log_message(f"Backed up: {path}")
        return absent

    def _backup_services(self, slot: Path, services: list[str]) -> None:
        """Record each service's active/enabled state in `slot/services.json`."""
        if not services:
            return
        states = {service: service_state(service) for service in services}
        durable_write(slot / "services.json", json.dumps(states, indent=2).encode())
        log_message(f"Backed up {len(services)} service states")

    def _backup_databases(self, slot: Path, databases: list[dict[str, str]]) -> None:
        """Copy each SQLite database into `slot/databases/`; others are skipped."""
        for i, db in enumerate(databases):
            kind = str(db.get("type", "postgresql"))
            if kind != "sqlite":
                log_message(
                    f"Database {i} ({kind}) not backed up: hs-tx's StateManager copies "
                    "SQLite databases only",
                    "WARNING",
                )
                continue
            target = slot / "databases" / f"db_{i}.sqlite"
            try:
                make_private_dirs(target.parent)
                sqlite_copy(db["database"], target)
            except Exception as exc:  # sqlite3.Error is not imported at module level
                log_message(f"Failed to back up database {i}: {exc}", "WARNING")
                continue
            log_message(f"Backed up database {i} (sqlite)")

    # ------------------------------------------------------------ restore

    def restore_module_state(self, module_name: str) -> bool:
        """Put the module's files, databases, permissions and services back.

        Stops the services, restores every path exactly (content, owners,
        modes, times, xattrs; a path absent at backup time is removed) and the
        SQLite databases, then returns each service to its recorded
        enabled/active state.
        Returns True only when every step succeeded; failures are logged.
        """
        return self._restore(module_name, force_start=False)

    def restore_module_state_with_forced_service_start(self, module_name: str) -> bool:
        """Like restore_module_state, but starts every service at the end,
        whatever state was recorded. Returns True only when all steps succeeded."""
        return self._restore(module_name, force_start=True)

    def _restore(self, module_name: str, force_start: bool) -> bool:
        info = self.get_backup_info(module_name)
        if info is None:
            log_message(f"No backup found for module: {module_name}", "ERROR")
            return False
        if info.backup_dir.startswith(IN_TRANSACTION):
            return ask_restore(module_name, force_start)
        slot = self._slot(module_name)  # never a dir read from the index file
        if not slot.is_dir():
            log_message(f"Backup directory not found: {slot}", "ERROR")
            return False
        log_message(f"Restoring module state: {module_name}")
        for service in info.services:
            systemctl("stop", service, timeout=CHANGE_TIMEOUT_S)  # may already be stopped
        steps = [
            self._restore_files(slot, info),
            self._restore_databases(slot, info.databases),
        ]
        if force_start:
            steps.append(start_services(info.services))
        else:
            steps.append(restore_services(slot, info.services))
        if all(steps):
            log_message(f"Restored module {module_name}")
            return True
        log_message(f"Partial restore failure for module: {module_name}", "WARNING")
        return False

    def _restore_files(self, slot: Path, info: ModuleBackupInfo) -> bool:
        """Restore every backed-up path; True when all were put back."""
        ok = True
        for path in info.files:
            try:
                if path in info.absent_files:
                    if os.path.lexists(path):
                        remove_path(path)  # it did not exist when the backup was made
                        log_message(f"Removed {path} (absent at backup time)")
                    continue
                source = slot_copy_path(slot, path)
                if not os.path.lexists(source):
                    log_message(f"Backup copy of {path} not found", "WARNING")
                    ok = False
                    continue
                put_back(source, path)
                log_message(f"Restored: {path}")
            except OSError as exc:
                log_message(f"Failed to restore {path}: {exc}", "ERROR")
                ok = False
        return ok

    def _restore_databases(self, slot: Path, databases: list[dict[str, str]]) -> bool:
        """Copy each backed-up SQLite database back; True when all were restored."""
        ok = True
        for i, db in enumerate(databases):
            source = slot / "databases" / f"db_{i}.sqlite"
            if not source.is_file():
                log_message(f"No backup of database {i} to restore", "WARNING")
                ok = False
                continue
            try:
                Path(db["database"]).parent.mkdir(parents=True, exist_ok=True)
                sqlite_copy(source, db["database"])
            except Exception as exc:  # sqlite3.Error is not imported at module level
                log_message(f"Failed to restore database {i}: {exc}", "ERROR")
                ok = False
        return ok

    # ------------------------------------------------------------ queries

    def has_backup(self, module_name: str) -> bool:
        """Return whether the module has an indexed backup (in a transaction's
        snapshots, or in a slot that exists)."""
        try:
            info = self._load_index().get(module_name)
            if info is None:
                return False
            return info.backup_dir.startswith(IN_TRANSACTION) or self._slot(module_name).is_dir()
        except ValueError:
            return False

    def get_backup_info(self, module_name: str) -> ModuleBackupInfo | None:
        """Return the module's ModuleBackupInfo, or None when it has no backup."""
        return self._load_index().get(module_name)

    def list_module_backups(self) -> dict[str, ModuleBackupInfo]:
        """Return every module's ModuleBackupInfo, keyed by module name."""
        return self._load_index()

    def remove_module_backup(self, module_name: str) -> bool:
        """Delete the module's slot and index entry; False when it had none or on error."""
        if module_name not in self._load_index():
            log_message(f"No backup found for module: {module_name}", "WARNING")
            return False
        try:
            remove_path(self._slot(module_name))
            self._update_index(lambda index: _drop(index, module_name))
        except (OSError, ValueError) as exc:
            log_message(f"Failed to remove backup for module {module_name}: {exc}", "ERROR")
            return False
        log_message(f"Removed backup for module: {module_name}")
        return True


def _drop(index: dict[str, ModuleBackupInfo], module_name: str) -> None:
    index.pop(module_name, None)


def create_state_manager(backup_dir: str | os.PathLike[str] | None = None) -> StateManager:
    """Return a StateManager for `backup_dir` (redirected; see resolve_backup_dir)."""
    return StateManager(backup_dir)


def backup_module_simple(
    module_name: str,
    files: list[str] | None = None,
    services: list[str] | None = None,
    databases: list[dict[str, str]] | None = None,
) -> bool:
    """Back up into the default StateManager; returns backup_module_state's result."""
    return StateManager().backup_module_state(
        module_name, files=files, services=services, databases=databases
    )


def restore_module_simple(module_name: str) -> bool:
    """Restore from the default StateManager; returns restore_module_state's result."""
    return StateManager().restore_module_state(module_name)


__all__ = [
    "FilePermissionInfo",
    "ModuleBackupInfo",
    "StateManager",
    "StateManagerError",
    "backup_module_simple",
    "create_state_manager",
    "resolve_backup_dir",
    "restore_module_simple",
    "statemanager_root",
]
