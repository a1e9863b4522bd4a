"""What every verb is given: the configuration loaded into a Context."""

from __future__ import annotations

from ..core.config import load_config
from ..core.context import Context

__all__ = ["Context", "open_context"]


def open_context(config_path: str | None, argv: list[str]) -> Context:
    """Given `--config` (or None) and the command line, load the configuration
    (see core.config for where it is looked up) and return the Context a verb
    runs with. Raises ConfigError (exit 2) for a missing or malformed file."""
    return Context(load_config(config_path), argv=argv)
