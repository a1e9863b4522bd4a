"""HOMESERVER `updates` package, as seen by modules run by hs-tx.

Provides the names modules import from the package root. run_update,
sync_from_repo and update_modules are deliberately absent: syncing the
source, replacing modules and running them is hs-tx's own job.
"""

from __future__ import annotations

import os
from typing import Any

from .utils.index import log_message, read_json

DEBUG = False


def debug_log(message: str) -> None:
    """Log `message` at DEBUG level when the module flag `updates.DEBUG` is true."""
    if DEBUG:
        log_message(message, "DEBUG")


def load_module_index(module_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the parsed `<module_path>/index.json`, or None when it is missing,
    unreadable or not a JSON object (the latter two also logged)."""
    path = os.path.join(os.fspath(module_path), "index.json")
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log_message(f"Cannot read {path}: {exc}", "ERROR")
        return None
    if not isinstance(data, dict):
        log_message(f"{path} is not a JSON object", "ERROR")
        return None
    return data


def get_branch_from_index(index_data: dict[str, Any]) -> str:
    """Return `metadata.branch` of a parsed index, or "master" when absent."""
    metadata = index_data.get("metadata") if isinstance(index_data, dict) else None
    branch = metadata.get("branch") if isinstance(metadata, dict) else None
    return str(branch) if branch else "master"


def compare_schema_versions(version1: str, version2: str) -> int:
    """Compare two schema versions; return -1, 0 or 1 (version1 <, ==, > version2).

    When both are semantic versions they are ordered by hs-tx's semver rules
    (pre-releases before their release). Otherwise the original's rule
    applies: dotted integers padded with zeros, and a version with any
    non-integer part counts as 0.0.0. Never raises.
    """
    semver = _semver_compare(version1, version2)
    if semver is not None:
        return semver
    left, right = _dotted(version1), _dotted(version2)
    width = max(len(left), len(right))
    left += [0] * (width - len(left))
    right += [0] * (width - len(right))
    return (left > right) - (left < right)


def _semver_compare(version1: object, version2: object) -> int | None:
    """-1/0/1 by semver when both parse, else None."""
    try:
        # pure module, no heavy imports; absent when the shim is used on its own
        from hs_txupdate.sync.versions import Version, VersionError
    except ImportError:
        return None
    try:
        left, right = Version.parse(version1), Version.parse(version2)
    except VersionError:
        return None
    return (left > right) - (left < right)


def _dotted(version: object) -> list[int]:
    """Dotted-integer parts of `version`; [0, 0, 0] when any part is not an integer."""
    try:
        return [int(part) for part in str(version).split(".")]
    except ValueError:
        return [0, 0, 0]


__all__ = [
    "DEBUG",
    "compare_schema_versions",
    "debug_log",
    "get_branch_from_index",
    "load_module_index",
    "log_message",
]
