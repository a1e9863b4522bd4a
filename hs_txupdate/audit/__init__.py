"""The write audit: which files the run's modules changed, told apart from
writes by unrelated processes, seen with fanotify from the run's own pid
namespace (or, where the kernel refuses, found by a scan).

Imports only the standard library and `hs_txupdate.base`. The names below load on
first use: a command that needs one part imports only that part.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fold import FOLD_AT, Change
    from .session import Audit, AuditError, AuditResult, why_unwatchable

_WHERE = {
    "FOLD_AT": "fold",
    "Change": "fold",
    "Audit": "session",
    "AuditError": "session",
    "AuditResult": "session",
    "why_unwatchable": "session",
}
__all__ = ["FOLD_AT", "Audit", "AuditError", "AuditResult", "Change", "why_unwatchable"]


def __getattr__(name: str) -> Any:
    """The exported `name`, imported from its module on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
