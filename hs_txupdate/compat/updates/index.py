"""`updates.index`: the orchestrator entry module, as far as modules import from it.

Modules use `from updates.index import log_message` (nearly all) and
`compare_schema_versions` (website). The orchestrator itself is hs-tx.
"""

from . import compare_schema_versions
from .utils.index import log_message

__all__ = ["compare_schema_versions", "log_message"]
