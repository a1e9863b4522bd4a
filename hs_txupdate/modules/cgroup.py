"""Containing a module's processes in a cgroup v2 of its own, so none outlives it.

Each module run gets a child cgroup below hs-tx's own (read from
/proc/self/cgroup; the shipped service unit has `Delegate=yes` so systemd hands
that subtree over). The worker moves itself into it first thing, before it can
start anything; when the module ends, however it ends, `cgroup.kill` kills
every process left in it (a `Popen` left running, a double-forked daemon) and
the cgroup is removed. Where no writable cgroup v2 exists the module's own
session stands in (its process group is killed instead). Standard library only
(the worker imports it), but for hs-tx's own `base.proc` in `warm_up_detached`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

CGROUP_ENV = "HS_TX_CGROUP"
EMPTY_WITHIN_S = 5.0  # cgroup.kill is asynchronous: wait this long for `populated 0`


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or
    /sys/fs/cgroup/unified on a hybrid host), or None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split()[:1] == ["cgroup2"]:
                    return Path(left.split()[4])
    except OSError:
        return None
    return None


def own_cgroup() -> Path | None:
    """The directory of this process's cgroup v2 (None without one)."""
    root = cgroup2_root()
    if root is None:
        return None
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                hierarchy, _, rest = line.strip().partition(":")
                controllers, _, path = rest.partition(":")
                if hierarchy == "0" and controllers == "":
                    return root / path.lstrip("/")
    except OSError:
        return None
    return None


def create(name: str) -> tuple[Path | None, str | None]:
    """A fresh cgroup `name` below this process's own; (its path, None), or (None,
    why not) where no writable cgroup v2 exists."""
    parent = own_cgroup()
    if parent is None:
        return None, "no cgroup v2 hierarchy is mounted"
    path = parent / name
    try:
        if path.exists():
            kill(path)
        path.mkdir()
    except OSError as exc:
        return None, f"cannot create a cgroup below {parent}: {exc.strerror}"
    if not (path / "cgroup.kill").exists():
        remove(path)
        return None, "this kernel's cgroup v2 has no cgroup.kill"
    return path, None


def warm_up() -> None:
    """Move this process into the cgroup it is in: nothing changes, but the kernel
    takes its slow path for migrations now (it waits a grace period, about 15 ms,
    to enter it) and keeps it for a grace period after, so a worker moving into its
    cgroup soon after does not wait. Called by the fork server as it starts, while
    hs-tx gets the first module ready. Never raises."""
    own = own_cgroup()
    if own is not None:
        with contextlib.suppress(OSError), open(own / "cgroup.procs", "wb") as f:
            f.write(b"0")


def warm_up_detached() -> None:
    """What `warm_up` does, by a short process that nobody waits for and that holds
    none of this process's files (`tee` writing 0), so that the kernel is in its slow
    path for migrations by the time the fork server starts: started before the scope
    is snapshotted, its grace period passes while the snapshot is taken. Never raises."""
    from ..base.proc import CommandError, spawn_detached  # here: workers import this module

    own = own_cgroup()
    if own is not None:
        with contextlib.suppress(CommandError):
            spawn_detached(["tee", str(own / "cgroup.procs")], stdin=b"0")


def join_from_environ() -> None:
    """In the worker: move this process into the cgroup named by HS_TX_CGROUP (if any),
    before it starts anything; the variable is not passed on."""
    path = os.environ.pop(CGROUP_ENV, "")
    if path:
        with open(os.path.join(path, "cgroup.procs"), "wb") as f:
            f.write(b"0")  # 0: the writing process, whatever its pid namespace


def members(path: Path) -> list[int]:
    """The pids (as this process sees them) in cgroup `path`."""
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def kill(path: Path) -> int:
    """Kill every process in cgroup `path`, wait until it is empty, remove it; return
    how many processes were in it. A missing cgroup is fine."""
    if not path.is_dir():
        return 0
    count = len(members(path))
    with contextlib.suppress(OSError):
        (path / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + EMPTY_WITHIN_S
    while _populated(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    remove(path)
    return count


def kill_session(sid: int) -> None:
    """The fallback: kill process group `sid` (the worker's own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGKILL)


def remove(path: Path) -> None:
    """Remove an empty cgroup; one that is gone, or still busy, is left to recovery."""
    with contextlib.suppress(OSError):
        path.rmdir()


def _populated(path: Path) -> bool:
    try:
        for line in (path / "cgroup.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "populated":
                return value.strip() == "1"
    except OSError:
        return False
    return False
