"""Hotfix `version_check` conditions: does a target apply to this system?

Kinds (an empty or missing check means "always"):
- {"type": "always", "value": true}
- {"type": "file_exists", "path": "/abs", "invert": false}
- {"type": "module_schema", "module": "NAME", "max_version": "1.2.3"}:
  the update module NAME installed beside this one has schema_version <= max
- {"type": "binary_version", "binary": "tar", "version_flag": "--version",
  "max_version": "1.34.0"}: the binary reports a version <= max
`validate` refuses malformed checks before anything runs; `applies` never raises.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .support import DefinitionError, check_id

try:  # semantic-version rules from hs-tx when it is there (it is, in hs-tx workers)
    from hs_txupdate.sync.versions import Version as _SemVer
except ImportError:  # under HOMESERVER, or by hand
    _SemVer = None

BINARY_TIMEOUT_S = 30.0
KINDS = ("always", "file_exists", "module_schema", "binary_version")
_SEMVER_FALLBACK = re.compile(
    r"^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?$",
    re.ASCII,
)
# first x.y or x.y.z in a program's --version output, not part of a longer dotted run
_REPORTED = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?:\.(\d+))?(?![\d])", re.ASCII)

Verdict = tuple[bool, str]  # (applies, why)


# ---------------------------------------------------------------- versions


def _fallback_key(text: str) -> tuple[Any, ...]:
    """A sort key following semver 2.0 precedence, for when hs_txupdate is absent."""
    match = _SEMVER_FALLBACK.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a version like 1.2.3")
    major, minor, patch, pre = match.groups()
    parts = tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in (pre.split(".") if pre else ())
    )
    return (int(major), int(minor), int(patch), 0 if pre else 1, parts)


def version_key(text: object) -> Any:
    """A comparable form of a version string; `1.2` counts as `1.2.0`. Raises ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a version string")
    text = text.strip()
    if re.fullmatch(r"v?\d+\.\d+", text, re.ASCII):
        text += ".0"
    if _SemVer is not None:
        return _SemVer.parse(text)  # VersionError is a ValueError
    return _fallback_key(text)


def version_le(installed: str, maximum: str) -> bool:
    """installed <= maximum, by semantic-version precedence. Raises ValueError."""
    return version_key(installed) <= version_key(maximum)


# ---------------------------------------------------------------- validation


def validate(check: object, target_id: str) -> dict[str, Any]:
    """The check as a dict ({} for none); DefinitionError when malformed."""
    if check is None or check == {}:
        return {}
    if not isinstance(check, dict):
        raise DefinitionError(f"target {target_id}: version_check must be an object")
    kind = check.get("type")
    if kind not in KINDS:
        raise DefinitionError(
            f"target {target_id}: version_check type {kind!r} is not one of {', '.join(KINDS)}"
        )

    def need(key: str, ok: bool, what: str) -> None:
        if not ok:
            raise DefinitionError(f"target {target_id}: version_check.{key} must be {what}")

    value = check.get
    if kind == "always":
        need("value", isinstance(value("value", True), bool), "true or false")
    elif kind == "file_exists":
        path = value("path")
        need("path", isinstance(path, str) and os.path.isabs(path), "an absolute path")
        need("invert", isinstance(value("invert", False), bool), "true or false")
    else:
        _need_version(value("max_version"), need)
        if kind == "module_schema":
            check_id(value("module"), f"target {target_id}: version_check.module")
        else:
            binary = value("binary")
            need("binary", isinstance(binary, str) and binary.strip() != "", "a program")
            flag = value("version_flag", "--version")
            need("version_flag", isinstance(flag, str), "a string")
    return check


def _need_version(text: object, need: Callable[[str, bool, str], None]) -> None:
    """Refuse (through `need`) a max_version that is not a version."""
    try:
        version_key(text)
    except ValueError:
        need("max_version", False, "a version like 1.2.3")


# ---------------------------------------------------------------- evaluation


def applies(check: dict[str, Any], modules_dir: Path) -> Verdict:
    """Whether a validated check says the target applies, and why."""
    if not check:
        return True, "no version_check"
    kind = check["type"]
    if kind == "always":
        value = check.get("value", True)
        return value, f"always: {str(value).lower()}"
    if kind == "file_exists":
        return _file_exists(check)
    if kind == "module_schema":
        return _module_schema(check, modules_dir)
    return _binary_version(check)


def _file_exists(check: dict[str, Any]) -> Verdict:
    exists = os.path.exists(check["path"])
    invert = check.get("invert", False)
    state = "exists" if exists else "does not exist"
    return exists != invert, f"{check['path']} {state}" + (" (inverted)" if invert else "")


def _module_schema(check: dict[str, Any], modules_dir: Path) -> Verdict:
    name, maximum = check["module"], check["max_version"]
    index_file = modules_dir / name / "index.json"
    if not index_file.is_file():
        return False, f"module {name} is not installed"
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        installed = index["metadata"]["schema_version"]
        ok = version_le(installed, maximum)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # cannot tell: leave the module alone rather than patch it blindly
        return False, f"cannot read module {name}'s schema_version: {exc}"
    return ok, f"module {name} schema_version {installed} {'<=' if ok else '>'} {maximum}"


def _binary_version(check: dict[str, Any]) -> Verdict:
    binary, maximum = check["binary"], check["max_version"]
    program = shutil.which(binary)
    if program is None:
        return False, f"{binary} is not installed"
    flag = check.get("version_flag", "--version")
    argv = [program, flag] if flag else [program]  # "" means: the program takes no flag
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=BINARY_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        # as HOMESERVER does: a version that cannot be told counts as affected
        return True, f"cannot run {binary}: {exc}; applying"
    match = _REPORTED.search(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0 or match is None:
        return True, f"{binary} reported no version (exit {proc.returncode}); applying"
    installed = ".".join(g or "0" for g in match.groups())
    ok = version_le(installed, maximum)
    return ok, f"{binary} {installed} {'<=' if ok else '>'} {maximum}"
