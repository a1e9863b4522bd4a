"""The fork server's own side: it forks each module's worker ahead of its request (a
spare, waiting on a socket of its own), hands it the request and its descriptors when
one comes, answers with its pid, reaps it and reports how it ended, and signals a
worker's session on request. `ForkServer` in modules.forkserver starts it and talks to
it. Standard library only, besides the worker it forks.
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
import sys
from typing import Any, NoReturn

from . import cgroup, worker

MAX_MESSAGE = 1 << 20  # a request carries the module's whole environment
MAX_FDS = 4
EXIT_UNKNOWN = -int(signal.SIGKILL)  # a worker whose server is gone: reported killed


def placed(text: str, fds: list[int]) -> str:
    """`text` with each `{fd N}` replaced by the descriptor `fds[N]` (slot 0: the
    worker's output)."""
    for n, fd in enumerate(fds):
        text = text.replace(f"{{fd {n}}}", str(fd))
    return text


def serve(sock: socket.socket) -> None:
    """Answer requests on `sock` until it closes; reap and report every worker."""
    cgroup.warm_up()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    server = _Server(sock, (wake_r, wake_w))
    try:
        server.loop()
    finally:
        server.retire_spare()


class _Server:
    """The serving loop's state: the request socket, the wakeup pipe of SIGCHLD, and the
    spare: a worker forked ahead of its request, waiting on a socket of its own, so that
    a module starts without waiting for a fork (the next spare is forked once a worker
    has ended)."""

    def __init__(self, sock: socket.socket, wake: tuple[int, int]) -> None:
        self.sock = sock
        self.wake = wake
        self.spare: tuple[int, socket.socket] | None = None  # its pid, our end
        self.retired: set[int] = set()  # spares that died waiting, reported killed already
        self.fork_spare()

    def loop(self) -> None:
        """Serve until the request socket closes."""
        wake_r = self.wake[0]
        while True:
            ready, _, _ = select.select([self.sock.fileno(), wake_r], [], [])
            if wake_r in ready:
                os.read(wake_r, 4096)
                self.reap()
            if self.sock.fileno() in ready:
                data, ancdata, _, _ = self.sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4))
                if not data:
                    return
                self.answer(data, received_fds(ancdata))

    def answer(self, data: bytes, fds: list[int]) -> None:
        """Carry out one request, then close the descriptors that came with it.
        Raises OSError when a run is asked for and no worker can be forked."""
        request = json.loads(data)
        try:
            if request.get("op") == "run":
                self.run(data, fds)
            elif request.get("op") == "kill":
                with contextlib.suppress(OSError):
                    os.killpg(int(request["pid"]), int(request["sig"]))
        finally:
            for fd in fds:
                os.close(fd)

    def run(self, data: bytes, fds: list[int]) -> None:
        """Answer with the spare's pid (one forked now when there is none), then give it
        the request and its descriptors; a spare that died waiting is reported killed.
        Raises OSError when no spare can be forked."""
        if self.spare is None:
            self.fork_spare()
        if self.spare is None:
            raise OSError("cannot fork a worker")
        pid, end = self.spare
        self.spare = None
        self.sock.send(json.dumps({"pid": pid}).encode())  # first: the caller goes on
        try:
            end.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        except OSError:
            self.retired.add(pid)  # its exit, when reaped, is not reported again
            self.report(pid, EXIT_UNKNOWN)
        finally:
            end.close()

    def fork_spare(self) -> None:
        """Fork the next spare (none when fork fails: a request forks again)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return
        if pid == 0:
            _spare(theirs, (ours, self.sock), self.wake)
        theirs.close()
        self.spare = (pid, ours)

    def report(self, pid: int, code: int) -> None:
        """Tell the caller that worker `pid` ended with `code`."""
        self.sock.send(json.dumps({"exit": pid, "status": code}).encode())

    def reap(self) -> None:
        """Report every worker that ended (not a spare that ended unasked: nobody waits
        for it), then fork the next spare: while the caller journals the outcome, the
        processor a worker used is free."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.spare is not None and pid == self.spare[0]:
                self.spare[1].close()
                self.spare = None
            elif pid in self.retired:
                self.retired.discard(pid)
            else:
                self.report(pid, os.waitstatus_to_exitcode(status))
        if self.spare is None:
            self.fork_spare()

    def retire_spare(self) -> None:
        """End the spare (its socket closes, so it exits) and wait for it: no process
        of the server outlives it."""
        if self.spare is not None:
            pid, end = self.spare
            self.spare = None
            end.close()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _spare(
    requests: socket.socket, server: tuple[socket.socket, socket.socket], wake: tuple[int, int]
) -> NoReturn:
    """The body of a spare: leave the server's descriptors and signal handling, start a
    session, wait for one run request (none: the server is gone or done, exit), then
    become the worker it asks for. Never returns."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for sock in server:
            sock.close()
        for fd in wake:
            os.close(fd)
        os.setsid()  # now: the server may be asked to signal its session at once
        data, ancdata, _, _ = requests.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4))
        requests.close()
        # no request: the server is done, and no module was given to this spare
        code = _run_worker(json.loads(data), received_fds(ancdata)) if data else 0
    except BaseException:  # whatever happens, never back into the server loop
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _run_worker(request: dict[str, Any], fds: list[int]) -> int:
    """In a spare given its request: take the worker's descriptors `fds` (slot 0 its
    stdout and stderr) and environment, and run `worker.main`; return its exit code."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fds[0], 1)
    os.dup2(fds[0], 2)
    for fd in (null, fds[0]):
        os.close(fd)
    os.environ.clear()
    os.environ.update({k: placed(v, fds) for k, v in request["env"].items()})
    return worker.main([placed(arg, fds) for arg in request["argv"]])


def serve_forked(sock: socket.socket, cwd: str, env: dict[str, str]) -> int:
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
