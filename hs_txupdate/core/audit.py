"""The write audit of one transaction: what the run changed outside its scope.

From phase 1 to the end of phase 2 the audit (hs_txupdate.audit) sees every write
under `[scope] watch`, attributed to the module whose processes made it. At the
end, what lies outside the transaction's scope (planned, and added by StateManager
backups meanwhile) is journaled as the run's outside-scope changes; what a module
changed there becomes its learned footprint, in scope from its next run on. A
run that stopped before its audit finished (a crash) is audited by a scan at
recovery, so the journal never claims less than the run did.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..audit import Audit, AuditResult, Change
from ..audit.paths import read_mounts
from ..audit.scan import SCAN_NOTE, changed_since
from ..journal import ChangeInfo, Origin, OutsideInfo, Phase, Status, Step, TxInfo
from .context import Context
from .system import holding, run_change, system_of

# a learned name that looks different every run (a timestamp, a temp file) is
# learned as its directory instead
_VOLATILE = re.compile(r"\d{6,}|^tmp|\.tmp$|~$|\.swp$|\.sw[a-z]$|^\.#|\.part$|\.lock$")
SHOWN = 3  # paths named in a message; the rest are counted
_SQLITE = ("-wal", "-shm", "-journal")


class RunAudit:
    """The audit of one transaction's run (a no-op until started)."""

    def __init__(self, ctx: Context, tx_id: int) -> None:
        self.ctx = ctx
        self.tx_id = tx_id
        self.audit: Audit | None = None
        self.started_ns: int | None = None

    def start(self, meanwhile: Callable[[], None] | None = None) -> None:
        """Start watching; journal how (fanotify, or a scan at the end, and why).
        `meanwhile` runs while the audit's reader starts (see Audit.start)."""
        config = self.ctx.config
        self.audit = Audit.start(list(config.watch), list(config.ignores), meanwhile=meanwhile)
        self.started_ns = self.audit.started_ns
        detail = {
            "method": self.audit.method,
            "reason": self.audit.reason,
            "started_ns": self.audit.started_ns,
            "watch": [str(p) for p in config.watch],
        }
        self.ctx.journal.event(self.tx_id, Phase.AUDIT, Step.START, Status.DONE, detail)
        if self.audit.method != "fanotify":
            self.ctx.log(f"hs-tx: note: the write audit uses a scan: {self.audit.reason}")

    def window(self, module: str | None) -> None:
        """Attribute the writes that follow to `module` (None: the run itself)."""
        if self.audit is not None:
            self.audit.window(module)

    def finish(self) -> list[OutsideInfo]:
        """Stop watching; journal and return what the run changed outside its scope."""
        audit, self.audit = self.audit, None
        if audit is None:
            return []
        try:
            result = audit.finish()
        except BaseException:
            audit.abandon()
            raise
        return record(self.ctx, self.tx_id, result)

    def finish_anyway(self) -> None:
        """On the way out of a run that failed with an error: journal what the audit
        saw, or, when it cannot say, what a scan finds; never raises an Exception."""
        try:
            self.finish()
        except Exception as exc:
            self.ctx.log(f"hs-tx: warning: the write audit failed ({exc}); scanning instead")
            info = self.ctx.journal.transaction(self.tx_id)
            if info is not None:
                audit_cut_off(self.ctx, info)


def record(ctx: Context, tx_id: int, result: AuditResult) -> list[OutsideInfo]:
    """Journal an audit's result for `tx_id`: its method, the changes outside the scope
    and the footprints they teach; return the outside changes."""
    info = ctx.journal.transaction(tx_id)
    assert info is not None
    scope = [Path(p.path) for p in info.paths if p.origin != Origin.SYSTEM]
    # a database's journal files follow it: restoring it through SQLite sets them right
    scope += [Path(p.path + s) for p in info.paths if p.backend == "sqlite" for s in _SQLITE]
    system, mounts = system_of(info.paths), read_mounts()
    held = [bool(system) and holding(c.path, system, mounts) is not None for c in result.changes]
    inside = [c for c, h in zip(result.changes, held, strict=True) if h]
    rest = [c for c, h in zip(result.changes, held, strict=True) if not h]
    outside = [c for c in rest if not _covered(Path(c.path), scope)]
    if result.method != "fanotify":
        # a scan sees a dir as modified when a scope path in it was created or removed
        outside = [c for c in outside if not _holds_scope(c, scope)]
    detail = {"method": result.method, "outside": len(outside), "others": result.others}
    if system:
        detail["inside"] = len(inside)
    with ctx.journal.together():  # the result and its event: one durable write
        ctx.journal.add_run_changes(tx_id, [run_change(c) for c in inside])
        ctx.journal.set_audit(tx_id, result.method, result.reason, result.others)
        ctx.journal.add_outside(tx_id, [(c.path, c.change, c.module, c.count) for c in outside])
        ctx.journal.learn(tx_id, footprints(outside))
        ctx.journal.event(tx_id, Phase.AUDIT, Step.FINISH, Status.DONE, detail)
    return [OutsideInfo(c.path, c.change, c.module, c.count, None) for c in outside]


def audit_cut_off(ctx: Context, info: TxInfo) -> None:
    """For a transaction whose audit started but never finished (hs-tx stopped):
    find what changed under the watched roots since it started by a scan, and
    journal it like a finished audit (writers unknown)."""
    started = [e for e in info.events if e.phase == Phase.AUDIT and e.step == Step.START]
    finished = any(e.phase == Phase.AUDIT and e.step == Step.FINISH for e in info.events)
    if not started or finished or not started[-1].detail:
        return
    since = int(started[-1].detail["started_ns"])
    watch = [str(p) for p in ctx.config.watch]
    ignores = [str(p) for p in ctx.config.ignores]
    changes = changed_since(watch, ignores, since, read_mounts())
    reason = f"hs-tx stopped before its write audit finished; {SCAN_NOTE}"
    record(ctx, info.id, AuditResult("scan", reason, changes, 0))


def footprints(outside: list[Change]) -> list[tuple[str, str]]:
    """(module, path) to learn from what modules changed outside the scope: a path
    whose name changes every run stands for its directory; the run's own writes
    (module None) teach nothing."""
    learned = []
    for change in outside:
        if change.module is None:
            continue
        path = Path(change.path)
        if _VOLATILE.search(path.name) and len(path.parent.parts) > 2:
            path = path.parent
        learned.append((change.module, str(path)))
    return learned


def describe(outside: Sequence[ChangeInfo]) -> str:
    """`/a, /b, /c and 4 more`: the first few paths and how many more."""
    names = ", ".join(o.path for o in outside[:SHOWN])
    more = len(outside) - SHOWN
    return names + (f" and {more} more" if more > 0 else "")


def _holds_scope(change: Change, scope: list[Path]) -> bool:
    path = Path(change.path)
    return change.change == "modified" and any(s.is_relative_to(path) for s in scope)


def _covered(path: Path, scope: list[Path]) -> bool:
    return any(path.is_relative_to(s) for s in scope)
