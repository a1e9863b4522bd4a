"""`updates.utils.state_manager`: one backup slot per module, restorable by name.

Modules back up what they are about to change (files, service states, SQLite
databases) and restore it when their own update fails. Under hs-tx the backups
must live outside the transaction's scope, or a rollback would also roll the
backups back; so every backup dir, the default and any a module names (such as
"/var/backups/updates"), is redirected under `$HS_TX_STATE_DIR/statemanager/`,
which hs-tx never snapshots or restores. Layout of one root:

    module_backups.json            index: module name -> ModuleBackupInfo
    <module>_backup/files/<abs path without leading />
    <module>_backup/services.json  {service: {active, enabled, enabled_state}}
    <module>_backup/databases/db_<i>.sqlite
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ._files import (
    copy_exact,
    fsync_dir,
    fsync_tree,
    group_name,
    is_real_dir,
    make_private_dirs,
    remove_path,
    tree_checksum,
    user_name,
    write_durably,
)
from .index import log_message

STATE_DIR_ENV = "HS_TX_STATE_DIR"
DEFAULT_STATE_DIR = "/var/lib/hs-tx"
INDEX_NAME = "module_backups.json"
QUERY_TIMEOUT_S = 30  # systemctl is-active / is-enabled
CHANGE_TIMEOUT_S = 120  # systemctl start / stop / enable / disable


class StateManagerError(Exception):
    """A state manager operation failed (kept for modules that name it)."""


@dataclass
class FilePermissionInfo:
    """Owner and mode of one path, as recorded at backup time (lstat, not stat).

    Kept in the index for modules that read it; a restore needs no separate
    permission step, because the backup copies carry owners and modes.
    """

    path: str
    mode: int
    uid: int
    gid: int
    owner: str
    group: str

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilePermissionInfo:
        """Build from a dict written by to_dict; raises TypeError/KeyError if malformed."""
        return cls(**_known_fields(cls, data))


@dataclass
class ModuleBackupInfo:
    """What one module's backup slot holds.

    `absent_files` (hs-tx addition) lists paths that did not exist at backup
    time; a restore removes them again, so the paths are back as they were.
    """

    module_name: str
    timestamp: int
    description: str
    backup_dir: str
    files: list[str]
    services: list[str]
    databases: list[dict[str, str]]
    checksum: str
    file_permissions: list[dict[str, Any]] = field(default_factory=list)
    absent_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModuleBackupInfo:
        """Build from a dict (older entries may lack the last fields); raises TypeError."""
        return cls(**_known_fields(cls, data))


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


# ---------------------------------------------------------------- where backups live


def statemanager_root() -> Path:
    """Return `$HS_TX_STATE_DIR/statemanager` (/var/lib/hs-tx/statemanager without it)."""
    state_dir = os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return Path(os.path.abspath(state_dir)) / "statemanager"


def resolve_backup_dir(backup_dir: str | os.PathLike[str] | None) -> Path:
    """Return where a StateManager given `backup_dir` really keeps its backups.

    None gives the statemanager root itself. Any other path is made absolute
    and normalised, then placed under the root with its leading "/" dropped
    ("/var/backups/updates" -> "<root>/var/backups/updates"), so it never
    lands in a transaction's scope. A path already under the root is kept.
    """
    root = statemanager_root()
    if backup_dir is None:
        return root
    given = Path(os.path.abspath(os.fspath(backup_dir)))
    if given == root or root in given.parents:
        return given
    return root.joinpath(*given.parts[1:])


def _check_module_name(module_name: str) -> str:
    """Return `module_name` when it is safe as one path component; raise ValueError."""
    if not module_name or module_name in (".", "..") or "/" in module_name or "\0" in module_name:
        raise ValueError(f"invalid module name for a backup: {module_name!r}")
    return module_name


# ---------------------------------------------------------------- systemctl


def _systemctl(*args: str, timeout: float) -> subprocess.CompletedProcess[str] | None:
    """Run `systemctl ARGS`; return the result, or None when systemctl cannot be run."""
    try:
        return subprocess.run(
            ["systemctl", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log_message(f"systemctl {' '.join(args)} could not run: {exc}", "WARNING")
        return None


def _systemctl_ok(*args: str) -> bool:
    """Run a state-changing systemctl command; log and return False when it fails."""
    result = _systemctl(*args, timeout=CHANGE_TIMEOUT_S)
    if result is not None and result.returncode == 0:
        log_message(f"systemctl {' '.join(args)}: done")
        return True
    if result is None:
        why = "systemctl unreachable"
    else:
        why = result.stderr.strip() or f"exit status {result.returncode}"
    log_message(f"systemctl {' '.join(args)} failed: {why}", "ERROR")
    return False


def service_state(service: str) -> dict[str, Any]:
    """Return `{"active": bool, "enabled": bool, "enabled_state": str}` for a unit.

    An unreachable systemctl (not installed, no systemd, timed out) counts as
    inactive and not enabled, with enabled_state "unknown" (a restore then
    leaves the unit's enablement alone).
    """
    active = _systemctl("is-active", service, timeout=QUERY_TIMEOUT_S)
    enabled = _systemctl("is-enabled", service, timeout=QUERY_TIMEOUT_S)
    enabled_state = enabled.stdout.strip() if enabled is not None else "unknown"
    return {
        "active": active is not None and active.stdout.strip() == "active",
        "enabled": enabled_state == "enabled",
        "enabled_state": enabled_state,
    }


# ---------------------------------------------------------------- SQLite


def _sqlite_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy SQLite database `source` into `target` through SQLite's backup API.

    Unlike a file copy this is consistent while the database is in use, and
    restoring this way leaves no stale WAL beside the target. The source must
    exist. Raises OSError or sqlite3.Error.
    """
    import sqlite3  # only modules that back up databases pay for it

    if not os.path.isfile(source):
        raise FileNotFoundError(f"no database file {source}")
    src = sqlite3.connect(f"{Path(source).absolute().as_uri()}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(os.fspath(target))
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


# ---------------------------------------------------------------- the manager


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
        return self.backup_root / f"{_check_module_name(module_name)}_backup"

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
            write_durably(self.index_file, json.dumps(data, indent=2).encode())

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
            permissions = [info.to_dict() for info in _capture_permissions(present)]
            checksum = tree_checksum(staging)
            fsync_tree(staging)
            _swap_in(staging, slot)
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
            if _contains(path, statemanager_root()):
                # copying it would copy the backup into itself without end
                log_message(f"Not backing up {path}: it holds hs-tx's backups", "ERROR")
                continue
            target = _slot_copy_path(slot, path)
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
        write_durably(slot / "services.json", json.dumps(states, indent=2).encode())
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
                _sqlite_copy(db["database"], target)
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
        slot = self._slot(module_name)  # never a dir read from the index file
        if not slot.is_dir():
            log_message(f"Backup directory not found: {slot}", "ERROR")
            return False
        log_message(f"Restoring module state: {module_name}")
        for service in info.services:
            _systemctl("stop", service, timeout=CHANGE_TIMEOUT_S)  # may already be stopped
        steps = [
            self._restore_files(slot, info),
            self._restore_databases(slot, info.databases),
        ]
        if force_start:
            steps.append(_start_services(info.services))
        else:
            steps.append(_restore_services(slot, info.services))
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
                source = _slot_copy_path(slot, path)
                if not os.path.lexists(source):
                    log_message(f"Backup copy of {path} not found", "WARNING")
                    ok = False
                    continue
                _put_back(source, path)
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
                _sqlite_copy(source, db["database"])
            except Exception as exc:  # sqlite3.Error is not imported at module level
                log_message(f"Failed to restore database {i}: {exc}", "ERROR")
                ok = False
        return ok

    # ------------------------------------------------------------ queries

    def has_backup(self, module_name: str) -> bool:
        """Return whether the module has an indexed backup whose slot exists."""
        try:
            return module_name in self._load_index() and self._slot(module_name).is_dir()
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
            self._update_index(lambda index: index.pop(module_name, None))
        except (OSError, ValueError) as exc:
            log_message(f"Failed to remove backup for module {module_name}: {exc}", "ERROR")
            return False
        log_message(f"Removed backup for module: {module_name}")
        return True


# ---------------------------------------------------------------- file helpers


def _contains(outer: str, inner: Path) -> bool:
    """True when `inner` is `outer` or lies below it."""
    outer_path = Path(outer)
    return inner == outer_path or outer_path in inner.parents


def _slot_copy_path(slot: Path, path: str) -> Path:
    """Where the copy of absolute `path` lives inside a slot."""
    return slot / "files" / path.lstrip("/")


def _swap_in(staging: Path, slot: Path) -> None:
    """Replace `slot` with the complete `staging` dir; the old slot is deleted after."""
    old = slot.with_name(f".{slot.name}.old")
    remove_path(old)
    if os.path.lexists(slot):
        os.rename(slot, old)
    os.rename(staging, slot)
    fsync_dir(slot.parent)
    remove_path(old)


def _put_back(source: Path, path: str) -> None:
    """Replace the live `path` with an exact copy of `source`.

    The copy is made beside the target first, then renamed into place, so the
    target is never half-written; a directory is swapped out and then deleted.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.hs-tx-restore")
    old = target.with_name(f".{target.name}.hs-tx-old")
    remove_path(tmp)
    copy_exact(source, tmp)
    if os.path.lexists(target) and (is_real_dir(target) or is_real_dir(tmp)):
        remove_path(old)
        os.rename(target, old)
        os.rename(tmp, target)
        remove_path(old)
    else:
        os.replace(tmp, target)  # atomic for files and symlinks
    fsync_dir(target.parent)


def _permission_info(path: str) -> FilePermissionInfo:
    st = os.lstat(path)
    owner, group = str(user_name(st.st_uid)), str(group_name(st.st_gid))
    return FilePermissionInfo(path, st.st_mode, st.st_uid, st.st_gid, owner, group)


def _capture_permissions(paths: list[str]) -> list[FilePermissionInfo]:
    """Record owner and mode of each path and, for real dirs, everything below it."""
    infos: list[FilePermissionInfo] = []
    for path in paths:
        try:
            infos.append(_permission_info(path))
            if is_real_dir(path):
                for dirpath, dirnames, filenames in os.walk(path):
                    names = dirnames + filenames
                    infos += [_permission_info(os.path.join(dirpath, n)) for n in names]
        except OSError as exc:
            log_message(f"Failed to record permissions under {path}: {exc}", "WARNING")
    log_message(f"Captured permissions for {len(infos)} files/directories")
    return infos


# ---------------------------------------------------------------- service helpers


def _restore_services(slot: Path, services: list[str]) -> bool:
    """Return each service to its recorded enabled and active state.

    A service without a recorded state is started. Returns False when the
    record is missing or any systemctl command failed.
    """
    if not services:
        return True
    try:
        states = json.loads((slot / "services.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log_message(f"No service states to restore: {exc}", "ERROR")
        return False
    return all([_restore_service(service, states.get(service)) for service in services])


def _restore_service(service: str, state: dict[str, Any] | None) -> bool:
    if state is None:
        log_message(f"No recorded state for service {service}; starting it", "WARNING")
        return _systemctl_ok("start", service)
    ok = True
    # only the two states enable/disable can produce are put back; static,
    # masked or generated units are left as they are
    legacy = "enabled" if state.get("enabled") else "disabled"  # entries without the text
    recorded = state.get("enabled_state", legacy)
    if recorded in ("enabled", "disabled"):
        ok = _systemctl_ok("enable" if recorded == "enabled" else "disable", service)
    return _systemctl_ok("start" if state.get("active") else "stop", service) and ok


def _start_services(services: list[str]) -> bool:
    """Start every service; False when any start failed."""
    return all([_systemctl_ok("start", service) for service in services])


# ---------------------------------------------------------------- helpers


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
