"""Children forked from hs-tx without an exec: a helper that runs one of hs-tx's own
functions starts in a millisecond, with nothing to import (see audit.link).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO

# the signals hs-tx turns into an exception (see core.signals)
INTERRUPTS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back SIGINT, SIGTERM and SIGHUP inside the block; one that came meanwhile
    is delivered as it ends. For code an interruption (which hs-tx turns into an
    exception) must not cut in two: a commit, or a fork and the noting of its child."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Forked:
    """A child forked from this process without an exec, running a function, with pipes
    to its stdin, stdout and stderr: what of a Popen a line to a helper process uses."""

    def __init__(self, pid: int, name: str, pipes: tuple[int, int, int | None]) -> None:
        self.pid = pid
        self.args = [name]
        self.returncode: int | None = None
        self.stdin: IO[bytes] | None = os.fdopen(pipes[0], "wb")
        self.stdout: IO[bytes] | None = os.fdopen(pipes[1], "rb")
        self.stderr: IO[bytes] | None = None if pipes[2] is None else os.fdopen(pipes[2], "rb")

    def poll(self) -> int | None:
        """Reap the child if it exited; return its exit status, or None while it runs."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Reap the child and return its exit status, waiting at most `timeout` s
        (None: as long as it takes). Raises subprocess.TimeoutExpired."""
        if self.returncode is None and timeout is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        deadline = time.monotonic() + (timeout or 0.0)
        while (code := self.poll()) is None:  # wait_exit wakes at the exit (a pidfd)
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.005)
        return code

    def kill(self) -> None:
        """SIGKILL the child, unless it was reaped."""
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


def fork_child(
    body: Callable[[], int], name: str, keep_fds: Sequence[int], stderr_to: int | None = None
) -> Forked:
    """Given a function, a process name (at most 15 bytes, shown by ps) and the fds the
    child needs, fork a child that runs `body` with pipes as its stdin, stdout and
    stderr (or, with `stderr_to`, that fd as its stderr), every other fd closed, in a
    session of its own, in /, and exits with what `body` returns (1, its traceback on
    stderr, when it raises). Return it. Cheaper than a new interpreter: no start-up, no
    imports. Raises OSError when it cannot fork.
    """
    with signals_deferred():  # an interruption never leaves pipes or a child unowned
        return _fork(body, name, keep_fds, stderr_to)


def _fork(
    body: Callable[[], int], name: str, keep_fds: Sequence[int], stderr_to: int | None
) -> Forked:
    """`fork_child`, with interruptions held back."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe() if stderr_to is None else (None, stderr_to)
    try:
        pid = os.fork()
    except OSError:
        for fd in (stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w):
            if fd is not None and fd != stderr_to:
                os.close(fd)
        raise
    if pid == 0:  # pragma: no cover (the child; its behaviour is tested through its user)
        status = 1
        try:
            gc.freeze()  # the parent's garbage stays: its finalizers would close its fds
            signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)  # forked while deferred
            for fd, target in ((stdin_r, 0), (stdout_w, 1), (stderr_w, 2)):
                os.dup2(fd, target)
            _close_all_but(keep_fds)
            os.setsid()
            os.chdir("/")
            with open("/proc/self/comm", "w") as comm:
                comm.write(name)
            status = int(body())
        except BaseException:  # to fd 2 itself: sys.stderr may be the parent's wrapper
            import traceback

            os.write(2, traceback.format_exc().encode(errors="replace"))
        finally:
            os._exit(status)
    for fd in (stdin_r, stdout_w) if stderr_r is None else (stdin_r, stdout_w, stderr_w):
        os.close(fd)
    return Forked(pid, name, (stdin_w, stdout_r, stderr_r))


def _close_all_but(keep: Sequence[int]) -> None:
    """Close every fd above 2 but those in `keep`."""
    start = 3
    for fd in sorted(f for f in keep if f > 2):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, os.sysconf("SC_OPEN_MAX"))
