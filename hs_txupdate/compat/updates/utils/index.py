"""`updates.utils.index`: re-exports log_message, as the published modules expect."""

from . import log_message

__all__ = ["log_message"]
