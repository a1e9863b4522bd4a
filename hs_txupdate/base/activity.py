"""What hs-tx is busy with right now, for a live progress line on a terminal.

Long steps call `tick(what, done, total)` as they go (a module's run, a tar capture
or extraction, a restore of many entries) and `end()` when they are over. Nothing
here prints: the CLI sets a `Display` (only when stderr is a terminal), which is
shown an activity once it has lasted `QUIET_S`, at most every `EVERY_S`. No thread
and no timer: a step ticks from its own loop (the write audit's pid namespace
allows no threads).
"""

from __future__ import annotations

import time
from typing import Protocol

QUIET_S = 2.0  # a step shorter than this shows nothing
EVERY_S = 0.25


class Display(Protocol):
    """Where activity is shown: a line redrawn in place, cleared at the end."""

    def show(self, what: str, elapsed_s: float, done: int | None, total: int | None) -> None: ...

    def clear(self) -> None: ...


_display: Display | None = None
_current: tuple[str, float] | None = None  # what, since (monotonic)
_shown_at = 0.0


def set_display(display: Display | None) -> None:
    """Show activity on `display` from now on (None: show nothing)."""
    global _display
    _display = display


def tick(what: str, done: int | None = None, total: int | None = None) -> None:
    """Say that step `what` is still going (`done` of `total` where known)."""
    global _current, _shown_at
    if _display is None:
        return
    now = time.monotonic()
    if _current is None or _current[0] != what:
        _current = (what, now)
    elapsed = now - _current[1]
    if elapsed >= QUIET_S and now - _shown_at >= EVERY_S:
        _shown_at = now
        _display.show(what, elapsed, done, total)


def end() -> None:
    """The step is over: clear what is shown of it."""
    global _current
    _current = None
    interrupt()


def interrupt() -> None:
    """Clear the line for other output (it is drawn again at the next tick)."""
    global _shown_at
    if _display is not None and _shown_at:
        _display.clear()
        _shown_at = 0.0
