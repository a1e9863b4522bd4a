"""The one place fault injection lives: the kill and power-cut sweeps stop hs-tx here.

`HS_TX_CRASH_AT=N` (SIGKILL) or `HS_TX_PAUSE_AT=N` (SIGSTOP) stops this process
right after its N-th durable journal event; `HS_TX_LOSE_AUDIT_EVENTS=1` makes the
write audit report that it lost events, as a queue overflow would. The variables
are read once, taken out of this process's environment, and never passed to a
child (see `base.proc.child_env`), so only the process a test aimed at is hit.
"""

from __future__ import annotations

import functools
import os
import signal

CRASH_ENV = "HS_TX_CRASH_AT"
PAUSE_ENV = "HS_TX_PAUSE_AT"
LOSE_ENV = "HS_TX_LOSE_AUDIT_EVENTS"
ENV_NAMES = (CRASH_ENV, PAUSE_ENV, LOSE_ENV)


class CrashPoints:
    """Counts durable events; kills or pauses this process at the configured one."""

    def __init__(self) -> None:
        self.count = 0
        self.crash_at = _take_int_env(CRASH_ENV)
        self.pause_at = _take_int_env(PAUSE_ENV)

    def after_durable_event(self) -> None:
        """Count one durable event; stop here when it is the configured one."""
        self.count += 1
        if self.pause_at == self.count:
            os.kill(os.getpid(), signal.SIGSTOP)
        if self.crash_at == self.count:
            os.kill(os.getpid(), signal.SIGKILL)


@functools.cache
def audit_events_lost() -> bool:
    """True when a test asked the write audit to report lost events (read once)."""
    return _take_int_env(LOSE_ENV) == 1


def _take_int_env(name: str) -> int | None:
    """Given a variable name, return its integer value (None when unset or not a
    number) and remove it from this process's environment (git sees os.environ)."""
    value = os.environ.pop(name, "")
    return int(value) if value.isdigit() else None
