"""The journal: SQLite through SQLAlchemy, behind one API (no SQL elsewhere).

`api.Journal` writes (naming tables and columns in `rows`) and, through `reads`,
reads; `records` are the plain records it returns; `vocab` holds every word it
stores, as enums.
"""

from .api import EventHook, Journal, JournalLostError, StepRecord
from .records import (
    BackupInfo,
    ChangeInfo,
    EventInfo,
    LastRunInfo,
    MalformedRowError,
    ModuleRunInfo,
    OutsideInfo,
    PathInfo,
    RunChangeInfo,
    ServiceInfo,
    TxInfo,
    now_iso,
)
from .schema import identity_of
from .vocab import (
    CHANGING_PHASES,
    FINAL_STATES,
    POINT,
    RUNNING_STATES,
    Decision,
    Kind,
    Origin,
    Phase,
    RunStatus,
    State,
    Status,
    Step,
)

__all__ = [
    "CHANGING_PHASES",
    "FINAL_STATES",
    "POINT",
    "RUNNING_STATES",
    "BackupInfo",
    "ChangeInfo",
    "Decision",
    "EventHook",
    "EventInfo",
    "Journal",
    "JournalLostError",
    "Kind",
    "LastRunInfo",
    "MalformedRowError",
    "ModuleRunInfo",
    "Origin",
    "OutsideInfo",
    "PathInfo",
    "Phase",
    "RunChangeInfo",
    "RunStatus",
    "ServiceInfo",
    "State",
    "Status",
    "Step",
    "StepRecord",
    "TxInfo",
    "identity_of",
    "now_iso",
]
