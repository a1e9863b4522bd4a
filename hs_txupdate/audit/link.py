"""The parent's line to the audit reader process: start it, send one JSON line
per request on its stdin, read one JSON line per answer from its stdout (with a
deadline), and stop it (EOF on stdin, SIGKILL when it does not go)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from typing import Any

from ..base.errors import HsTxError
from ..base.forking import Forked, fork_child
from ..base.proc import wait_exit

READER_NAME = "hs-tx-audit"  # the reader's process name (ps, /proc/PID/comm)


class ReaderError(HsTxError):
    """The audit reader failed, answered with an error, or not in time."""


class ReaderLink:
    """A running reader process and the pipes to it."""

    def __init__(self, proc: Forked) -> None:
        self.proc = proc
        self._chunks: list[bytes] = []

    @classmethod
    def spawn(cls, fds: tuple[int, ...]) -> ReaderLink:
        """Fork the reader (`audit.reader.main`, named READER_NAME), handing it `fds`
        (the fanotify group's and those of detached mounts), in its own session.
        Raises OSError when it cannot be started."""
        return cls(fork_child(_reader_main, READER_NAME, fds))

    @property
    def pid(self) -> int:
        """The reader's pid as seen from here."""
        return self.proc.pid

    def send(self, message: dict[str, Any]) -> None:
        """Write one request line. Raises ReaderError when the reader is gone."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise ReaderError(f"the reader is gone{self._stderr_tail()}") from exc

    def receive(self, timeout: float) -> dict[str, Any]:
        """Read one answer line within `timeout` seconds and return it decoded.
        Raises ReaderError when the reader exits, errs or does not answer."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not self._chunks or b"\n" not in self._chunks[-1]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReaderError(f"the reader did not answer within {timeout:.0f} s")
            if not select.select([fd], [], [], left)[0]:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise ReaderError(f"the reader exited{self._stderr_tail()}")
            self._chunks.append(chunk)
        line, _, rest = b"".join(self._chunks).partition(b"\n")
        self._chunks = [rest] if rest else []
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError as exc:
            raise ReaderError(f"the reader answered garbage: {line[:80]!r}") from exc
        if "error" in answer:
            raise ReaderError(str(answer["error"]))
        return answer

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a request and return its answer (see `receive`)."""
        self.send(message)
        return self.receive(timeout)

    def stop(self, timeout: float) -> None:
        """End the reader: close its stdin, wait up to `timeout` s, then SIGKILL
        and wait as long again. The kernel kills whatever is left in its pid
        namespace; the reader is only gone once every process of that namespace
        was reaped, so a child of this process killed with it must be waited for
        by its owner (until then the reader stays, and is left to be reaped later)."""
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            wait_exit(self.proc, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                wait_exit(self.proc, timeout)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def _stderr_tail(self) -> str:
        """The end of the reader's stderr once it exited (': ...'), else ''."""
        try:
            self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            return ""
        err = self.proc.stderr
        if err is None or not select.select([err], [], [], 0.5)[0]:
            return f" (status {self.proc.returncode})"
        text = err.read().decode(errors="replace").strip()
        return f" (status {self.proc.returncode}): {text[-400:]}" if text else ""


def _reader_main() -> int:
    """The forked reader: its modules are imported there, not in hs-tx."""
    from .reader import main

    return main()
