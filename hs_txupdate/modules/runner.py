"""Running a module in its own worker process: timeout, output, outcome, requests.

Each run is a fresh worker process in its own session (process group), so a timeout
or an interruption kills everything it started: forked by the run's fork server
(modules.forkserver) when there is one and the worker has a cgroup, else a new
`python -m hs_txupdate.modules.worker`.
One loop in the calling thread reads the worker's output, its result and its
requests (base.channel), which `serve` answers while the worker waits. No
thread is started: under the write audit, hs-tx's children live in another pid
namespace, where this process cannot start threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import activity
from ..base.channel import CHANNEL_ENV
from ..base.proc import child_env
from .cgroup import CGROUP_ENV, kill_session
from .discovery import Module
from .forkserver import ForkedWorker, ForkServer, ForkServerError
from .output import OutputTail
from .serving import placed

KILL_GRACE_S = 5.0
DRAIN_GRACE_S = 2.0  # after the worker ended: output a left-behind child still holds
Serve = Callable[[dict[str, Any]], dict[str, Any]]
Worker = subprocess.Popen[bytes] | ForkedWorker


@dataclass(frozen=True)
class Runtime:
    """The interpreter a worker runs on, and what it must find on its path."""

    python: str = sys.executable
    pythonpath: str | None = None  # a dir holding only hs_txupdate (for a module runtime)


@dataclass
class Outcome:
    """How one module run ended."""

    status: str  # success | failed | timeout
    error: str
    exit_status: int | None
    duration_s: float
    output_tail: str
    attempts: int
    result: Any = None  # what main returned, as JSON


def run_module(
    module: Module,
    args: Any = None,
    *,
    echo: Callable[[str], None] | None = None,
    extra_env: dict[str, str] | None = None,
    mode: str = "main",
    serve: Serve | None = None,
    runtime: Runtime | None = None,
    cgroup: Path | None = None,
    forks: ForkServer | None = None,
) -> Outcome:
    """Run `module`'s main(args) in a worker; a bare False runs it once more.

    With mode "maintenance", run its maintenance task instead (once).
    `echo` receives each output line as it arrives; `serve` answers the
    worker's requests (none are possible without it); `runtime` is the
    interpreter to run on; `cgroup` the cgroup the worker joins first thing
    (without one, what is left in the worker's session is killed when it ends);
    `forks` the fork server (on that interpreter) that starts the worker when it has
    a cgroup (its pids are the server's, so only a cgroup can contain it from here).
    Returns the Outcome; a module's failure never
    raises. An exception from a signal handler (an interrupted hs-tx), or from
    `serve`, kills the worker's process group and propagates.
    """
    job = _Job(
        module, args, echo, extra_env or {}, mode, serve, runtime or Runtime(), cgroup, forks
    )
    start = time.monotonic()
    prefix = f"[{module.name}] "
    tail = OutputTail(None if echo is None else lambda line: echo(prefix + line))
    attempts = 0
    while True:
        attempts += 1
        status, error, exit_status, result = _run_once(job, tail)
        if status != "again":
            break
        if attempts == 2:
            status, error = "failed", "main() returned False twice"
            break
    duration = time.monotonic() - start
    return Outcome(status, error, exit_status, duration, tail.text(), attempts, result)


@dataclass(frozen=True)
class _Job:
    """Everything one worker run needs."""

    module: Module
    args: Any
    echo: Callable[[str], None] | None
    extra_env: dict[str, str]
    mode: str
    serve: Serve | None
    runtime: Runtime
    cgroup: Path | None
    forks: ForkServer | None


def _run_once(job: _Job, tail: OutputTail) -> tuple[str, str, int | None, Any]:
    channel = _Channel.open() if job.serve is not None else None
    read_fd, write_fd = os.pipe()
    try:
        proc = _spawn(job, write_fd, channel)
    finally:
        os.close(write_fd)
        if channel is not None:
            channel.close_worker_side()
    watch = _Watch(proc, read_fd, channel, tail, f"running module {job.module.name}")
    try:
        timed_out = watch.run(job.module.timeout, job.serve)
    except BaseException:
        _kill_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        activity.end()
        watch.close()
        if job.cgroup is None:
            kill_session(proc.pid)  # what the module left running in its session
    if timed_out:
        return "timeout", f"timed out after {job.module.timeout:g} s", proc.returncode, None
    return _outcome(watch.result, proc.wait())


def _spawn(job: _Job, result_fd: int, channel: _Channel | None) -> Worker:
    """Start the worker in its own session; it writes its outcome to `result_fd`."""
    env = child_env({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", **job.extra_env})
    if job.runtime.pythonpath:
        env["PYTHONPATH"] = job.runtime.pythonpath
    if job.cgroup is not None:
        env[CGROUP_ENV] = str(job.cgroup)
    module = job.module
    args = [str(module.path.parent), module.name, "{fd 1}", json.dumps(job.args), job.mode]
    fds = [result_fd, *(channel.worker_fds if channel else ())]
    if channel is not None:
        env[CHANNEL_ENV] = "{fd 2},{fd 3}"
    if job.forks is not None and job.cgroup is not None and not job.forks.gone:
        with contextlib.suppress(ForkServerError):  # gone: the worker starts on its own
            return _fork(job.forks, args, env, fds)
    slots = [1, *fds]  # the output is the worker's stdout
    env = {k: placed(v, slots) for k, v in env.items()}
    return subprocess.Popen(
        [job.runtime.python, "-m", "hs_txupdate.modules.worker", *(placed(a, slots) for a in args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=tuple(fds),
        start_new_session=True,
        env=env,
    )


def _fork(forks: ForkServer, args: list[str], env: dict[str, str], fds: list[int]) -> Worker:
    """Have the fork server start the worker, its output on a fresh pipe."""
    out_r, out_w = os.pipe()
    try:
        proc = forks.launch(args, env, [out_w, *fds])
    except BaseException:
        os.close(out_r)
        raise
    finally:
        os.close(out_w)
    proc.stdout = open(out_r, "rb", buffering=0)  # noqa: SIM115 - closed with the watch
    return proc


class _Channel:
    """The two pipes of a worker's requests: it writes requests and reads replies."""

    def __init__(self, requests: tuple[int, int], replies: tuple[int, int]) -> None:
        self.request_r, self.request_w = requests
        self.reply_r, self.reply_w = replies
        self.buffer = b""

    @classmethod
    def open(cls) -> _Channel:
        """Two fresh pipes."""
        return cls(os.pipe(), os.pipe())

    @property
    def worker_fds(self) -> tuple[int, int]:
        """The descriptors the worker keeps."""
        return (self.reply_r, self.request_w)

    @property
    def worker_side(self) -> str:
        """The worker's `HS_TX_CHANNEL`: its read and write descriptors."""
        return f"{self.reply_r},{self.request_w}"

    def close_worker_side(self) -> None:
        """Once the worker has its copies: keep only the parent's ends."""
        os.close(self.reply_r)
        os.close(self.request_w)

    def take(self, chunk: bytes) -> list[dict[str, Any]]:
        """Add what was read; return the complete requests (an unreadable one is
        returned as a request without an op, which `serve` refuses)."""
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [_request(line) for line in lines if line.strip()]

    def reply(self, answer: dict[str, Any]) -> None:
        """Send one reply (the worker is blocked reading it)."""
        view = memoryview((json.dumps(answer) + "\n").encode())
        with contextlib.suppress(BrokenPipeError):  # the worker died meanwhile
            while view:
                view = view[os.write(self.reply_w, view) :]

    def close(self) -> None:
        """Close the parent's ends."""
        for fd in (self.request_r, self.reply_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _request(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError:
        return {}
    return request if isinstance(request, dict) else {}


@dataclass
class _Watch:
    """Everything read from one worker while it runs."""

    proc: Worker
    result_fd: int
    channel: _Channel | None
    tail: OutputTail
    what: str  # the activity shown while it runs (base.activity)
    result: list[bytes] = field(default_factory=list)

    def run(self, timeout: float, serve: Serve | None) -> bool:
        """Read output, result and requests until the worker ended and its pipes are
        drained, answering requests; on timeout kill its group. True on timeout."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.fileno()
        open_fds = {out, self.result_fd}
        if self.channel is not None:
            open_fds.add(self.channel.request_r)
        deadline = time.monotonic() + timeout
        ended_at: float | None = None
        while open_fds:
            now = time.monotonic()
            if ended_at is None and self.proc.poll() is not None:
                ended_at = now
            if ended_at is not None and now - ended_at > DRAIN_GRACE_S:
                break  # a child the module left behind holds the output open
            if ended_at is None and now >= deadline:
                _stop(self.proc)
                return True
            activity.tick(self.what)
            ready, _, _ = select.select(list(open_fds), [], [], 0.2)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    open_fds.discard(fd)
                elif fd == out:
                    self.tail.feed(chunk)
                elif fd == self.result_fd:
                    self.result.append(chunk)
                elif self.channel is not None and serve is not None:
                    for request in self.channel.take(chunk):
                        self.channel.reply(serve(request))
        self.tail.close()
        self.proc.wait()
        return False

    def close(self) -> None:
        """Close every pipe of this run."""
        with contextlib.suppress(OSError):
            os.close(self.result_fd)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.channel is not None:
            self.channel.close()


def _stop(proc: Worker) -> None:
    """The worker ran out of time: SIGTERM its group, then SIGKILL after a grace."""
    _kill_group(proc, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_GRACE_S)
    _kill_group(proc, signal.SIGKILL)
    proc.wait()


def _kill_group(proc: Worker, sig: int) -> None:
    if isinstance(proc, ForkedWorker):
        proc.signal_session(sig)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _outcome(result: list[bytes], returncode: int) -> tuple[str, str, int | None, Any]:
    data = b"".join(result)
    if not data:
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        return "failed", f"worker crashed ({how})", returncode, None
    try:
        outcome = json.loads(data)
    except ValueError:
        return "failed", "worker sent an unreadable result", returncode, None
    return outcome["outcome"], outcome.get("error", ""), returncode, outcome.get("result")
