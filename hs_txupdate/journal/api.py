"""The journal API: every read and write of the journal goes through `Journal`.

Each write is its own SQLite transaction, committed (WAL, synchronous=FULL)
before the call returns, so an event is durable before the step it announces
acts.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from .models import Event, ModuleRun, ScopePath, Transaction, UndoLink
from .schema import create_journal_engine

_Info = TypeVar("_Info")
RUNNING_STATES = ("open", "snapshotted", "running", "rolling_back")
FINAL_STATES = ("committed", "rolled_back", "rollback_failed", "aborted")
_NET_COLUMNS = frozenset({"before", "after", "restored", "actions"})


_DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM/SIGHUP while a write commits, so an interruption
    (which hs-tx turns into an exception) never lands inside SQLite's commit."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def now_iso() -> str:
    """The current time as ISO 8601 with its UTC offset."""
    return datetime.now(UTC).astimezone().isoformat(timespec="milliseconds")


@dataclass
class PathInfo:
    """One scope path of a transaction, as journaled."""

    n: int
    path: str
    existed: bool
    backend: str
    snapshot: str | None
    manifest: str | None
    manifest_sha256: str | None
    size: int | None
    checksum: str | None
    changed: bool | None
    pruned_at: str | None
    fingerprint: str | None
    fingerprint_before: str | None


@dataclass
class EventInfo:
    """One journaled step."""

    seq: int
    phase: str
    step: str
    status: str
    at: str
    detail: dict[str, Any] | None


@dataclass
class ModuleRunInfo:
    """One module run inside a transaction."""

    name: str
    schema_version: str | None
    version_from: str | None
    version_to: str | None
    status: str
    started_at: str
    duration_s: float | None
    exit_status: int | None
    output_tail: str | None
    error: str | None
    kind: str | None


@dataclass
class LastRunInfo:
    """The newest run of one module: in which transaction, how it ended, when it started."""

    name: str
    tx_id: int
    kind: str | None
    status: str
    started_at: str


@dataclass
class TxInfo:
    """A transaction row, with its paths, modules and events when asked for."""

    id: int
    kind: str
    state: str
    started_at: str
    finished_at: str | None
    user: str
    host: str
    command: list[str]
    pid: int | None
    exit_code: int | None
    error: str | None
    undoes: int | None
    undone_by: int | None
    snapshots_pruned_at: str | None
    source_before: str | None
    source_after: str | None
    net_before: dict[str, Any] | None = None
    net_after: dict[str, Any] | None = None
    net_restored: dict[str, Any] | None = None
    net_actions: list[dict[str, Any]] | None = None
    paths: list[PathInfo] = field(default_factory=list)
    modules: list[ModuleRunInfo] = field(default_factory=list)
    events: list[EventInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of everything in this record."""
        return asdict(self)


class _CrashHooks:
    """Test hooks: SIGKILL or SIGSTOP this process after its N-th durable event.

    HS_TX_CRASH_AT / HS_TX_PAUSE_AT are read from this process's environment
    and never passed on to children (see core.proc.child_env).
    """

    def __init__(self) -> None:
        self.count = 0
        self.crash_at = _int_env("HS_TX_CRASH_AT")
        self.pause_at = _int_env("HS_TX_PAUSE_AT")

    def after_durable_event(self) -> None:
        """Count one durable event; crash or pause when the configured N is reached."""
        self.count += 1
        if self.pause_at == self.count:
            os.kill(os.getpid(), signal.SIGSTOP)
        if self.crash_at == self.count:
            os.kill(os.getpid(), signal.SIGKILL)


def _int_env(name: str) -> int | None:
    """An integer environment variable, or None when unset or not a number.

    The variable is removed from this process's environment, so that no process
    hs-tx starts (git included, which sees os.environ) inherits it.
    """
    value = os.environ.pop(name, "")
    return int(value) if value.isdigit() else None


class Journal:
    """The journal of one state dir. Given the path of journal.db."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._engine = create_journal_engine(path)
        self._session = sessionmaker(self._engine, expire_on_commit=False)
        self._hooks = _CrashHooks()

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    @property
    def events_written(self) -> int:
        """How many events this process has made durable (for the crash sweep)."""
        return self._hooks.count

    # --- transactions -----------------------------------------------------------------
    def begin(self, kind: str, command: list[str], user: str, host: str) -> int:
        """Create a transaction in state `open`, durably; return its id."""
        with _signals_deferred(), self._session() as s, s.begin():
            tx = Transaction(
                kind=kind,
                state="open",
                started_at=now_iso(),
                user=user,
                host=host,
                command=json.dumps(command),
                pid=os.getpid(),
            )
            s.add(tx)
            s.flush()
            return tx.id

    def set_state(
        self,
        tx_id: int,
        state: str,
        *,
        error: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        """Move a transaction to `state`; a final state also records the end time."""
        values: dict[str, Any] = {"state": state}
        if error is not None:
            values["error"] = error
        if exit_code is not None:
            values["exit_code"] = exit_code
        if state in FINAL_STATES:
            values["finished_at"] = now_iso()
        with _signals_deferred(), self._session() as s, s.begin():
            s.execute(update(Transaction).where(Transaction.id == tx_id).values(**values))

    def set_source(self, tx_id: int, before: str | None, after: str) -> None:
        """Record the source commit applied before this transaction and the one fetched."""
        with _signals_deferred(), self._session() as s, s.begin():
            s.execute(
                update(Transaction)
                .where(Transaction.id == tx_id)
                .values(source_before=before, source_after=after)
            )

    def last_applied_source(self) -> str | None:
        """The source commit of the newest committed transaction that fetched one."""
        with self._session() as s:
            return s.scalar(
                select(Transaction.source_after)
                .where(Transaction.state == "committed", Transaction.source_after.is_not(None))
                .order_by(Transaction.id.desc())
                .limit(1)
            )

    def set_net(self, tx_id: int, **states: Any) -> None:
        """Record network guard data of a transaction, as JSON: any of `before`,
        `after`, `restored` (captured states) and `actions` (the changes it made)."""
        unknown = set(states) - _NET_COLUMNS
        assert not unknown, f"unknown network guard data: {sorted(unknown)}"
        values = {f"net_{k}": json.dumps(v, sort_keys=True) for k, v in states.items()}
        with _signals_deferred(), self._session() as s, s.begin():
            s.execute(update(Transaction).where(Transaction.id == tx_id).values(**values))

    def net(self, tx_id: int) -> dict[str, Any]:
        """The network guard data of a transaction: `before`, `after`, `restored`,
        `actions`, each None when never recorded."""
        with self._session() as s:
            row = s.get(Transaction, tx_id)
            if row is None:
                return dict.fromkeys(_NET_COLUMNS)
            return {k: _loads(getattr(row, f"net_{k}")) for k in _NET_COLUMNS}

    def set_undoes(self, tx_id: int, undoes: int) -> None:
        """Record that transaction `tx_id` undoes transaction `undoes`."""
        with _signals_deferred(), self._session() as s, s.begin():
            s.execute(update(Transaction).where(Transaction.id == tx_id).values(undoes=undoes))

    # --- events -------------------------------------------------------------------------
    def event(
        self,
        tx_id: int,
        phase: str,
        step: str,
        status: str,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Append an event (status intent, done or failed), durably; return its seq."""
        with _signals_deferred(), self._session() as s, s.begin():
            last = s.scalar(select(func.max(Event.seq)).where(Event.tx_id == tx_id)) or 0
            s.add(
                Event(
                    tx_id=tx_id,
                    seq=last + 1,
                    phase=phase,
                    step=step,
                    status=status,
                    at=now_iso(),
                    detail=json.dumps(detail, sort_keys=True) if detail is not None else None,
                )
            )
        self._hooks.after_durable_event()
        return last + 1

    # --- scope paths --------------------------------------------------------------------
    def add_path(self, tx_id: int, n: int, path: str, existed: bool, backend: str) -> None:
        """Record scope path number `n` of a transaction, before it is snapshotted."""
        with _signals_deferred(), self._session() as s, s.begin():
            s.add(ScopePath(tx_id=tx_id, n=n, path=path, existed=existed, backend=backend))

    def update_path(self, tx_id: int, n: int, **values: Any) -> None:
        """Set columns (snapshot, manifest, size, checksum, changed, ...) of a scope path."""
        with _signals_deferred(), self._session() as s, s.begin():
            s.execute(
                update(ScopePath).where(ScopePath.tx_id == tx_id, ScopePath.n == n).values(**values)
            )

    def mark_pruned(self, tx_id: int) -> None:
        """Record that every snapshot of `tx_id` was deleted by retention."""
        at = now_iso()
        with _signals_deferred(), self._session() as s, s.begin():
            s.execute(update(ScopePath).where(ScopePath.tx_id == tx_id).values(pruned_at=at))
            s.execute(
                update(Transaction).where(Transaction.id == tx_id).values(snapshots_pruned_at=at)
            )

    # --- module runs --------------------------------------------------------------------
    def start_module_run(
        self,
        tx_id: int,
        name: str,
        schema_version: str | None,
        *,
        version_from: str | None = None,
        kind: str = "main",
    ) -> int:
        """Record that module `name` starts running; return the run's id.

        `version_from` is the version installed before phase 1 replaced it
        (None: the same as `schema_version`); `kind` is main or maintenance.
        """
        with _signals_deferred(), self._session() as s, s.begin():
            run = ModuleRun(
                tx_id=tx_id,
                name=name,
                schema_version=schema_version,
                version_from=version_from or schema_version,
                version_to=schema_version,
                kind=kind,
                status="running",
                started_at=now_iso(),
            )
            s.add(run)
            s.flush()
            return run.id

    def finish_module_run(self, run_id: int, **values: Any) -> None:
        """Record a module run's outcome (status, duration_s, exit_status, output_tail, error)."""
        with _signals_deferred(), self._session() as s, s.begin():
            s.execute(update(ModuleRun).where(ModuleRun.id == run_id).values(**values))

    # --- reading ------------------------------------------------------------------------
    def transactions(self, limit: int | None = None) -> list[TxInfo]:
        """Transactions newest first (at most `limit`), with their module runs."""
        with self._session() as s:
            query = select(Transaction).order_by(Transaction.id.desc())
            if limit is not None:
                query = query.limit(limit)
            rows = list(s.scalars(query))
            undone = self._undone_by(s, [r.id for r in rows])
            infos = [_tx_info(r, undone.get(r.id)) for r in rows]
            for info in infos:
                info.modules = self._modules(s, info.id)
            return infos

    def transaction(self, tx_id: int) -> TxInfo | None:
        """One transaction with its paths, module runs and events; None if unknown."""
        with self._session() as s:
            row = s.get(Transaction, tx_id)
            if row is None:
                return None
            info = _tx_info(row, self._undone_by(s, [tx_id]).get(tx_id))
            info.paths = self._paths(s, tx_id)
            info.modules = self._modules(s, tx_id)
            info.events = [
                EventInfo(e.seq, e.phase, e.step, e.status, e.at, _loads(e.detail))
                for e in s.scalars(select(Event).where(Event.tx_id == tx_id).order_by(Event.seq))
            ]
            return info

    def unfinished(self) -> list[TxInfo]:
        """Transactions left in a running state, oldest first, with paths and events."""
        with self._session() as s:
            ids = list(
                s.scalars(
                    select(Transaction.id)
                    .where(Transaction.state.in_(RUNNING_STATES))
                    .order_by(Transaction.id)
                )
            )
        return [info for i in ids if (info := self.transaction(i)) is not None]

    def committed_with_snapshots(self) -> list[TxInfo]:
        """Committed transactions whose snapshots are still kept, newest first, with paths."""
        with self._session() as s:
            ids = list(
                s.scalars(
                    select(Transaction.id)
                    .where(
                        Transaction.state == "committed",
                        Transaction.snapshots_pruned_at.is_(None),
                    )
                    .order_by(Transaction.id.desc())
                )
            )
        return [info for i in ids if (info := self.transaction(i)) is not None]

    def final_with_snapshots(self) -> list[TxInfo]:
        """Rolled-back or aborted transactions whose snapshots were never deleted
        (hs-tx stopped between the final state and the deletion), with paths."""
        with self._session() as s:
            ids = list(
                s.scalars(
                    select(Transaction.id)
                    .where(
                        Transaction.state.in_(("rolled_back", "aborted")),
                        Transaction.snapshots_pruned_at.is_(None),
                    )
                    .order_by(Transaction.id)
                )
            )
        return [info for i in ids if (info := self.transaction(i)) is not None]

    def last_module_runs(self) -> dict[str, LastRunInfo]:
        """For every module that ever ran: its newest run (main or maintenance), by name."""
        with self._session() as s:
            newest = select(func.max(ModuleRun.id)).group_by(ModuleRun.name)
            rows = s.scalars(select(ModuleRun).where(ModuleRun.id.in_(newest)))
            return {
                r.name: LastRunInfo(r.name, r.tx_id, r.kind, r.status, r.started_at) for r in rows
            }

    def committed_changes(self) -> list[tuple[int, str, str | None]]:
        """(transaction, path, fingerprint) of every path a committed transaction
        changed, newest transaction first."""
        with self._session() as s:
            rows = s.execute(
                select(ScopePath.tx_id, ScopePath.path, ScopePath.fingerprint)
                .join(Transaction, Transaction.id == ScopePath.tx_id)
                .where(Transaction.state == "committed", ScopePath.changed.is_(True))
                .order_by(ScopePath.tx_id.desc(), ScopePath.n)
            )
            return [(tx, path, fp) for tx, path, fp in rows]

    def latest_fingerprints(self) -> list[tuple[int, str, str]]:
        """(transaction, path, fingerprint) of every state hs-tx left a path in, newest
        transaction first: what a committed run changed, and what a rollback put back."""
        with self._session() as s:
            rows = s.execute(
                select(ScopePath.tx_id, ScopePath.path, ScopePath.fingerprint)
                .join(Transaction, Transaction.id == ScopePath.tx_id)
                .where(
                    ScopePath.fingerprint.is_not(None),
                    ((Transaction.state == "committed") & ScopePath.changed.is_(True))
                    | (Transaction.state == "rolled_back"),
                )
                .order_by(ScopePath.tx_id.desc(), ScopePath.n)
            )
            return [(tx, path, fp) for tx, path, fp in rows]

    def link_undo(self, undo_tx: int, undone: list[int]) -> None:
        """Record that transaction `undo_tx` reverses every transaction in `undone`."""
        with _signals_deferred(), self._session() as s, s.begin():
            s.add_all(UndoLink(undo_tx_id=undo_tx, undone_tx_id=i) for i in undone)

    @classmethod
    def _undone_by(cls, s: Session, ids: Iterable[int]) -> dict[int, int]:
        """Map each id in `ids` to the committed undo transaction that reversed it,
        unless that undo was itself undone later."""
        wanted = list(ids)
        links = list(
            s.execute(
                select(UndoLink.undone_tx_id, UndoLink.undo_tx_id)
                .join(Transaction, Transaction.id == UndoLink.undo_tx_id)
                .where(Transaction.state == "committed")
                .order_by(UndoLink.undo_tx_id)
            )
        )
        by: dict[int, int] = {}
        for undone, undo in links:
            by[undone] = undo  # the newest undo wins

        def live(tx: int, depth: int = 0) -> int | None:
            undo = by.get(tx)
            if undo is None or depth > 64:
                return None
            return None if live(undo, depth + 1) is not None else undo

        return {i: u for i in wanted if (u := live(i)) is not None}

    @staticmethod
    def _paths(s: Session, tx_id: int) -> list[PathInfo]:
        rows = s.scalars(select(ScopePath).where(ScopePath.tx_id == tx_id).order_by(ScopePath.n))
        return [_from_row(PathInfo, r) for r in rows]

    @staticmethod
    def _modules(s: Session, tx_id: int) -> list[ModuleRunInfo]:
        rows = s.scalars(select(ModuleRun).where(ModuleRun.tx_id == tx_id).order_by(ModuleRun.id))
        return [_from_row(ModuleRunInfo, r) for r in rows]


def _from_row(cls: type[_Info], row: object) -> _Info:
    """Build a plain record from an ORM row, copying the fields the record has."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})  # type: ignore[arg-type]


def _tx_info(row: Transaction, undone_by: int | None) -> TxInfo:
    """Build a TxInfo (without children) from a Transaction row."""
    return TxInfo(
        id=row.id,
        kind=row.kind,
        state=row.state,
        started_at=row.started_at,
        finished_at=row.finished_at,
        user=row.user,
        host=row.host,
        command=json.loads(row.command),
        pid=row.pid,
        exit_code=row.exit_code,
        error=row.error,
        undoes=row.undoes,
        undone_by=undone_by,
        snapshots_pruned_at=row.snapshots_pruned_at,
        source_before=row.source_before,
        source_after=row.source_after,
        net_before=_loads(row.net_before),
        net_after=_loads(row.net_after),
        net_restored=_loads(row.net_restored),
        net_actions=_loads(row.net_actions),
    )


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None
