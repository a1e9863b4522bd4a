"""`updates.utils.moduleUtils`: debug-dependent module results.

The published version reads the orchestrator's global `index.json`. hs-tx has
no such file, so the root configuration is the JSON file named by the
environment variable HS_TX_ROOT_INDEX, when it is set; without it, debug is off.
"""

from __future__ import annotations

import os
from typing import Any

from .index import log_message, read_json

ROOT_INDEX_ENV = "HS_TX_ROOT_INDEX"


def load_root_config() -> dict[str, Any]:
    """Return the root configuration: the JSON object in $HS_TX_ROOT_INDEX.

    Returns {"debug": False} when the variable is unset or empty, and also
    (after a warning) when the file is missing, invalid or not an object.
    """
    path = os.environ.get(ROOT_INDEX_ENV)
    if not path:
        return {"debug": False}
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        log_message(f"Cannot read root config {path}: {exc}", "WARNING")
        return {"debug": False}
    if not isinstance(data, dict):
        log_message(f"Root config {path} is not a JSON object", "WARNING")
        return {"debug": False}
    return data


def get_module_debug_mode() -> bool:
    """Return whether the root configuration has `debug` set to a true value."""
    return bool(load_root_config().get("debug", False))


def conditional_config_return(
    result_dict: dict[str, Any], config_data: Any, debug_key: str = "debug"
) -> dict[str, Any]:
    """Add `result_dict["config"] = config_data` only when the root config's
    `debug_key` is true; return the same (possibly updated) dict."""
    if load_root_config().get(debug_key, False):
        result_dict["config"] = config_data
    return result_dict


__all__ = ["conditional_config_return", "get_module_debug_mode", "load_root_config"]
