"""The settings of an installed module that the operator switches (through `hs-tx modules`
or the Admin UI's updateManager.sh): its components and the branch of its own app
repository, where the HOMESERVER orchestrator keeps them in index.json.

Components live in `config.target_paths.components`, else `config.components` (each
an object whose `enabled` defaults to true); the app repository in `repo`, else
`config.repository` (`url`, `branch`, `default_branch`). Phase 1 keeps all of them
across schema updates (see merge).
"""

from __future__ import annotations

from typing import Any

# where a module's settings live in index.json: its config object (the published
# modules' key, then hs-tx's older one), and in it the components, in this order
CONFIG_KEYS = ("config", "configuration")
COMPONENT_PLACES = (("target_paths", "components"), ("components",))


def dig(table: Any, path: tuple[str, ...]) -> Any:
    """The value at `path` of nested objects, or None where one is missing."""
    for key in path:
        if not isinstance(table, dict):
            return None
        table = table.get(key)
    return table


def components(index: Any) -> dict[str, Any] | None:
    """The components object of a parsed index.json (edited in place by a caller that
    writes it back), or None when the module has none."""
    for key in CONFIG_KEYS:
        for place in COMPONENT_PLACES:
            found = dig(index, (key, *place))
            if isinstance(found, dict):
                return found
    return None


def component_rows(index: Any) -> list[dict[str, Any]]:
    """Each component as {name, enabled, description}, in index.json's order."""
    rows = []
    for name, value in (components(index) or {}).items():
        value = value if isinstance(value, dict) else {}
        enabled = value.get("enabled", True)
        description = value.get("description")
        rows.append(
            {
                "name": name,
                "enabled": enabled if isinstance(enabled, bool) else None,
                "description": description if isinstance(description, str) else None,
            }
        )
    return rows


def repository(index: Any) -> dict[str, Any] | None:
    """The module's own app repository object (`repo`, else `config.repository`), or None
    when it has none."""
    if not isinstance(index, dict):
        return None
    repo = index.get("repo")
    if isinstance(repo, dict) and ("url" in repo or "branch" in repo):
        return repo
    for key in CONFIG_KEYS:
        found = dig(index, (key, "repository"))
        if isinstance(found, dict):
            return found
    return None


def branch_of(index: Any) -> tuple[str | None, str | None]:
    """(branch, default branch) of the module's app repository; (None, None) without one.
    The default branch is the branch itself where none is recorded."""
    repo = repository(index)
    branch = repo.get("branch") if repo else None
    if not isinstance(branch, str) or not branch:
        return None, None
    default = repo.get("default_branch") if repo else None
    return branch, default if isinstance(default, str) and default else branch
