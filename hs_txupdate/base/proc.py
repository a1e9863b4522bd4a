"""The one place hs-tx runs short helper commands (argument lists, never a shell).

Module workers, which stream output and have timeouts, are started by
`hs_txupdate.modules.runner`, which builds on `child_env` from here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .crashpoints import ENV_NAMES as CRASH_ENV_NAMES
from .errors import HsTxError
from .forking import Forked

# Variables that would redirect git to another repository, work tree or config.
GIT_ENV_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CEILING_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
)
# Never reach a child: the crash points belong to this process alone.
_SCRUBBED_ENV = frozenset((*CRASH_ENV_NAMES, *GIT_ENV_VARS))
_PIPE_SIZE = 1 << 20  # of a pipe hs-tx reads or writes as the command runs (run_watched)


@dataclass(frozen=True)
class Result:
    """What a finished command gave back."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandError(HsTxError):
    """A helper command failed or could not be started."""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment without the variables children must not see."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.setdefault("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 300,
    input_text: str | None = None,
    pass_stderr: bool = False,
    env: dict[str, str] | None = None,
) -> Result:
    """Run a command given as an argument list and return its Result.

    With `pass_stderr` the command's stderr goes to hs-tx's own (for output an
    operator should see as it comes) and `Result.stderr` is empty; `env` adds
    variables to the scrubbed environment.
    Raises CommandError when it cannot start, times out, or (with `check`)
    exits non-zero; the message names the command and its stderr.
    """
    args = tuple(str(a) for a in argv)
    inherit = pass_stderr and _stderr_is_fd2()
    try:
        proc = subprocess.run(
            args,
            input=input_text,
            stdout=subprocess.PIPE,
            stderr=None if inherit else subprocess.PIPE,
            text=True,
            timeout=timeout,
            env=child_env(env),
            check=False,
        )
    except FileNotFoundError as exc:
        raise _missing(args[0]) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{' '.join(args)} timed out after {timeout} s", "") from exc
    if pass_stderr and not inherit:  # hs-tx's stderr reformats lines: pass them through it
        sys.stderr.write(proc.stderr or "")
        sys.stderr.flush()
        proc.stderr = ""
    result = Result(args, proc.returncode, proc.stdout, proc.stderr or "")
    if check and proc.returncode != 0:
        # the first line usually names the cause; later ones often only summarise
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        first = detail[0] if detail else f"exit {proc.returncode}"
        raise CommandError(f"{args[0]} failed: {first}", f"command was: {' '.join(args)}")
    return result


def _stderr_is_fd2() -> bool:
    """True when hs-tx's stderr writes straight to file descriptor 2 (not through a
    stream that reformats it, see cli.lines)."""
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def spawn_detached(argv: Sequence[str], pass_fds: Sequence[int] = (), stdin: bytes = b"") -> None:
    """Start `argv` through `setsid --fork`: an orphan (no child of hs-tx, so nothing
    waits for it or counts it among hs-tx's processes) in a session of its own, holding
    only `pass_fds`, reading `stdin`, its output discarded; return once `setsid` forked
    it. For work that must not hold up the command that starts it. Raises CommandError
    when it cannot be started."""
    try:
        starter = subprocess.Popen(
            ["setsid", "--fork", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=child_env(),
            pass_fds=tuple(pass_fds),
        )
        starter.communicate(stdin, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandError(f"{argv[0]} could not be started: {exc}", "") from exc


def start_coprocess(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start `argv` with pipes to its stdin and from its stdout (stderr discarded): a
    helper that answers requests for as long as hs-tx keeps it. Raises CommandError
    when it cannot be started."""
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=child_env(),
        )
    except OSError as exc:
        raise CommandError(f"{argv[0]} could not be started: {exc}", "") from exc


def _exits_within(pid: int, timeout: float) -> bool:
    """True when process `pid` (a child not yet reaped) exits within `timeout` s:
    woken by the kernel the moment it does (a pidfd)."""
    fd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(fd)


def wait_exit(proc: subprocess.Popen[bytes] | Forked, timeout: float) -> int:
    """Wait up to `timeout` s for `proc` to exit and reap it; return its status.

    Woken by the kernel the moment it exits (a pidfd), where Popen.wait(timeout)
    sleeps in growing steps and oversleeps a quick exit by up to half its time.
    Raises subprocess.TimeoutExpired when it is still running.
    """
    if proc.returncode is not None:
        return proc.returncode
    try:
        exited = _exits_within(proc.pid, timeout)
    except OSError:  # a kernel without pidfds, or the pid is already reaped
        return proc.wait(timeout)
    if not exited:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


def _pump(fd: int, consume: Callable[[bytes], None], within: float) -> bool:
    """Hand `consume` what the pipe `fd` brings for `within` seconds; False once it
    closed."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            data = os.read(fd, _PIPE_SIZE)
            if not data:
                return False
            consume(data)
    return True


def _missing(command: str) -> CommandError:
    """The error for a helper command that is not installed."""
    return CommandError(f"command not found: {command}", "install it (scripts/setup.sh)")


def run_watched(
    argv: Sequence[str],
    *,
    timeout: float,
    watch: Callable[[], str | None] = lambda: None,
    env: dict[str, str] | None = None,
    interval: float = 0.2,
    keep_stdout: bool = False,
    stdout_to: Callable[[bytes], None] | None = None,
    stdin_from: Iterable[bytes] | None = None,
) -> Result:
    """Run a command like `run` (check=True) in a session of its own, calling `watch()`
    every `interval` while it runs: when `watch` returns a reason, or `timeout` passes,
    the whole session is killed (no helper it started, holding its output, outlasts it).

    Given `env`: variables added to the scrubbed environment; `keep_stdout`: the
    Result holds the command's output (else it is discarded); `stdout_to`: called with
    each piece of the output as it comes instead (what it raises kills the session and
    goes on); `stdin_from`: the pieces written to the command's input (else it has
    none), and what the iteration raises likewise. Returns the Result. Raises
    CommandError when it cannot start, was stopped (the message says why) or exits
    non-zero.
    """
    args = tuple(str(a) for a in argv)
    # files, not pipes: a chatty command never blocks on one
    with contextlib.ExitStack() as files:
        err = files.enter_context(tempfile.TemporaryFile())
        out = files.enter_context(tempfile.TemporaryFile()) if keep_stdout else None
        try:
            proc = subprocess.Popen(
                args,
                stdin=None if stdin_from is None else subprocess.PIPE,
                stdout=subprocess.PIPE if stdout_to else subprocess.DEVNULL if out is None else out,
                stderr=err,
                env=child_env(env),
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise _missing(args[0]) from exc
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                files.callback(pipe.close)
                with contextlib.suppress(OSError):  # fewer, larger reads; the default is 64 KiB
                    fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        stopped = None
        if stdin_from is not None:
            deadline = time.monotonic() + timeout

            def watch_feeding() -> str | None:
                late = time.monotonic() > deadline
                return watch() or (f"timed out after {timeout:g} s" if late else None)

            stopped = _feed(proc, stdin_from, watch_feeding, interval)
        if stopped is None:
            stopped = _watch(proc, timeout, watch, interval, stdout_to)
        err.seek(0)
        stderr = err.read(64 << 10).decode(errors="replace")
        stdout = ""
        if out is not None:
            out.seek(0)
            stdout = out.read().decode(errors="replace")
    if stopped is not None:
        raise CommandError(f"{args[0]} stopped: {stopped}", f"command was: {' '.join(args)}")
    if proc.returncode != 0:
        detail = " ".join(stderr.split())[:500] or f"exit {proc.returncode}"
        raise CommandError(f"{args[0]} failed: {detail}", f"command was: {' '.join(args)}")
    return Result(args, proc.returncode, stdout, stderr)


def _feed(
    proc: subprocess.Popen[bytes],
    pieces: Iterable[bytes],
    watch: Callable[[], str | None],
    interval: float,
) -> str | None:
    """Write `pieces` to the input of `proc` and close it, calling `watch()` every
    `interval`; return the reason it gives, once it gives one (None when all was
    written, or the command stopped reading: its exit status then says why). Kills the
    command's whole session when that is returned or the iteration raises (which goes on)."""
    assert proc.stdin is not None
    fd, due = proc.stdin.fileno(), time.monotonic() + interval
    stopped = None
    try:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
            if time.monotonic() >= due:
                due += interval
                if (stopped := watch()) is not None:
                    break
    except BrokenPipeError:
        pass  # it ended before reading all: its exit status says why
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        proc.stdin.close()
    if stopped is not None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return stopped


def _watch(
    proc: subprocess.Popen[bytes],
    timeout: float,
    watch: Callable[[], str | None],
    interval: float,
    consume: Callable[[bytes], None] | None = None,
) -> str | None:
    """Wait for `proc` (handing `consume` its output until it closes, when given); kill
    its whole session when `watch` gives a reason, `timeout` passes or the wait is
    interrupted (the exception goes on), and return that reason (None when it ended by
    itself)."""
    deadline = time.monotonic() + timeout
    pipe = proc.stdout.fileno() if consume is not None and proc.stdout is not None else None
    try:
        while True:
            if pipe is not None and consume is not None:
                if not _pump(pipe, consume, interval):
                    pipe = None
            else:
                try:
                    wait_exit(proc, interval)
                    return None
                except subprocess.TimeoutExpired:
                    pass
            stopped = watch()
            if stopped is None and time.monotonic() > deadline:
                stopped = f"timed out after {timeout:g} s"
            if stopped is not None:
                return stopped
    finally:
        if proc.returncode is None:  # stopped, or hs-tx itself interrupted
            os.killpg(proc.pid, signal.SIGKILL)  # git forks helpers (index-pack, transports)
            proc.wait()
