"""`updates.utils`: helpers HOMESERVER modules import."""

from __future__ import annotations

import sys
from datetime import datetime

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_message(message: str, level: str = "INFO") -> None:
    """Print one log line for the module; hs-tx streams it and keeps it in the journal."""
    level = str(level).upper()
    if level not in _LEVELS:
        level = "INFO"
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    stream = sys.stderr if level in ("ERROR", "CRITICAL") else sys.stdout
    print(f"[{stamp}] [{level}] {message}", file=stream, flush=True)


__all__ = ["log_message"]
