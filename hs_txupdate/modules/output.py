"""A module's output as hs-tx keeps it: split into lines, each line bounded, and only a
tail kept (its last lines, bounded in bytes), so memory stays flat whatever a module
prints."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

TAIL_BYTES = 64 << 10  # what the journal keeps of a module's output, at most
TAIL_LINES = 200
LINE_BYTES = 4 << 10  # a longer line is cut, with a marker
CUT_MARKER = " [... line cut by hs-tx]"


class OutputTail:
    """Given raw chunks of output, pass each complete (bounded) line to `echo` and keep
    the last TAIL_LINES lines, at most TAIL_BYTES."""

    def __init__(self, echo: Callable[[str], None] | None = None) -> None:
        self.echo = echo
        self.lines: deque[str] = deque()
        self.size = 0
        self._pending = b""
        self._cutting = False  # inside a line already cut: drop until its newline

    def feed(self, chunk: bytes) -> None:
        """Take more output (any size, any split)."""
        data = self._pending + chunk
        self._pending = b""
        while data:
            end = data.find(b"\n")
            if end < 0:
                self._hold(data)
                return
            line, data = data[: end + 1], data[end + 1 :]
            if self._cutting:
                self._cutting = False
                continue
            self._emit(line)

    def close(self) -> None:
        """The output ended: keep what is left of an unfinished line."""
        if self._pending and not self._cutting:
            self._emit(self._pending)
        self._pending, self._cutting = b"", False

    def text(self) -> str:
        """The kept tail."""
        return "".join(self.lines)

    def _hold(self, partial: bytes) -> None:
        if self._cutting:
            return
        if len(partial) > LINE_BYTES:
            self._emit(partial[:LINE_BYTES], cut=True)
            self._cutting = True
        else:
            self._pending = partial

    def _emit(self, raw: bytes, cut: bool = False) -> None:
        if len(raw) > LINE_BYTES:
            raw, cut = raw[:LINE_BYTES], True
        line = raw.decode("utf-8", "replace").rstrip("\n")
        line = (line + CUT_MARKER if cut else line) + "\n"
        self.lines.append(line)
        self.size += len(line)
        while len(self.lines) > 1 and (self.size > TAIL_BYTES or len(self.lines) > TAIL_LINES):
            self.size -= len(self.lines.popleft())
        if self.echo is not None:
            self.echo(line)
