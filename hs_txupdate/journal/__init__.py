"""The journal: SQLite through SQLAlchemy, behind one API (no SQL elsewhere).

`api.Journal` writes (and, through `reads`, reads); `records` are the plain
records it returns; `vocab` holds every word it stores, as enums.
"""

from .api import Journal, StepRecord
from .records import EventInfo, LastRunInfo, ModuleRunInfo, PathInfo, TxInfo, now_iso
from .vocab import (
    CHANGING_PHASES,
    FINAL_STATES,
    RUNNING_STATES,
    Decision,
    Kind,
    Phase,
    RunStatus,
    State,
    Status,
    Step,
)

__all__ = [
    "CHANGING_PHASES",
    "FINAL_STATES",
    "RUNNING_STATES",
    "Decision",
    "EventInfo",
    "Journal",
    "Kind",
    "LastRunInfo",
    "ModuleRunInfo",
    "PathInfo",
    "Phase",
    "RunStatus",
    "State",
    "Status",
    "Step",
    "StepRecord",
    "TxInfo",
    "now_iso",
]
