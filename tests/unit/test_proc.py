"""The one subprocess chokepoint: a missing command, a command watched as it runs, and
a child forked to run a function."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from hs_txupdate.base.forking import fork_child
from hs_txupdate.base.proc import CommandError, run, run_watched, wait_exit


def test_a_missing_command_says_how_to_install_it() -> None:
    with pytest.raises(CommandError) as caught:
        run(["no-such-command-hs-tx"])
    assert "command not found: no-such-command-hs-tx" in caught.value.message


def test_a_forked_child_talks_through_its_pipes_and_exits_with_what_it_returns() -> None:
    def echo() -> int:
        data = os.read(0, 100)
        os.write(1, data.upper())
        return 7

    child = fork_child(echo, "hs-tx-test", ())
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(b"hello")
    child.stdin.close()
    assert child.stdout.read() == b"HELLO"
    assert wait_exit(child, 10) == 7
    child.stdout.close()


def test_a_forked_child_that_raises_exits_1_with_its_traceback_and_keeps_only_its_fds() -> None:
    kept_r, kept_w = os.pipe()
    other_r, other_w = os.pipe()

    def check() -> int:
        os.write(kept_w, b"kept")
        os.fstat(other_w)  # closed in the child: raises
        return 0

    child = fork_child(check, "hs-tx-test", (kept_w,))
    assert wait_exit(child, 10) == 1
    assert child.stderr is not None and b"Bad file descriptor" in child.stderr.read()
    assert os.read(kept_r, 10) == b"kept"
    waiting = fork_child(lambda: len(os.read(0, 1)), "hs-tx-test", ())
    with pytest.raises(subprocess.TimeoutExpired):
        wait_exit(waiting, 0.1)
    waiting.kill()
    assert wait_exit(waiting, 10) == -9
    for fd in (kept_r, kept_w, other_r, other_w):
        os.close(fd)


def test_a_watched_command_s_output_is_handed_over_whole_as_it_comes() -> None:
    pieces: list[bytes] = []
    # 40 MiB: many times the pipe's size, so the reads must keep up with the writer
    run_watched(["head", "-c", str(40 << 20), "/dev/zero"], timeout=60, stdout_to=pieces.append)
    assert sum(len(p) for p in pieces) == 40 << 20 and set(b"".join(pieces)) == {0}
    pieces.clear()
    run_watched(["sh", "-c", "printf a; sleep 0.5; printf b"], timeout=60, stdout_to=pieces.append)
    assert b"".join(pieces) == b"ab"


def test_a_consumer_that_raises_stops_the_command_and_its_helpers() -> None:
    def refuse(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    started = time.monotonic()
    with pytest.raises(OSError, match="No space"):
        run_watched(["sh", "-c", "sleep 60 & yes"], timeout=60, stdout_to=refuse)
    assert time.monotonic() - started < 30
    deadline = time.monotonic() + 10  # SIGKILL is sent; the kernel ends them soon after
    while (sleepers := _pgrep("^sleep 60$")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers == "", "the session was killed, its helpers too"


def _pgrep(pattern: str) -> str:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout


def test_a_watched_command_reads_its_input_whole_as_it_is_written() -> None:
    pieces = [os.urandom(n) for n in (1, 70_000, 3 << 20, 0, 5)]  # past the pipe's size
    result = run_watched(["sha256sum"], timeout=60, keep_stdout=True, stdin_from=iter(pieces))
    assert result.stdout.split()[0] == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_a_command_that_stops_reading_its_input_ends_with_its_own_status() -> None:
    endless = iter(lambda: bytes(1 << 16), b"")
    result = run_watched(["head", "-c", "10"], timeout=60, keep_stdout=True, stdin_from=endless)
    assert result.stdout == "\0" * 10
    with pytest.raises(CommandError, match="sh failed"):
        run_watched(["sh", "-c", "exit 4"], timeout=60, stdin_from=endless)


def test_input_that_raises_stops_the_command_and_its_helpers() -> None:
    def pieces() -> Iterator[bytes]:
        yield b"some input"
        time.sleep(0.3)
        raise ValueError("a chunk fails its digest")

    with pytest.raises(ValueError, match="digest"):
        run_watched(["sh", "-c", "sleep 61 & cat >/dev/null"], timeout=60, stdin_from=pieces())
    deadline = time.monotonic() + 10
    while (sleepers := _pgrep("^sleep 61$")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers == "", "the session was killed, its helpers too"
