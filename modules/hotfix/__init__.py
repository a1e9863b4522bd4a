"""The `hotfix` update module (HOMESERVER format); see README.md."""

from .index import main

__all__ = ["main"]
