"""Keeping an installed module's local state when a newer version replaces it.

What the operator or the module itself set locally survives a schema update:
`metadata.enabled`, `repo` and `config.repository`, component `enabled`
flags, and every `has_run` flag in any list of the index.json (matched by id).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from .settings import COMPONENT_PLACES, CONFIG_KEYS, dig


def merge_local_state(installed: dict[str, Any], incoming: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `incoming` with the local state of `installed` carried over."""
    merged = copy.deepcopy(incoming)
    _keep_enabled(installed, merged)
    if isinstance(installed.get("repo"), dict):
        merged["repo"] = copy.deepcopy(installed["repo"])
    _keep_config_state(installed, merged)
    _keep_has_run(installed, merged)
    return merged


def _keep_enabled(installed: dict[str, Any], merged: dict[str, Any]) -> None:
    old_meta = installed.get("metadata")
    if isinstance(old_meta, dict) and "enabled" in old_meta:
        merged.setdefault("metadata", {})["enabled"] = old_meta["enabled"]


def _keep_config_state(installed: dict[str, Any], merged: dict[str, Any]) -> None:
    for key in CONFIG_KEYS:
        old = installed.get(key)
        if isinstance(old, dict) and isinstance(merged.setdefault(key, {}), dict):
            _keep_section_state(old, merged[key])


def _keep_section_state(old: dict[str, Any], new: dict[str, Any]) -> None:
    if isinstance(old.get("repository"), dict):
        new["repository"] = copy.deepcopy(old["repository"])
    for path in COMPONENT_PLACES:
        old_components, new_components = dig(old, path), dig(new, path)
        if not isinstance(old_components, dict) or not isinstance(new_components, dict):
            continue
        for name, component in new_components.items():
            before = old_components.get(name)
            if isinstance(component, dict) and isinstance(before, dict) and "enabled" in before:
                component["enabled"] = before["enabled"]


def _keep_has_run(installed: dict[str, Any], merged: dict[str, Any]) -> None:
    old_lists = dict(_id_lists(installed, ()))
    for path, items in _id_lists(merged, ()):
        done = {
            item["id"]: item["has_run"] for item in old_lists.get(path, []) if "has_run" in item
        }
        for item in items:
            if item["id"] in done:
                item["has_run"] = done[item["id"]]


def _id_lists(
    node: Any, path: tuple[Any, ...]
) -> Iterator[tuple[tuple[Any, ...], list[dict[str, Any]]]]:
    """Every list of objects-with-an-id in `node`, with its key path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _id_lists(value, (*path, key))
    elif isinstance(node, list):
        items = [i for i in node if isinstance(i, dict) and isinstance(i.get("id"), str | int)]
        if items:
            yield path, items
        for i, value in enumerate(node):
            if isinstance(value, dict | list):
                yield from _id_lists(value, (*path, i))
