"""`updates.index`: the orchestrator entry module, as far as modules use it."""

from .utils import log_message

__all__ = ["log_message"]
