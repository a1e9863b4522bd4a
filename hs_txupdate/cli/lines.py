"""`--log-format homeserver`: every line hs-tx prints, as the HOMESERVER orchestrator
logs it, `[YYYY-MM-DD HH:MM:SS] [LEVEL] message`, for the Admin UI that reads its
log (see scripts/updateManager.sh).

hs-tx's own prefixes become the level: `hs-tx: error: ...` and `hs-tx: internal
error: ...` are ERROR, `hs-tx: warning: ...` is WARNING, everything else INFO.
"""

from __future__ import annotations

import io
import re
import time
from typing import TextIO

_PREFIX = re.compile(r"^hs-tx: (?:(internal error|error|warning|note): )?")
_LEVELS = {"error": "ERROR", "internal error": "ERROR", "warning": "WARNING"}


def stamped(line: str, now: float | None = None) -> str:
    """One line (without its newline) in the orchestrator's format."""
    match = _PREFIX.match(line)
    level = _LEVELS.get(match.group(1) or "", "INFO") if match else "INFO"
    message = line[match.end() :] if match else line
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    return f"[{stamp}] [{level}] {message}"


class StampedLines(io.TextIOBase):
    """A text stream that writes each whole line it is given to `out`, stamped (see
    `stamped`); a line without its newline waits for it, or for `flush`."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        """Buffer `text`; write out each line it completes. Returns len(text)."""
        self._partial += text
        *whole, self._partial = self._partial.split("\n")
        for line in whole:
            self.out.write(stamped(line) + "\n")
        return len(text)

    def flush(self) -> None:
        """Write out a pending partial line too, then flush `out`."""
        if self._partial:
            self.out.write(stamped(self._partial) + "\n")
            self._partial = ""
        self.out.flush()
