"""`updates.utils.module_self_update`: a module's check for a newer copy of itself.

Under the HOMESERVER orchestrator a module could clone its own repository,
replace its directory and ask to be restarted. Under hs-tx that is phase 1's
job: before any module runs, every module dir whose `schema_version` rose in
the source is replaced (inside the transaction, so a failed run puts the old
code back). By the time a module calls this it is already the source's version.
"""

from __future__ import annotations

import os


class ModuleSelfUpdateError(Exception):
    """A module self-update failed (kept so modules can name it in except clauses)."""


def ensure_module_self_updated(module_dir: str | os.PathLike[str] | None = None) -> bool:
    """Return True: the module is up to date.

    Given the module's directory (ignored). Under hs-tx, phase 1 has already
    brought every module to the source repository's version before modules
    run, and a module must not replace its own code outside the transaction,
    so there is nothing to fetch and no restart to ask for. Never raises.
    """
    return True


check_and_update_module = ensure_module_self_updated

__all__ = ["ModuleSelfUpdateError", "check_and_update_module", "ensure_module_self_updated"]
