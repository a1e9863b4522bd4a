"""`updates.utils.index`: the module logger and module version lookup.

Every other file of the shim logs through `log_message` from here, as the
published `utils/` files do, so one format reaches hs-tx's journal.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Any

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_message(message: str, level: str = "INFO") -> None:
    """Print `[YYYY-mm-dd HH:MM:SS] [LEVEL] message` and flush it.

    Given any message and a level name (case-insensitive; unknown names become
    INFO). ERROR and CRITICAL go to stderr, the rest to stdout; hs-tx streams
    both and keeps the tail in the journal. Returns nothing, raises nothing.
    """
    level = str(level).upper()
    if level not in _LEVELS:
        level = "INFO"
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    stream = sys.stderr if level in ("ERROR", "CRITICAL") else sys.stdout
    print(f"[{stamp}] [{level}] {message}", file=stream, flush=True)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Return the parsed JSON document at `path`; raise OSError or ValueError."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def get_module_version(module_path: str | os.PathLike[str]) -> str:
    """Return `metadata.schema_version` of `<module_path>/index.json`.

    Given a module directory. Returns the version as a string, or "unknown"
    when the file is missing, unreadable or has no version (as the original).
    """
    try:
        index = read_json(os.path.join(os.fspath(module_path), "index.json"))
        version = index["metadata"]["schema_version"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"
    return str(version)


__all__ = ["get_module_version", "log_message"]
