"""Where StateManager backups live and what their index records.

Layout of one backup root (see state_manager.py for why it is redirected):

    module_backups.json            index: module name -> ModuleBackupInfo
    <module>_backup/files/<abs path without leading />
    <module>_backup/services.json  {service: {active, enabled, enabled_state}}
    <module>_backup/databases/db_<i>.sqlite
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ._files import group_name, is_real_dir, user_name
from .index import log_message

STATE_DIR_ENV = "HS_TX_STATE_DIR"
DEFAULT_STATE_DIR = "/var/lib/hs-tx"
INDEX_NAME = "module_backups.json"


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


def check_module_name(module_name: str) -> str:
    """Return `module_name` when it is safe as one path component; raise ValueError."""
    if not module_name or module_name in (".", "..") or "/" in module_name or "\0" in module_name:
        raise ValueError(f"invalid module name for a backup: {module_name!r}")
    return module_name


def slot_copy_path(slot: Path, path: str) -> Path:
    """Where the copy of absolute `path` lives inside a slot."""
    return slot / "files" / path.lstrip("/")


def _permission_info(path: str) -> FilePermissionInfo:
    st = os.lstat(path)
    owner, group = str(user_name(st.st_uid)), str(group_name(st.st_gid))
    return FilePermissionInfo(path, st.st_mode, st.st_uid, st.st_gid, owner, group)


def capture_permissions(paths: list[str]) -> list[FilePermissionInfo]:
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
