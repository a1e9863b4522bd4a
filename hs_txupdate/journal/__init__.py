"""The journal: SQLite through SQLAlchemy, behind one API (no SQL elsewhere)."""

from .api import (
    FINAL_STATES,
    RUNNING_STATES,
    EventInfo,
    Journal,
    LastRunInfo,
    ModuleRunInfo,
    PathInfo,
    TxInfo,
    now_iso,
)

__all__ = [
    "FINAL_STATES",
    "RUNNING_STATES",
    "EventInfo",
    "Journal",
    "LastRunInfo",
    "ModuleRunInfo",
    "PathInfo",
    "TxInfo",
    "now_iso",
]
