"""The live progress line on a terminal's stderr (see base.activity): one line redrawn
in place while a long step runs, e.g. `hs-tx: running module website ... 12 s`."""

from __future__ import annotations

import shutil
from typing import TextIO

from ..base import activity


class LiveLine:
    """A Display on `out` (a terminal)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def show(self, what: str, elapsed_s: float, done: int | None, total: int | None) -> None:
        """Draw the line for `what` over the previous one."""
        count = f" {done}/{total}" if done is not None and total else ""
        text = f"hs-tx: {what} ...{count} {elapsed_s:.0f} s"
        width = shutil.get_terminal_size().columns - 1
        self.out.write("\r\x1b[K" + text[:width])
        self.out.flush()

    def clear(self) -> None:
        """Erase the line."""
        self.out.write("\r\x1b[K")
        self.out.flush()


def attach(err: TextIO) -> None:
    """Show the live line on `err` when it is a terminal; never otherwise."""
    if err.isatty():
        activity.set_display(LiveLine(err))
