"""A fork server for module workers: one preloaded interpreter per run forks a fresh
worker process for each module, instead of a new interpreter starting and importing
the worker for each (what an update with many modules mostly paid for).

`ForkServer.spawn` (the orchestrator's side) starts `python -m
hs_txupdate.modules.forkserver FD` on the module runtime's interpreter; it imports only
what the worker needs (no SQLAlchemy or pyroute2). When workers run on hs-tx's own
interpreter and hs-tx has imported none of `FORBIDDEN`, `ForkServer.fork` forks hs-tx
itself instead, which then sets up what that new interpreter would have had: no
interpreter start-up is waited for.
Over a socket pair (SOCK_SEQPACKET) each request is one JSON message with the worker's
descriptors attached (SCM_RIGHTS): its output pipe, its result pipe and its channel's
two pipes. The server (modules.serving) has forked the worker ahead of the request: it
answers with its pid and hands it the request, and the worker, already in a session of
its own, takes the output pipe as its stdout and stderr and the environment it was sent,
and runs `worker.main` exactly as a worker process started on its own would, then
exits. The server reaps it, reports how it ended, and signals a worker's session on
request (the pids are the server's: under the write audit it lives in the run's pid
namespace). When its socket closes, the server ends its spare and exits.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from .serving import EXIT_UNKNOWN, MAX_MESSAGE, serve, serve_forked

if TYPE_CHECKING:
    from ..base.forking import Forked

SERVER_NAME = "hs-tx-forks"  # a forked server's process name (ps, /proc/PID/comm)
# what a server forked from hs-tx must not hold, so that no worker does
FORBIDDEN = ("sqlalchemy", "alembic", "git", "pyroute2")


class ForkServerError(OSError):
    """The fork server could not be started, or is gone."""


class ForkServer:
    """The orchestrator's side of one fork server: start it with `spawn` (on a given
    interpreter) or `fork` (this process itself)."""

    def __init__(self, proc: subprocess.Popen[bytes] | Forked, sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.exits: dict[int, int] = {}
        self.gone = False

    @classmethod
    def spawn(cls, python: str, pythonpath: str | None, env: dict[str, str]) -> ForkServer:
        """Given the runtime's interpreter, the PYTHONPATH it needs (None: none) and the
        base environment of workers, start a server on that interpreter.
        Raises ForkServerError when it cannot start."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**env, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        argv = [python, "-m", "hs_txupdate.modules.forkserver", str(theirs.fileno())]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=env,
            )
        except OSError as exc:
            ours.close()
            raise ForkServerError(exc.errno, f"cannot start the fork server: {exc}") from exc
        finally:
            theirs.close()
        return cls(proc, ours)

    @classmethod
    def fork(cls, env: dict[str, str]) -> ForkServer:
        """Given the base environment of workers, fork this process as the server: no
        interpreter starts and nothing is imported, so the first module waits for
        nothing. Only for workers on this interpreter, and only while this process has
        imported nothing a worker must not hold (see `FORBIDDEN`).
        Raises ForkServerError when it cannot fork."""
        from ..base.forking import fork_child  # here: a spawned server never needs it

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cwd = os.getcwd()
        try:
            proc = fork_child(
                lambda: serve_forked(theirs, cwd, env), SERVER_NAME, [theirs.fileno()], 2
            )
        except OSError as exc:
            ours.close()
            raise ForkServerError(exc.errno, f"cannot fork the fork server: {exc}") from exc
        finally:
            theirs.close()
        for pipe in (proc.stdin, proc.stdout):  # the server reads and writes neither
            if pipe is not None:
                pipe.close()
        return cls(proc, ours)

    def launch(self, argv: list[str], env: dict[str, str], fds: list[int]) -> ForkedWorker:
        """Fork a worker running `worker.main(argv)`, in which every `{fd N}` of `argv`
        and `env` values stands for `fds[N]`; stdout and stderr go to `fds[0]`.
        Raises ForkServerError when the server is gone."""
        message = json.dumps({"op": "run", "argv": argv, "env": env}).encode()
        try:
            self.sock.sendmsg(
                [message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
            while True:
                reply = self._receive(None)
                if reply is None:
                    raise ForkServerError(0, "the fork server ended")
                if "pid" in reply:
                    return ForkedWorker(self, int(reply["pid"]))
        except OSError as exc:
            self.gone = True
            raise ForkServerError(exc.errno, f"the fork server is gone: {exc}") from exc

    def send_signal(self, pid: int, sig: int) -> None:
        """Send `sig` to the session of worker `pid` (nothing once the server is gone)."""
        if not self.gone:
            with contextlib.suppress(OSError):
                self.sock.send(json.dumps({"op": "kill", "pid": pid, "sig": sig}).encode())

    def pump(self, timeout: float | None) -> None:
        """Take the server's reports of ended workers, waiting up to `timeout` seconds
        for the first (None: as long as it takes; 0: not at all)."""
        while self._receive(timeout) is not None:
            timeout = 0

    def _receive(self, timeout: float | None) -> dict[str, Any] | None:
        """One message (an exit report is recorded), or None when none came in time or
        the server is gone."""
        if self.gone:
            return None
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        data = self.sock.recv(MAX_MESSAGE)
        if not data:
            self.gone = True
            return None
        message: dict[str, Any] = json.loads(data)
        if "exit" in message:
            self.exits[int(message["exit"])] = int(message["status"])
        return message

    def close(self) -> None:
        """Close the socket (the server exits) and wait for the server."""
        from ..base.proc import wait_exit  # here: the server process never needs it

        self.sock.close()
        self.gone = True
        try:
            wait_exit(self.proc, 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ForkedWorker:
    """A worker the fork server started: what `subprocess.Popen` offers the runner."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None
        self.stdout: IO[bytes] | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.server.pump(0)
            self._settle()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("worker", timeout or 0)
            self.server.pump(left)
        assert self.returncode is not None
        return self.returncode

    def signal_session(self, sig: int) -> None:
        self.server.send_signal(self.pid, sig)

    def _settle(self) -> None:
        if self.pid in self.server.exits:
            self.returncode = self.server.exits.pop(self.pid)
        elif self.server.gone:
            self.returncode = EXIT_UNKNOWN


def main(argv: list[str]) -> int:
    """`python -m hs_txupdate.modules.forkserver FD`: serve on the inherited socket FD."""
    sock = socket.socket(fileno=int(argv[0]))
    os.set_inheritable(sock.fileno(), False)
    with contextlib.suppress(KeyboardInterrupt):
        serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
