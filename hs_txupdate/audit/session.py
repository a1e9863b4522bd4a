"""The parent side of the write audit: `Audit.start` sets up fanotify and the
run's pid namespace (or falls back to the scan when the kernel refuses),
`window` attributes what follows to a module, `finish` returns the AuditResult."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ..base.crashpoints import audit_events_lost
from ..base.errors import HsTxError
from ..base.proc import CommandError, spawn_detached
from . import kernel
from .fold import Change, classify
from .link import ReaderError, ReaderLink
from .paths import Filesystem, plan_filesystems, read_mounts, unaudited
from .scan import SCAN_NOTE, changed_since, count_tree

READY_TIMEOUT_S = 30.0
ANSWER_TIMEOUT_S = 300.0  # a drain of a million queued events takes seconds
STOP_TIMEOUT_S = 5.0
_CLOCK_REALTIME_COARSE = 5  # file timestamps come from this clock: never after it


@dataclass
class AuditResult:
    """What the run wrote: `method` "fanotify" or "scan"; `reason` why the scan
    was used or what was lost (None when fanotify saw everything); `changes` the
    run's own net changes, folded, sorted by path; `others` how many events
    processes outside the run caused below the watched roots (never listed; 0
    when only the scan ran, which cannot tell writers apart)."""

    method: str
    reason: str | None
    changes: list[Change]
    others: int


class AuditError(HsTxError):
    """The audit was used wrongly (a window after finish) or cannot restore the
    pid namespace of hs-tx's children."""


class Audit:
    """The write audit of one run. Start it with `Audit.start`; between start
    and finish (or abandon) every child this process starts lands in the run's
    pid namespace, and this thread cannot start threads (see `outside`).
    `start`, `window`, `finish` and `abandon` must be called on one thread."""

    def __init__(self, watch: list[Path], ignore: list[Path]) -> None:
        # the kernel names paths without symlinks: so must the roots
        self.roots = sorted({os.path.realpath(p) for p in watch})
        self.ignores = sorted({os.path.realpath(p) for p in ignore})
        self.started_ns = time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)
        self.method = "scan"
        self.reason: str | None = None
        self.reader_pid: int | None = None
        self._link: ReaderLink | None = None
        self._ns: kernel.PidNamespace | None = None
        self._done = False
        self._unseen: str | None = None  # what fanotify cannot see, if anything
        self._group: int | None = None  # the reader's fanotify group, held here too

    @classmethod
    def start(
        cls,
        watch: list[Path],
        ignore: list[Path],
        meanwhile: Callable[[], None] | None = None,
    ) -> Audit:
        """Start auditing writes below `watch` (except below the `ignore` paths
        that lie inside a watched root).
        Never raises for a refusal of the kernel: the audit then uses the scan
        (`method` "scan") and `reason` says why. `meanwhile` is called once, as soon
        as what it starts lands in the run's pid namespace, while the reader starts
        up (or at once, when the scan is used): work that overlaps the wait."""
        audit = cls(watch, ignore)
        pending = [meanwhile] if meanwhile is not None else []
        try:
            audit._start_reader(pending)
        except (OSError, ReaderError) as exc:
            audit._fall_back(f"fanotify could not be used ({exc})")
        for work in pending:
            work()
        return audit

    def window(self, module: str | None) -> None:
        """Attribute what follows to `module` (None: the run itself) after every
        event queued so far was attributed to the previous window.
        Raises AuditError after finish or abandon."""
        self._check_open()
        if self._link is None:
            return
        try:
            self._link.request({"op": "window", "module": module}, ANSWER_TIMEOUT_S)
        except ReaderError as exc:
            self._fall_back(f"the audit reader failed ({exc})")

    def finish(self) -> AuditResult:
        """Drain, stop the reader, restore the pid namespace of children and
        return the result (scanning when fanotify was refused or lost events).
        Raises AuditError after finish or abandon, or when the namespace cannot be restored."""
        self._check_open()
        aggregate: dict[str, Any] | None = None
        if self._link is not None:
            try:
                aggregate = self._link.request({"op": "finish"}, ANSWER_TIMEOUT_S)["result"]
            except (ReaderError, KeyError) as exc:
                self._fall_back(f"the audit reader failed ({exc})")
        self._done = True
        self._teardown()
        if aggregate is None:
            return self._scan(0)
        if audit_events_lost():
            aggregate["lost"] = [*aggregate["lost"], "dropped on purpose by a test"]
        if aggregate["lost"]:
            self._fall_back(f"fanotify lost events ({'; '.join(aggregate['lost'])})")
            return self._scan(int(aggregate["others"]))
        changes = classify(aggregate, os.path.lexists, count_tree)
        return AuditResult("fanotify", self._unseen, changes, int(aggregate["others"]))

    def abandon(self) -> None:
        """Stop everything without a result (error paths); idempotent, never raises."""
        self._done = True
        with contextlib.suppress(OSError, AuditError):
            self._teardown()

    @contextlib.contextmanager
    def outside(self) -> Iterator[None]:
        """Within this block new children land in hs-tx's own pid namespace (not
        audited as the run's) and threads can be started; after it, children
        land in the run's namespace again. Raises AuditError when setns fails."""
        ns = self._ns
        if ns is None:
            yield
            return
        try:
            ns.own()
        except OSError as exc:
            raise AuditError(f"cannot leave the audit's pid namespace: {exc}") from exc
        try:
            yield
        finally:
            if self._ns is ns:
                ns.rejoin()

    def __enter__(self) -> Audit:
        """Return the audit; leaving the block abandons it unless it was finished."""
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Abandon the audit (a no-op after finish)."""
        self.abandon()

    def _start_reader(self, meanwhile: list[Callable[[], None]]) -> None:
        """Mark the filesystems, unshare the pid namespace, start the reader, run (and
        take out of) `meanwhile`, and wait for the reader. Raises OSError or
        ReaderError (everything undone)."""
        mounts = read_mounts()
        plan = plan_filesystems(self.roots, self.ignores, mounts)
        remote = unaudited(self.roots, self.ignores, mounts)
        if remote:
            self._unseen = f"not audited (network or FUSE filesystems): {', '.join(remote)}"
        fan_fd = kernel.fanotify_group()
        tops: dict[str, int] = {}  # dev -> fd of a detached top-level mount
        # held here too, so that neither the reader's exit (which the run waits for)
        # nor this process closes it last (see _close_detached)
        self._group = fan_fd
        try:
            _mark(fan_fd, plan, tops)
            self._ns = kernel.PidNamespace.enter()
            self._link = ReaderLink.spawn((fan_fd, *tops.values()))  # PID 1 there
        except BaseException:
            self._teardown()
            raise
        finally:  # the reader's exit unmounts them: a filesystem is not kept busy
            for fd in tops.values():
                os.close(fd)
        config = {
            "fan_fd": fan_fd,
            "watch": self.roots,
            "ignore": self.ignores,
            "filesystems": [
                {"point": f.point, "root": f.root, "views": f.views, "top_fd": tops.get(f.dev)}
                for f in plan
            ],
        }
        try:
            while meanwhile:
                meanwhile.pop()()
            self._link.request(config, READY_TIMEOUT_S)
            self._ns.hold(self._link.pid)
        except BaseException:
            self._teardown()
            raise
        self.reader_pid = self._link.pid
        self.method = "fanotify"

    def _fall_back(self, why: str) -> None:
        """Give up on fanotify: stop the reader, remember why, scan at finish."""
        with contextlib.suppress(OSError):
            self._teardown()
        self.method = "scan"
        self.reason = f"{why}; {SCAN_NOTE}"

    def _scan(self, others: int) -> AuditResult:
        """Return the result of the fallback scan (module None throughout)."""
        mounts = read_mounts()
        changes = changed_since(self.roots, self.ignores, self.started_ns, mounts)
        reason = self.reason or SCAN_NOTE
        remote = unaudited(self.roots, self.ignores, mounts)
        if remote:
            reason += f"; not scanned (network or FUSE filesystems): {', '.join(remote)}"
        return AuditResult("scan", reason, changes, others)

    def _teardown(self) -> None:
        """Restore the namespace of children, then stop the reader (its namespace
        dies with it). Raises AuditError when the namespace cannot be restored."""
        ns, self._ns = self._ns, None
        link, self._link = self._link, None
        try:
            if ns is not None:
                ns.leave()
        except OSError as exc:
            raise AuditError(f"cannot restore the pid namespace of children: {exc}") from exc
        finally:
            if link is not None:
                link.stop(STOP_TIMEOUT_S)
            if self._group is not None:
                _close_detached(self._group)
                self._group = None

    def _check_open(self) -> None:
        """Raise AuditError once the audit is finished or abandoned."""
        if self._done:
            raise AuditError("the audit is already finished")


def _close_detached(group: int) -> None:
    """Close the fanotify group `group`, its last reference going to a short process
    nobody waits for (`true`): the last close of a group waits for the kernel to free
    its marks (a grace period, about 15 ms here). Closes it here when that process
    cannot start."""
    with contextlib.suppress(CommandError):
        spawn_detached(["true"], pass_fds=[group])
    os.close(group)


def _mark(fan_fd: int, plan: list[Filesystem], tops: dict[str, int]) -> None:
    """Mark every filesystem of `plan` in the fanotify group `fan_fd`, a btrfs seen only
    through subvolumes through a detached mount of its top level (its fd kept in `tops`,
    by device). Raises OSError."""
    for fs in plan:
        if fs.needs_top_level:
            tops[fs.dev] = kernel.btrfs_top_level(fs.source)
            kernel.mark_filesystem(fan_fd, ".", tops[fs.dev])
        else:
            kernel.mark_filesystem(fan_fd, fs.point)


def why_unwatchable(watch: list[Path], ignore: list[Path]) -> str | None:
    """Given the roots and ignores of a run, try what `Audit.start` does first: make a
    fanotify group and mark every filesystem to watch, then undo it. Return None when
    that works, else why not."""
    roots = sorted({os.path.realpath(p) for p in watch})
    ignores = sorted({os.path.realpath(p) for p in ignore})
    tops: dict[str, int] = {}
    fan_fd = None
    try:
        fan_fd = kernel.fanotify_group()
        _mark(fan_fd, plan_filesystems(roots, ignores, read_mounts()), tops)
    except OSError as exc:
        return str(exc)
    finally:
        for fd in (fan_fd, *tops.values()):
            if fd is not None:
                os.close(fd)
    return None
