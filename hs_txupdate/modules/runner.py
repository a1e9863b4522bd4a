"""Running a module in its own worker process: timeout, streaming, outcome.

Each run is a fresh `python -m hs_txupdate.modules.worker` in its own session
(process group), so a timeout or an interruption kills everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..base.proc import child_env
from .discovery import Module

TAIL_LINES = 200
KILL_GRACE_S = 5.0


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
) -> Outcome:
    """Run `module`'s main(args) in a worker; a bare False runs it once more.

    With mode "maintenance", run its maintenance task instead (once).
    `echo` receives each output line as it arrives. Returns the Outcome; a
    module's failure never raises. An exception from a signal handler (an
    interrupted hs-tx) kills the worker's process group and propagates.
    """
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    attempts = 0
    while True:
        attempts += 1
        status, error, exit_status, result = _run_once(module, args, tail, echo, extra_env, mode)
        if status != "again":
            break
        if attempts == 2:
            status, error = "failed", "main() returned False twice"
            break
    duration = time.monotonic() - start
    return Outcome(status, error, exit_status, duration, "".join(tail), attempts, result)


def _run_once(
    module: Module,
    args: Any,
    tail: deque[str],
    echo: Callable[[str], None] | None,
    extra_env: dict[str, str] | None,
    mode: str,
) -> tuple[str, str, int | None, Any]:
    read_fd, write_fd = os.pipe()
    env = child_env({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", **(extra_env or {})})
    argv = [
        sys.executable,
        "-m",
        "hs_txupdate.modules.worker",
        str(module.path.parent),
        module.name,
        str(write_fd),
        json.dumps(args),
        mode,
    ]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            start_new_session=True,
            env=env,
        )
    finally:
        os.close(write_fd)
    result: list[bytes] = []
    readers = [
        threading.Thread(target=_pump_output, args=(proc, module.name, tail, echo), daemon=True),
        threading.Thread(target=_read_all, args=(read_fd, result), daemon=True),
    ]
    for t in readers:
        t.start()
    try:
        timed_out = _wait(proc, module.timeout)
    except BaseException:
        _kill_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    for t in readers:
        t.join(timeout=2.0)
    if timed_out:
        return "timeout", f"timed out after {module.timeout:g} s", proc.returncode, None
    return _outcome(result, proc.returncode)


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for the worker; on timeout kill its whole group. Returns True on timeout."""
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_GRACE_S)
        _kill_group(proc, signal.SIGKILL)
        proc.wait()
        return True


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
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


def _pump_output(
    proc: subprocess.Popen[bytes],
    name: str,
    tail: deque[str],
    echo: Callable[[str], None] | None,
) -> None:
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode("utf-8", "replace")
        if not line.endswith("\n"):
            line += "\n"
        tail.append(line)
        if echo is not None:
            echo(f"[{name}] {line}")
    proc.stdout.close()


def _read_all(fd: int, out: list[bytes]) -> None:
    try:
        while chunk := os.read(fd, 65536):
            out.append(chunk)
    finally:
        os.close(fd)
