"""The audit's reader process (forked by hs-tx, see audit.link): PID 1 of
the run's pid namespace. It drains the fanotify group it inherits, aggregates
what the run changed, reaps orphans, answers the parent's requests (one JSON line
each on stdin/stdout) and exits when stdin reaches EOF.

Requests: {"op": "window", "module": M} drains every queued event, then
attributes what follows to M; {"op": "finish"} drains and answers with the
aggregate, then exits. The first stdin line is the configuration:
{"fan_fd": N, "watch": [...], "ignore": [...], "filesystems": [{"point", "root", "views",
"top_fd"}]}, where `top_fd` (or null) is an inherited fd of a detached mount of the
filesystem's top directory, to decode through instead of `point`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
from typing import Any

from . import kernel
from .events import EventFormatError, parse
from .resolve import MarkedFs, Resolver
from .tracker import Tracker

READ_SIZE = 256 * 1024
PERIOD_S = 0.02  # drain at most this often unless the parent asks
REAP_MS = 1000


class Lines:
    """Newline-separated messages read from a non-blocking fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.eof = False
        self._buf = b""

    def read(self) -> list[Any]:
        """Read what is there; return the complete messages, decoded."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        if not data:
            self.eof = True
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def reply(message: dict[str, Any]) -> None:
    """Write one JSON line to stdout (blocking). Raises OSError when the parent is gone."""
    data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def reap(*_: object) -> None:
    """Collect every exited child (orphans of the run are re-parented to PID 1)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


class Reader:
    """The reader's state: its fanotify fd, the tracker, the current module."""

    def __init__(self, fan_fd: int, tracker: Tracker) -> None:
        self.fan_fd = fan_fd
        self.tracker = tracker

    def drain(self) -> None:
        """Read and apply every queued event (until the fd would block)."""
        while True:
            try:
                buf = os.read(self.fan_fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                self.tracker.lose(f"reading fanotify events failed: {exc}")
                return
            if not buf:
                return
            try:
                for event in parse(buf):
                    self.tracker.handle(event)
            except EventFormatError as exc:
                self.tracker.lose(f"undecodable fanotify events: {exc}")

    def request(self, message: dict[str, Any]) -> bool:
        """Serve one request; return False when the reader should exit."""
        op = message.get("op")
        self.drain()
        if op == "window":
            self.tracker.module = message.get("module")
            reply({"ok": True})
            return True
        if op == "finish":
            reply({"ok": True, "result": self.tracker.export()})
            return False
        reply({"error": f"unknown request {op!r}"})
        return True

    def loop(self, lines: Lines) -> None:
        """Serve until stdin ends or the parent asks to finish."""
        both = select.poll()
        both.register(lines.fd, select.POLLIN)
        both.register(self.fan_fd, select.POLLIN)
        stdin_only = select.poll()
        stdin_only.register(lines.fd, select.POLLIN)
        while True:
            ready = {fd for fd, _ in both.poll(REAP_MS)}
            reap()
            if self.fan_fd in ready:
                self.drain()
            if lines.fd in ready:
                for message in lines.read():
                    if not self.request(message):
                        return
                if lines.eof:
                    return
            if self.fan_fd in ready:
                stdin_only.poll(int(PERIOD_S * 1000))  # let events gather, wake for requests


def _setup(config: dict[str, Any]) -> Reader:
    """Build the reader from its configuration. Raises OSError."""
    filesystems = []
    for fs in config["filesystems"]:
        views = [(r, p) for r, p in fs["views"]]
        top_fd = fs.get("top_fd")
        if top_fd is not None:  # paths through it start at the filesystem's top
            fd = int(top_fd)
            marked = MarkedFs(kernel.fsid_of_fd(fd), fd, "/", "/", views, detached=True)
        else:
            fd = os.open(fs["point"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            marked = MarkedFs(kernel.fsid_of_fd(fd), fd, fs["point"], fs["root"], views)
        filesystems.append(marked)
    tracker = Tracker(Resolver(filesystems), config["watch"], config["ignore"], os.path.lexists)
    return Reader(int(config["fan_fd"]), tracker)


def _first_line() -> dict[str, Any]:
    """Read the configuration line from stdin (blocking, byte by byte, so no
    request that follows it is consumed)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            raise EOFError("stdin closed before the configuration")
        data += chunk
    config: dict[str, Any] = json.loads(data)
    return config


def main() -> int:
    """Run the reader; return its exit status."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)  # only EOF on stdin (or SIGKILL) ends it
    signal.signal(signal.SIGCHLD, reap)
    try:
        reader = _setup(_first_line())
        reply({"ready": True, "pid": os.getpid()})
    except (OSError, EOFError, ValueError, KeyError) as exc:
        with contextlib.suppress(OSError):
            reply({"error": f"audit reader setup failed: {exc}"})
        return 1
    os.set_blocking(0, False)
    try:
        reader.loop(Lines(0))
    except (BrokenPipeError, json.JSONDecodeError):
        return 1
    return 0
