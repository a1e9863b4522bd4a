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
two pipes. The server forks; the child starts a session, takes the output pipe as its
stdout and stderr, the environment it was sent, and runs `worker.main` exactly as a
worker process started on its own would, then exits. The server answers with the
child's pid, reaps it, reports how it ended, and signals a worker's session on request
(the pids are the server's: under the write audit it lives in the run's pid namespace).
When its socket closes, the server exits.
"""

from __future__ import annotations

import array
import codecs
import contextlib
import io
import json
import locale
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from . import cgroup, worker

if TYPE_CHECKING:
    from ..base.forking import Forked

_MAX_MESSAGE = 1 << 20  # a request carries the module's whole environment
_MAX_FDS = 4
EXIT_UNKNOWN = -int(signal.SIGKILL)  # a worker whose server is gone: reported killed
SERVER_NAME = "hs-tx-forks"  # a forked server's process name (ps, /proc/PID/comm)
# what a server forked from hs-tx must not hold, so that no worker does
FORBIDDEN = ("sqlalchemy", "alembic", "git", "pyroute2")


def placed(text: str, fds: list[int]) -> str:
    """`text` with each `{fd N}` replaced by the descriptor `fds[N]` (slot 0: the
    worker's output)."""
    for n, fd in enumerate(fds):
        text = text.replace(f"{{fd {n}}}", str(fd))
    return text


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
                lambda: _serve_forked(theirs, cwd, env), SERVER_NAME, [theirs.fileno()], 2
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
        data = self.sock.recv(_MAX_MESSAGE)
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


# --- the server --------------------------------------------------------------------


def serve(sock: socket.socket) -> None:
    """Answer requests on `sock` until it closes; reap and report every worker."""
    cgroup.warm_up()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(sock)
        if sock.fileno() in ready:
            data, ancdata, _, _ = sock.recvmsg(_MAX_MESSAGE, socket.CMSG_SPACE(_MAX_FDS * 4))
            if not data:
                return
            fds = _received_fds(ancdata)
            request = json.loads(data)
            if request.get("op") == "run":
                pid = _fork(request, fds, sock, (wake_r, wake_w))
                sock.send(json.dumps({"pid": pid}).encode())
            elif request.get("op") == "kill":
                with contextlib.suppress(OSError):
                    os.killpg(int(request["pid"]), int(request["sig"]))
            for fd in fds:
                os.close(fd)


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        sock.send(json.dumps({"exit": pid, "status": code}).encode())


def _fork(
    request: dict[str, Any], fds: list[int], sock: socket.socket, wake: tuple[int, int]
) -> int:
    """Fork one worker for `request` with the descriptors `fds`; return its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in (*wake, sock.fileno()):
            os.close(fd)
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[0], 2)
        for fd in (null, fds[0]):
            os.close(fd)
        os.environ.clear()
        os.environ.update({k: placed(v, fds) for k, v in request["env"].items()})
        code = worker.main([placed(arg, fds) for arg in request["argv"]])
    except BaseException:  # whatever happens, never back into the server loop
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _serve_forked(sock: socket.socket, cwd: str, env: dict[str, str]) -> int:
    """The body of a server forked from hs-tx: first what a server started as
    `python -u` with `env` in `cwd` would have (signal handlers, locale, unbuffered
    standard streams, no bytecode written), then `serve`."""
    os.chdir(cwd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(env)
    locale.setlocale(locale.LC_CTYPE, "")
    sys.dont_write_bytecode = True
    encoding = codecs.lookup(locale.getencoding()).name  # as Python names it: utf-8
    sys.stdin = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding, "surrogateescape"
    )
    sys.stdout, sys.stderr = (
        io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding, errors, write_through=True)
        for fd, errors in ((1, "surrogateescape"), (2, "backslashreplace"))
    )
    with contextlib.suppress(KeyboardInterrupt):
        serve(sock)
    return 0


def main(argv: list[str]) -> int:
    """`python -m hs_txupdate.modules.forkserver FD`: serve on the inherited socket FD."""
    sock = socket.socket(fileno=int(argv[0]))
    os.set_inheritable(sock.fileno(), False)
    with contextlib.suppress(KeyboardInterrupt):
        serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
