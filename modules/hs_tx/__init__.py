"""The `hs_tx` update module (HOMESERVER format): hs-tx's own systemd units; see README.md."""

from .index import main

__all__ = ["main"]
