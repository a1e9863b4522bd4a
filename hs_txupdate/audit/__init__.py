"""The write audit: which files the run's modules changed, told apart from
writes by unrelated processes, seen with fanotify from the run's own pid
namespace (or, where the kernel refuses, found by a scan).

Imports only the standard library and `hs_txupdate.base`.
"""

from .fold import FOLD_AT, Change
from .session import Audit, AuditError, AuditResult, why_unwatchable

__all__ = ["FOLD_AT", "Audit", "AuditError", "AuditResult", "Change", "why_unwatchable"]
