"""The channel a module worker asks the orchestrator through, and waits for its answer.

One JSON object per line each way over two pipes: the worker writes a request
and blocks until the orchestrator's reply arrives (for example a StateManager
backup, answered once its snapshot is durable). The runner hands the worker the
two descriptors in `HS_TX_CHANNEL` ("READ_FD,WRITE_FD"); the worker takes them
out of its environment before the module runs (`configure_from_environ`), so no
process the module starts inherits them. Standard library only: the worker and
the compat shim load it.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

CHANNEL_ENV = "HS_TX_CHANNEL"
_state: dict[str, int] = {}
_lock = threading.Lock()


class ChannelError(OSError):
    """The orchestrator is gone or answered something unreadable."""


def configure_from_environ() -> bool:
    """Take the channel's descriptors out of the environment (and out of what any
    child inherits); return whether there is a channel."""
    value = os.environ.pop(CHANNEL_ENV, "")
    if not value:
        return False
    read_fd, write_fd = (int(part) for part in value.split(","))
    for fd in (read_fd, write_fd):
        os.set_inheritable(fd, False)
    _state.update(read=read_fd, write=write_fd)
    return True


def available() -> bool:
    """True inside a worker started by an orchestrator that answers requests."""
    return bool(_state)


def ask(request: dict[str, Any]) -> dict[str, Any]:
    """Send `request` and block until the reply; return it.

    Raises ChannelError when there is no channel or the orchestrator is gone.
    """
    if not _state:
        raise ChannelError("no orchestrator to ask (not running under hs-tx)")
    data = (json.dumps(request) + "\n").encode()
    with _lock:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(_state["write"], view) :]
            return _read_reply(_state["read"])
        except OSError as exc:
            raise ChannelError(f"the orchestrator is gone: {exc}") from exc


def _read_reply(fd: int) -> dict[str, Any]:
    buffer = b""
    while not buffer.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            raise ChannelError("the orchestrator closed the channel")
        buffer += chunk
    try:
        reply = json.loads(buffer)
    except ValueError as exc:
        raise ChannelError(f"unreadable reply: {exc}") from exc
    if not isinstance(reply, dict):
        raise ChannelError("unreadable reply: not an object")
    return reply
