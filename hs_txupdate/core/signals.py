"""Turning SIGINT, SIGTERM and SIGHUP into a rollback instead of a half-applied run."""

from __future__ import annotations

import signal
from types import FrameType, TracebackType

from ..base.errors import Interrupted

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SignalGuard:
    """While armed, a signal raises Interrupted in the main thread; while disarmed
    (during rollback or commit) it is only remembered, so they run to the end."""

    def __init__(self) -> None:
        self.armed = True
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signum
        if self.armed:
            self.armed = False
            raise Interrupted(signum)

    def __enter__(self) -> SignalGuard:
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def disarm(self) -> None:
        """From now on, signals are remembered but do not interrupt."""
        self.armed = False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
