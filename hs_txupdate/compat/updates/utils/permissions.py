"""`updates.utils.permissions`: ownership and mode changes for HOMESERVER modules.

The published version shells out to `chown`/`chmod`; this one does the same
work with os.chown/os.chmod and pwd/grp lookups, so it needs no subprocess
and never follows a symlink it meets inside a tree. Return values keep the
original's meaning (an empty target list is a success, a missing path is
skipped, a partial success still returns True); failures are logged through
`log_message`, which hs-tx journals.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

from ._files import group_name, is_real_dir, resolve_gid, resolve_uid, user_name
from .index import log_message


def parse_mode(mode: str | int) -> int:
    """Return `mode` as an int: "755", "0755" and "0o755" are read as octal.

    Raises ValueError for a string that is not octal, as the original did.
    """
    if isinstance(mode, int):
        return mode
    return int(str(mode).strip(), 8)


@dataclass
class PermissionTarget:
    """A path and the owner, group and mode it should have.

    `mode` may be an int (0o755) or an octal string ("755", "0o755"); it is
    an int after construction. `target_type` is kept for compatibility and
    not used. `recursive` applies the same owner, group and mode to every
    entry of a directory tree (files included, as `chmod -R` does).
    """

    path: str
    owner: str
    group: str
    mode: str | int
    target_type: str = "auto"
    recursive: bool = False

    def __post_init__(self) -> None:
        self.mode = parse_mode(self.mode)


class PermissionManager:
    """Applies PermissionTargets on behalf of one module."""

    def __init__(self, module_name: str = "unknown") -> None:
        """Given the module's name (used only to label log lines)."""
        self.module_name = module_name

    def set_permissions(self, targets: list[PermissionTarget]) -> bool:
        """Apply every target in order.

        Returns True when all succeeded, when the list is empty, or when at
        least one succeeded (the original's "partial success is useful");
        False only when every target failed. Failures are logged, not raised.
        """
        if not targets:
            log_message("No permission targets specified", "WARNING")
            return True
        succeeded = sum(1 for target in targets if self._apply_logged(target))
        if succeeded == len(targets):
            log_message(f"Set permissions for all {len(targets)} targets")
            return True
        log_message(f"Set permissions for {succeeded}/{len(targets)} targets", "WARNING")
        return succeeded > 0

    def _apply_logged(self, target: PermissionTarget) -> bool:
        try:
            done = apply_target(target)
        except (OSError, LookupError, ValueError) as exc:
            why = f"[{self.module_name}] Cannot set permissions of {target.path}: {exc}"
            log_message(why, "ERROR")
            return False
        if done:
            log_message(
                f"[{self.module_name}] Set permissions for {target.path} "
                f"({target.owner}:{target.group} {oct(parse_mode(target.mode))})"
            )
        return True

    def restore_service_permissions(
        self,
        service_name: str,
        config_dirs: list[str] | None = None,
        data_dirs: list[str] | None = None,
        log_dirs: list[str] | None = None,
        binaries: list[str] | None = None,
        custom_targets: list[PermissionTarget] | None = None,
    ) -> bool:
        """Give a service its usual permissions and return set_permissions' result.

        Config, data and log dirs become `<service>:<service> 755`
        recursively; binaries become `root:root 755`; `custom_targets` are
        applied after them.
        """
        targets = [
            PermissionTarget(path, service_name, service_name, 0o755, "directory", recursive=True)
            for path in [*(config_dirs or []), *(data_dirs or []), *(log_dirs or [])]
        ]
        targets += [PermissionTarget(p, "root", "root", 0o755, "file") for p in binaries or []]
        targets += list(custom_targets or [])
        return self.set_permissions(targets)


def apply_target(target: PermissionTarget) -> bool:
    """Apply one target: chown, then chmod (chown clears set-id bits).

    Returns False when the path does not exist (skipped, as the original),
    True when applied. A top-level symlink is applied to what it points at,
    as chown(1)/chmod(1) do with a named path, but is never descended into.
    Raises LookupError for an unknown owner or group, OSError on failure.
    """
    path = os.fspath(target.path)
    if not os.path.exists(path):
        log_message(f"Skipping {path} - does not exist", "DEBUG")
        return False
    uid, gid = resolve_uid(target.owner), resolve_gid(target.group)
    mode = parse_mode(target.mode)
    if target.recursive and is_real_dir(path):
        _apply_tree(path, uid, gid, mode)
    else:
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return True


def _apply_tree(top: str, uid: int, gid: int, mode: int) -> None:
    """chown/chmod `top` and everything below it without following symlinks.

    fwalk holds each directory open, so a directory swapped for a symlink
    mid-walk is not entered. Symlinks get their own owner changed (lchown);
    their mode cannot be changed on Linux and their target is left alone.
    """
    os.chown(top, uid, gid, follow_symlinks=False)
    os.chmod(top, mode)
    errors: list[OSError] = []
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(top, onerror=errors.append):
        for name in dirnames + filenames:
            try:
                _apply_at(dirfd, name, uid, gid, mode)
            except FileNotFoundError:
                continue  # removed while we walked: nothing left to change
            except OSError as exc:
                errors.append(exc)
    if errors:
        raise OSError(f"{len(errors)} entries under {top} failed, first: {errors[0]}")


def _apply_at(dirfd: int, name: str, uid: int, gid: int, mode: int) -> None:
    os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dirfd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return
        try:
            # chmod through the O_PATH descriptor: the entry we checked, even if
            # the name is swapped for a symlink in between
            os.chmod(f"/proc/self/fd/{fd}", mode)
        except FileNotFoundError:
            os.chmod(name, mode, dir_fd=dirfd)  # no /proc mounted
    finally:
        os.close(fd)


def create_service_permission_targets(
    service_name: str,
    config_dir: str | None = None,
    data_dir: str | None = None,
    log_dir: str | None = None,
    binary_path: str | None = None,
    database_file: str | None = None,
) -> list[PermissionTarget]:
    """Return the usual targets for a service (none for arguments left out).

    Binary `root:root 755`; config, data and log dirs `<service>:<service>
    755` (not recursive); database file `<service>:<service> 640`.
    """
    svc = service_name
    targets = []
    if binary_path:
        targets.append(PermissionTarget(binary_path, "root", "root", 0o755, "file"))
    for directory in (config_dir, data_dir, log_dir):
        if directory:
            targets.append(PermissionTarget(directory, svc, svc, 0o755, "directory"))
    if database_file:
        targets.append(PermissionTarget(database_file, svc, svc, 0o640, "file"))
    return targets


def restore_service_permissions_simple(
    service_name: str,
    config_dir: str | None = None,
    data_dir: str | None = None,
    log_dir: str | None = None,
    binary_path: str | None = None,
    database_file: str | None = None,
) -> bool:
    """Apply create_service_permission_targets(...); True when there is nothing to do."""
    targets = create_service_permission_targets(
        service_name, config_dir, data_dir, log_dir, binary_path, database_file
    )
    if not targets:
        log_message("No permission targets specified", "WARNING")
        return True
    return PermissionManager(service_name).set_permissions(targets)


def fix_common_service_permissions(service_name: str) -> bool:
    """Reset the usual locations of a service that exist.

    `/etc/<s>`, `/var/lib/<s>`, `/var/log/<s>` become `<s>:<s> 755`
    recursively; `/usr/local/bin/<s>` and `/opt/<s>` become `root:root 755`
    (recursively when a directory). Returns True when none exist, otherwise
    set_permissions' result.
    """
    svc = service_name
    targets = [
        PermissionTarget(path, svc, svc, 0o755, recursive=True)
        for path in (f"/etc/{svc}", f"/var/lib/{svc}", f"/var/log/{svc}")
        if os.path.exists(path)
    ]
    targets += [
        PermissionTarget(path, "root", "root", 0o755, recursive=os.path.isdir(path))
        for path in (f"/usr/local/bin/{svc}", f"/opt/{svc}")
        if os.path.exists(path)
    ]
    if not targets:
        log_message(f"No common locations found for service {svc}")
        return True
    return PermissionManager(svc).set_permissions(targets)


def get_permissions(path: str) -> dict[str, Any]:
    """Return `{"mode": int (st_mode & 0o777), "owner": name|uid, "group": name|gid}`.

    Follows a symlink, as the original's os.stat did. Returns {} when the
    path does not exist or cannot be read (the latter also logged).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log_message(f"get_permissions failed for {path}: {exc}", "WARNING")
        return {}
    owner, group = user_name(st.st_uid), group_name(st.st_gid)
    return {"mode": st.st_mode & 0o777, "owner": owner, "group": group}


__all__ = [
    "PermissionManager",
    "PermissionTarget",
    "apply_target",
    "create_service_permission_targets",
    "fix_common_service_permissions",
    "get_permissions",
    "restore_service_permissions_simple",
]
