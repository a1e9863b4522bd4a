"""Writing the journal: every write of every hs-tx command goes through `Journal`.

Each write is its own SQLite transaction, committed (WAL, synchronous=FULL)
before the call returns, so an event is durable before the step it announces
acts. Its words are the enums of `vocab`; `step()` records an intent and its
outcome around the code that acts.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..base.crashpoints import CrashPoints
from ..base.errors import DamagedError
from ..base.fsio import ensure_private_dir, publish
from .models import (
    Event,
    Footprint,
    ModuleRun,
    OutsideChange,
    RunChange,
    ScopePath,
    ServiceState,
    StateManagerBackup,
    Transaction,
    UndoLink,
)
from .reads import NET_COLUMNS, JournalReads
from .records import RunChangeInfo, now_iso
from .schema import create_journal_engine
from .vocab import Kind, Phase, RunStatus, State, Status, Step

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


@dataclass
class StepRecord:
    """What the body of a `Journal.step` adds to its outcome event.

    `detail` starts as the intent's detail; keys set in it appear in the
    outcome. `fail()` makes the outcome `failed` without raising.
    """

    detail: dict[str, Any] = field(default_factory=dict)
    failed: bool = False
    path: tuple[int, dict[str, Any]] | None = None  # scope path n: columns to set

    def fail(self, **more: Any) -> None:
        """Record the step as failed (with `more` detail) once the body ends."""
        self.failed = True
        self.detail.update(more)

    def update_path(self, n: int, **values: Any) -> None:
        """Set these columns of scope path `n` in the same commit as a `done` outcome
        (like Journal.update_path, one durable write fewer)."""
        self.path = (n, values)


class JournalLostError(DamagedError):
    """The journal file disappeared or was replaced under a running hs-tx."""


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the journal file, or None when it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


class Journal(JournalReads):
    """The journal of one state dir. Given the path of journal.db."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._engine = create_journal_engine(path)
        self._session = sessionmaker(self._engine, expire_on_commit=False)
        self._crash = CrashPoints()
        self._identity = _identity(path)

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction, after checking the journal file is still the one
        this journal opened (see `_rescue`); signals are held back while it commits."""
        if _identity(self.path) != self._identity:
            self._rescue()
        try:
            with _signals_deferred(), self._session() as s, s.begin():
                yield s
        except OperationalError as exc:
            if "full" not in str(exc.orig):
                raise
            raise DamagedError(
                f"the journal {self.path} cannot be written: its filesystem is full",
                "free space there, then run hs-tx recover: it finishes the transaction"
                " from what the journal holds",
            ) from exc

    def _rescue(self) -> None:
        """The journal file was deleted or replaced while this process had it open:
        write the copy still open back in its place (a replacement is moved aside),
        reopen it, and raise JournalLostError so the run stops and rolls back."""
        what = "replaced" if self.path.exists() else "deleted"
        ensure_private_dir(self.path.parent)
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.replaced-{os.getpid()}"))
        rescue = self.path.with_name(f".{self.path.name}.rescue")
        raw = self._engine.raw_connection()
        try:
            target = sqlite3.connect(rescue)
            try:
                raw.driver_connection.backup(target)  # type: ignore[union-attr]
            finally:
                target.close()
        finally:
            raw.close()
        os.chmod(rescue, 0o600)
        publish(rescue, self.path)
        self._engine.dispose()
        self._engine = create_journal_engine(self.path)
        self._session = sessionmaker(self._engine, expire_on_commit=False)
        self._identity = _identity(self.path)
        raise JournalLostError(
            f"the journal {self.path} was {what} during the run; hs-tx wrote the copy it"
            " had open back in its place and stops the run",
            "check what else of the state dir is gone: the rollback says which snapshots"
            " it could not use",
        )

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    @property
    def events_written(self) -> int:
        """How many events this process has made durable (for the crash sweep)."""
        return self._crash.count

    # --- transactions -----------------------------------------------------------------
    def begin(self, kind: Kind, command: list[str], user: str, host: str) -> int:
        """Create a transaction in state `open`, durably; return its id."""
        with self._write() as s:
            tx = Transaction(
                kind=kind,
                state=State.OPEN,
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
        state: State,
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
        if state.final:
            values["finished_at"] = now_iso()
        self._update_tx(tx_id, values)

    def set_source(self, tx_id: int, before: str | None, after: str) -> None:
        """Record the source commit applied before this transaction and the one fetched."""
        self._update_tx(tx_id, {"source_before": before, "source_after": after})

    def set_net(self, tx_id: int, **states: Any) -> None:
        """Record network guard data of a transaction, as JSON: any of `before`,
        `after`, `restored` (captured states) and `actions` (the changes it made)."""
        unknown = set(states) - NET_COLUMNS
        assert not unknown, f"unknown network guard data: {sorted(unknown)}"
        self._update_tx(
            tx_id, {f"net_{k}": json.dumps(v, sort_keys=True) for k, v in states.items()}
        )

    def set_undoes(self, tx_id: int, undoes: int) -> None:
        """Record that transaction `tx_id` undoes transaction `undoes`."""
        self._update_tx(tx_id, {"undoes": undoes})

    def link_undo(self, undo_tx: int, undone: list[int]) -> None:
        """Record that transaction `undo_tx` reverses every transaction in `undone`."""
        with self._write() as s:
            s.add_all(UndoLink(undo_tx_id=undo_tx, undone_tx_id=i) for i in undone)

    def _update_tx(self, tx_id: int, values: dict[str, Any]) -> None:
        with self._write() as s:
            s.execute(update(Transaction).where(Transaction.id == tx_id).values(**values))

    # --- events -------------------------------------------------------------------------
    def event(
        self,
        tx_id: int,
        phase: Phase,
        step: Step,
        status: Status,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """Append an event, durably; return its seq."""
        return self._event(tx_id, phase, step, status, detail, None)

    def _event(
        self,
        tx_id: int,
        phase: Phase,
        step: Step,
        status: Status,
        detail: Mapping[str, Any] | None,
        path: tuple[int, dict[str, Any]] | None,
    ) -> int:
        """`event`, with the columns `path` (n, values) of a scope path set in the same
        commit."""
        text = json.dumps(dict(detail), sort_keys=True) if detail is not None else None
        with self._write() as s:
            if path is not None:
                where = (ScopePath.tx_id == tx_id, ScopePath.n == path[0])
                s.execute(update(ScopePath).where(*where).values(**path[1]))
            last = s.scalar(select(func.max(Event.seq)).where(Event.tx_id == tx_id)) or 0
            s.add(
                Event(
                    tx_id=tx_id,
                    seq=last + 1,
                    phase=phase,
                    step=step,
                    status=status,
                    at=now_iso(),
                    detail=text,
                )
            )
        self._crash.after_durable_event()
        return last + 1

    @contextmanager
    def step(
        self, tx_id: int, phase: Phase, step: Step, detail: Mapping[str, Any] | None = None
    ) -> Iterator[StepRecord]:
        """Journal the intent of a step, run the body, then journal its outcome.

        The outcome is `done`, or `failed` when the body called `fail()` or
        raised (the error is added to the detail; the exception propagates,
        even when the failed event itself cannot be written).
        """
        self.event(tx_id, phase, step, Status.INTENT, detail)
        record = StepRecord(dict(detail or {}))
        try:
            yield record
        except BaseException as exc:
            with suppress(Exception):
                failed = {**record.detail, "error": str(exc) or type(exc).__name__}
                self.event(tx_id, phase, step, Status.FAILED, failed)
            raise
        if record.failed:
            if record.path is not None:
                self.update_path(tx_id, record.path[0], **record.path[1])
            self.event(tx_id, phase, step, Status.FAILED, record.detail)
        else:
            self._event(tx_id, phase, step, Status.DONE, record.detail, record.path)

    # --- scope paths --------------------------------------------------------------------
    def add_path(
        self, tx_id: int, n: int, path: str, existed: bool, backend: str, **more: str | None
    ) -> None:
        """Record scope path number `n` of a transaction, before it is snapshotted;
        `more` sets origin, added_by (the module that added it mid-run) or role."""
        with self._write() as s:
            row = ScopePath(tx_id=tx_id, n=n, path=path, existed=existed, backend=backend, **more)
            s.add(row)

    def next_path_number(self, tx_id: int) -> int:
        """The number the next scope path (or point-in-time snapshot) of `tx_id` gets."""
        with self._session() as s:
            last = s.scalar(select(func.max(ScopePath.n)).where(ScopePath.tx_id == tx_id))
            return 0 if last is None else last + 1

    def update_path(self, tx_id: int, n: int, **values: Any) -> None:
        """Set columns (snapshot, manifest, size, checksum, changed, ...) of a scope path."""
        with self._write() as s:
            s.execute(
                update(ScopePath).where(ScopePath.tx_id == tx_id, ScopePath.n == n).values(**values)
            )

    def mark_pruned(self, tx_id: int) -> None:
        """Record that every snapshot of `tx_id` was deleted by retention."""
        at = now_iso()
        with self._write() as s:
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
        with self._write() as s:
            run = ModuleRun(
                tx_id=tx_id,
                name=name,
                schema_version=schema_version,
                version_from=version_from or schema_version,
                version_to=schema_version,
                kind=kind,
                status=RunStatus.RUNNING,
                started_at=now_iso(),
            )
            s.add(run)
            s.flush()
            return run.id

    def finish_module_run(self, run_id: int, status: RunStatus, **values: Any) -> None:
        """Record a module run's outcome: `status`, and any of duration_s, exit_status,
        output_tail and error."""
        with self._write() as s:
            s.execute(
                update(ModuleRun).where(ModuleRun.id == run_id).values(status=status, **values)
            )

    # --- the write audit, StateManager backups, services ---------------------------------
    def set_audit(self, tx_id: int, method: str, reason: str | None, others: int) -> None:
        """Record how the write audit watched the run and how many writes by other
        processes it counted."""
        values = {"audit_method": method, "audit_reason": reason, "audit_others": others}
        self._update_tx(tx_id, values)

    def add_outside(self, tx_id: int, changes: Sequence[tuple[str, str, str | None, int]]) -> None:
        """Record paths the run changed outside its scope: (path, change, module, count)."""
        with self._write() as s:
            s.add_all(
                OutsideChange(tx_id=tx_id, path=p, change=c, module=m, count=n)
                for p, c, m, n in changes
            )

    def add_run_changes(self, tx_id: int, changes: Sequence[RunChangeInfo]) -> None:
        """Record paths the run changed inside its whole-system scope."""
        with self._write() as s:
            s.add_all(RunChange(tx_id=tx_id, **asdict(c)) for c in changes)

    def set_outside_restored(self, tx_id: int, restored: bool) -> None:
        """Record whether the outside-scope changes of `tx_id` were put back (never, so far)."""
        with self._write() as s:
            s.execute(
                update(OutsideChange).where(OutsideChange.tx_id == tx_id).values(restored=restored)
            )

    def learn(self, tx_id: int, footprints: list[tuple[str, str]]) -> None:
        """Add (module, path) footprints learned from transaction `tx_id` (known ones skipped)."""
        known = set((m, p) for m, p, _ in self.footprints())
        with self._write() as s:
            s.add_all(
                Footprint(module=m, path=p, tx_id=tx_id)
                for m, p in dict.fromkeys(footprints)
                if (m, p) not in known
            )

    def forget(self, module: str, path: str) -> int:
        """Forget a learned path of `module`; return how many footprints that was."""
        with self._write() as s:
            result = s.execute(
                update(Footprint)
                .where(
                    Footprint.module == module,
                    Footprint.path == path,
                    Footprint.forgotten_at.is_(None),
                )
                .values(forgotten_at=now_iso())
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def add_backup(
        self,
        tx_id: int,
        name: str,
        module: str | None,
        paths: list[tuple[str, int | None]],
        services: dict[str, dict[str, Any]],
    ) -> None:
        """Record a StateManager backup called `name` in transaction `tx_id`: each
        (path, number of the snapshot holding it, None when it was absent), and each
        service's state at the call."""
        at = now_iso()
        common = {"tx_id": tx_id, "name": name, "module": module, "at": at}
        rows = [StateManagerBackup(kind="path", path=p, n=n, **common) for p, n in paths]
        rows += [
            StateManagerBackup(
                kind="service", path=unit, state=json.dumps(state, sort_keys=True), **common
            )
            for unit, state in services.items()
        ]
        with self._write() as s:
            s.add_all(rows)

    def add_service(
        self, tx_id: int, unit: str, active: bool | None, enabled: str | None, source: str
    ) -> None:
        """Record a service's state before the run changes it (the first record wins)."""
        if any(known.unit == unit for known in self.services(tx_id)):
            return
        with self._write() as s:
            s.add(
                ServiceState(tx_id=tx_id, unit=unit, active=active, enabled=enabled, source=source)
            )
