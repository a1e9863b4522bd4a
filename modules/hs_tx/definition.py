"""What the `hs_tx` module reads: its arguments and its index.json, validated.

Nothing here imports hs_txupdate: the module must also run under the
HOMESERVER orchestrator, or by hand.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from updates.index import log_message
except ImportError:  # run by hand or by a test, outside any orchestrator

    def log_message(message: str, level: str = "INFO") -> None:
        """Print one log line (stand-in for the orchestrator's log_message)."""
        print(f"[{level}] {message}", flush=True)


DEFAULT_COMMAND_TIMEOUT_S = 120.0
# A unit name is a plain file name: no '/', so it can never name a path elsewhere.
_UNIT_NAME = re.compile(
    r"^[A-Za-z0-9_.:@-]+\.(service|timer|socket|path|target|mount|automount|slice)$"
)


class DefinitionError(ValueError):
    """The module's index.json (or an argument) is not what the module expects."""


@dataclass(frozen=True)
class Settings:
    """The module's configuration: which units go where, and how systemd learns of them."""

    unit_dir: Path
    units: tuple[str, ...]
    enable: tuple[str, ...]
    reload_command: tuple[str, ...]
    enable_command: tuple[str, ...]
    command_timeout: float

    def target(self, unit: str) -> Path:
        """Where `unit` is installed."""
        return self.unit_dir / unit

    def enable_argv(self, unit: str) -> list[str]:
        """enable_command with `{unit}` replaced (plain replace: other braces stay)."""
        return [arg.replace("{unit}", unit) for arg in self.enable_command]


def failure(error: str, **extra: Any) -> dict[str, Any]:
    """A failed result for the orchestrator, logged as an error."""
    log_message(error, "ERROR")
    return {"success": False, "error": error, **extra}


def parse_flags(args: object, known: Iterable[str]) -> set[str]:
    """The flags in `args` (None or a list of strings); DefinitionError for anything else.

    Unknown words are refused: a mistyped `--chek` must not change the system.
    """
    if args is None:
        return set()
    if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
        raise DefinitionError(f"arguments must be a list of strings, not {args!r}")
    unknown = [a for a in args if a not in set(known)]
    if unknown:
        raise DefinitionError(f"unknown argument(s): {' '.join(unknown)}")
    return set(args)


def load_index(path: Path) -> dict[str, Any]:
    """The parsed index.json at `path`; DefinitionError when unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DefinitionError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DefinitionError(f"{path} must hold a JSON object")
    return data


def schema_version(index: dict[str, Any]) -> str:
    """metadata.schema_version as a string ("unknown" when absent)."""
    meta = index.get("metadata")
    version = meta.get("schema_version") if isinstance(meta, dict) else None
    return str(version) if version is not None else "unknown"


def read_settings(index: dict[str, Any]) -> Settings:
    """The validated Settings of `index`; DefinitionError naming the first bad key."""
    section = index.get("configuration", index.get("config", {}))
    if not isinstance(section, dict):
        raise DefinitionError("'configuration' must be an object")
    unit_dir = section.get("unit_dir")
    if not isinstance(unit_dir, str) or not os.path.isabs(unit_dir):
        raise DefinitionError("configuration.unit_dir must be an absolute path")
    units = _unit_names(section.get("units"), "units")
    enable = _unit_names(section.get("enable", []), "enable")
    strays = [u for u in enable if u not in units]
    if strays:
        raise DefinitionError(f"configuration.enable lists units not in 'units': {strays}")
    enable_command = _argv(section.get("enable_command"), "enable_command")
    if not any("{unit}" in arg for arg in enable_command):
        raise DefinitionError("configuration.enable_command must contain '{unit}'")
    settings = Settings(
        unit_dir=Path(os.path.normpath(unit_dir)),
        units=units,
        enable=enable,
        reload_command=_argv(section.get("reload_command"), "reload_command"),
        enable_command=enable_command,
        command_timeout=_timeout(section.get("command_timeout", DEFAULT_COMMAND_TIMEOUT_S)),
    )
    _check_backup_paths(section.get("backup_paths", []), settings)
    return settings


def _unit_names(value: object, key: str) -> tuple[str, ...]:
    """configuration.`key` as unique unit file names; DefinitionError otherwise."""
    if not isinstance(value, list):
        raise DefinitionError(f"configuration.{key} must be a list of unit names")
    for name in value:
        if not isinstance(name, str) or not _UNIT_NAME.match(name):
            raise DefinitionError(f"configuration.{key}: {name!r} is not a unit file name")
    if len(set(value)) != len(value):
        raise DefinitionError(f"configuration.{key} lists a unit twice")
    return tuple(value)


def _argv(value: object, key: str) -> tuple[str, ...]:
    """configuration.`key` as a command's argument list; DefinitionError otherwise.

    A list, never a string: the command runs without a shell.
    """
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        raise DefinitionError(
            f"configuration.{key} must be a non-empty list of arguments (no shell string)"
        )
    return tuple(value)


def _timeout(value: object) -> float:
    """configuration.command_timeout as positive seconds; DefinitionError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DefinitionError("configuration.command_timeout must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise DefinitionError("configuration.command_timeout must be positive")
    return float(value)


def _check_backup_paths(value: object, settings: Settings) -> None:
    """Refuse a definition whose backup_paths miss an installed unit.

    The orchestrator snapshots only backup_paths: a unit outside them could not
    be put back when the run fails, so the module would break the transaction.
    """
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise DefinitionError("configuration.backup_paths must be a list of paths")
    roots = [os.path.normpath(p) for p in value if os.path.isabs(p)]
    for unit in settings.units:
        target = str(settings.target(unit))
        if not any(target == r or target.startswith(r.rstrip("/") + "/") for r in roots):
            raise DefinitionError(
                f"configuration.backup_paths does not cover {target}: "
                "a failed run could not put it back"
            )
