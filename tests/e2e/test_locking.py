"""The state-dir lock: a second run exits 75 naming the holder, or waits with --wait;
a stale lock never blocks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import Sandbox, process_gone

# The module announces that it is running, then waits (bounded) to be released.
WAITER = """
import os, time
def main(args):
    open({started!r} + "-" + str(os.getpid()), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists({release!r}):
        if time.monotonic() > deadline:
            return {{"success": False, "error": "never released"}}
        time.sleep(0.05)
    with open({counter!r}, "a") as f:
        f.write("ran\\n")
    return {{"success": True}}
"""


class Waiter:
    """A sandbox whose one module blocks until `release()`."""

    def __init__(self, sbx: Sandbox) -> None:
        self.sbx = sbx
        self.started = sbx.root / "started"
        self.release_file = sbx.root / "release"
        self.counter = sbx.data / "app" / "counter"
        (sbx.data / "app").mkdir()
        sbx.module(
            "waiter",
            WAITER.format(
                started=str(self.started),
                release=str(self.release_file),
                counter=str(self.counter),
            ),
            backup_paths=[sbx.data / "app"],
        )
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hs_txupdate.cli",
                "--config",
                str(self.sbx.config),
                "update",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def workers_started(self) -> int:
        return len(list(self.sbx.root.glob("started-*")))

    def wait_inside_module(self, proc: subprocess.Popen, count: int = 1) -> None:
        deadline = time.monotonic() + 30
        while self.workers_started() < count:
            if proc.poll() is not None:
                _out, err = proc.communicate()
                pytest.fail(f"hs-tx ended (rc {proc.returncode}) before the module ran:\n{err}")
            assert time.monotonic() < deadline, "the module never started"
            time.sleep(0.05)

    def release(self) -> None:
        self.release_file.write_text("")

    def cleanup(self) -> None:
        self.release()  # lets any worker (even an orphaned one) finish
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            proc.communicate()
        deadline = time.monotonic() + 10
        for marker in self.sbx.root.glob("started-*"):
            pid = int(marker.name.split("-")[1])
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs a program. A worker records its pid as seen in the run's pid
    namespace, which here may name a kernel thread (no command line): not a worker."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return bool(cmdline) and not process_gone(pid)


@pytest.fixture
def waiter(plain_sandbox: Sandbox) -> Iterator[Waiter]:
    w = Waiter(plain_sandbox)
    try:
        yield w
    finally:
        w.cleanup()


def history(sbx: Sandbox) -> list[dict]:
    result = sbx.hs_tx("history", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_second_run_exits_75_naming_the_holder(waiter: Waiter) -> None:
    sbx = waiter.sbx
    first = waiter.start()
    waiter.wait_inside_module(first)

    second = sbx.hs_tx("update", timeout=60)

    assert second.returncode == 75, second.stderr
    assert re.search(rf"\bpid\D{{0,3}}{first.pid}\b", second.stderr), second.stderr
    assert re.search(r"\btransaction\D{0,3}1\b", second.stderr), second.stderr
    assert "Traceback" not in second.stderr
    assert first.poll() is None, "the holder must be unaffected"

    waiter.release()
    _out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    rows = history(sbx)
    assert [(r["id"], r["state"]) for r in rows] == [(1, "committed")], (
        "the refused run must not journal a transaction"
    )
    assert waiter.counter.read_text() == "ran\n"


def test_second_run_with_wait_waits_then_commits(waiter: Waiter) -> None:
    sbx = waiter.sbx
    first = waiter.start()
    waiter.wait_inside_module(first)

    second = waiter.start("--wait")
    # it must still be waiting, without having opened a transaction
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert second.poll() is None, second.communicate()[1]
        time.sleep(0.1)
    assert waiter.workers_started() == 1
    assert [r["id"] for r in history(sbx)] == [1]

    waiter.release()
    _, err1 = first.communicate(timeout=60)
    _, err2 = second.communicate(timeout=60)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    rows = history(sbx)
    assert [(r["id"], r["state"]) for r in rows] == [(2, "committed"), (1, "committed")]
    first_end = datetime.fromisoformat(rows[1]["finished_at"])
    second_start = datetime.fromisoformat(rows[0]["started_at"])
    assert first_end <= second_start, "the second transaction must start after the first ended"
    assert waiter.counter.read_text() == "ran\nran\n"


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


@pytest.mark.parametrize(
    "content",
    [
        "pid {pid}, transaction 7, since 2024-01-01 00:00:00\n",
        "garbage \x00\x01 not a holder",
        "",
    ],
    ids=["dead-pid", "garbage", "empty"],
)
def test_stale_lock_file_never_blocks(waiter: Waiter, content: str) -> None:
    sbx = waiter.sbx
    sbx.state.mkdir(mode=0o700)
    lock = sbx.state / "lock"
    lock.write_text(content.format(pid=dead_pid()))
    os.chmod(lock, 0o600)
    waiter.release()

    result = sbx.hs_tx("update", timeout=60)

    assert result.returncode == 0, result.stderr
    assert [(r["id"], r["state"]) for r in history(sbx)] == [(1, "committed")]


def test_lock_of_a_killed_run_never_blocks(waiter: Waiter) -> None:
    """A holder killed with SIGKILL leaves its lock file naming it; the next run goes on
    (and first repairs the killed run's transaction)."""
    sbx = waiter.sbx
    first = waiter.start()
    waiter.wait_inside_module(first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    holder = (sbx.state / "lock").read_text()
    assert str(first.pid) in holder, holder

    waiter.release()
    result = sbx.hs_tx("update", timeout=60)

    assert result.returncode == 0, result.stderr
    states = {r["id"]: r["state"] for r in history(sbx)}
    assert states[2] == "committed"
    assert states[1] == "rolled_back", "a module ran, so recovery must roll it back"
    assert str(first.pid) not in (sbx.state / "lock").read_text()


def test_lock_file_is_private(waiter: Waiter) -> None:
    waiter.release()
    result = waiter.sbx.hs_tx("update", timeout=60)
    assert result.returncode == 0, result.stderr
    lock = waiter.sbx.state / "lock"
    assert lock.exists()
    assert os.stat(lock).st_mode & 0o077 == 0
    assert Path(lock).is_file() and not lock.is_symlink()
