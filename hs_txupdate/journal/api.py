"""Writing the journal: every write of every hs-tx command goes through `Journal`.

Each write is its own SQLite transaction (plain `sqlite3`, `BEGIN IMMEDIATE`),
committed (WAL, synchronous=FULL) before the call returns, so an event is
durable before the step it announces acts. Its words are the enums of `vocab`;
`step()` records an intent and its outcome around the code that acts.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.crashpoints import CrashPoints
from ..base.errors import DamagedError
from ..base.forking import signals_deferred
from ..base.fsio import ensure_private_dir, publish
from .records import now_iso
from .rows import RowWrites, insert
from .schema import open_journal
from .vocab import Kind, Phase, State, Status, Step


@dataclass
class StepRecord:
    """What the body of a `Journal.step` adds to its outcome event.

    `detail` starts as the intent's detail; keys set in it appear in the
    outcome. `fail()` makes the outcome `failed` without raising.
    """

    detail: dict[str, Any] = field(default_factory=dict)
    failed: bool = False
    path: tuple[int, dict[str, Any]] | None = None  # scope path n: columns to set
    started: Any = None  # what `first` returned, in the intent's commit
    joined: list[Callable[[], object]] = field(default_factory=list)

    def fail(self, **more: Any) -> None:
        """Record the step as failed (with `more` detail) once the body ends."""
        self.failed = True
        self.detail.update(more)

    def update_path(self, n: int, **values: Any) -> None:
        """Set these columns of scope path `n` in the same commit as the outcome
        (like Journal.update_path, one durable write fewer)."""
        self.path = (n, values)

    def join(self, write: Callable[[], object]) -> None:
        """Make `write` (journal writes) part of the outcome's commit: one durable write
        for both, made when the body ends without raising."""
        self.joined.append(write)


# (transaction, phase, step, status, detail) of an event
EventHook = Callable[[int, Phase, Step, Status, Mapping[str, Any] | None], None]
_Announced = tuple[int, Phase, Step, Status, Mapping[str, Any] | None]


class JournalLostError(DamagedError):
    """The journal file disappeared or was replaced under a running hs-tx."""


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the journal file, or None when it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


class Journal(RowWrites):
    """The journal of one state dir. Given the path of journal.db."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_journal(path)
        self._crash = CrashPoints()
        self._identity = _identity(path)
        self._pending = 0  # events written in the open write, durable at its commit
        self._deferred: list[Callable[[], object]] = []  # see step(defer=True)
        # told of every event once it is committed (a deferred outcome: once decided)
        self.on_event: EventHook | None = None
        self._announced: list[_Announced] = []  # events of the open write, told at its commit

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, after checking the journal file is still the one
        this journal opened (see `_rescue`); signals are held back while it commits.
        Inside another write it is part of that one (see `together`)."""
        if self._db.in_transaction:
            yield self._db
            return
        if _identity(self.path) != self._identity:
            self._rescue()
        db = self._db
        deferred, self._deferred = self._deferred, []
        try:
            with signals_deferred():  # never an interruption inside SQLite's commit
                try:
                    db.execute("BEGIN IMMEDIATE")
                    for write in deferred:
                        write()
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        with suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                    self._deferred = deferred + self._deferred  # the next write retries them
                    self._announced.clear()  # nothing of it was written
                    raise
            for _ in range(self._pending):
                self._crash.after_durable_event()
        except sqlite3.OperationalError as exc:
            if "full" not in str(exc):
                raise
            raise DamagedError(
                f"the journal {self.path} cannot be written: its filesystem is full",
                "free space there, then run hs-tx recover: it finishes the transaction"
                " from what the journal holds",
            ) from exc
        finally:
            self._pending = 0
        announced, self._announced = self._announced, []
        for event in announced:
            self._tell(*event)

    @contextmanager
    def together(self) -> Iterator[None]:
        """Make every write in the block one durable write, committed when the block
        ends (nothing of it when the block raises)."""
        with self._write():
            yield

    def _rescue(self) -> None:
        """The journal file was deleted or replaced while this process had it open:
        write the copy still open back in its place (a replacement is moved aside),
        reopen it, and raise JournalLostError so the run stops and rolls back."""
        what = "replaced" if self.path.exists() else "deleted"
        ensure_private_dir(self.path.parent)
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.replaced-{os.getpid()}"))
        rescue = self.path.with_name(f".{self.path.name}.rescue")
        target = sqlite3.connect(rescue)
        try:
            self._db.backup(target)
        finally:
            target.close()
        os.chmod(rescue, 0o600)
        publish(rescue, self.path)
        self._db.close()
        self._db = open_journal(self.path)
        self._identity = _identity(self.path)
        raise JournalLostError(
            f"the journal {self.path} was {what} during the run; hs-tx wrote the copy it"
            " had open back in its place and stops the run",
            "check what else of the state dir is gone: the rollback says which snapshots"
            " it could not use",
        )

    def _flushed(self) -> sqlite3.Connection:
        """The connection, once every deferred write is committed."""
        if self._deferred and not self._db.in_transaction:
            self.flush()
        return self._db

    def flush(self) -> None:
        """Commit the writes a step deferred (see `step`), if any."""
        if self._deferred:
            with self._write():
                pass

    def close(self) -> None:
        """Commit what is deferred, then release the database connection. Raises
        DamagedError when what was deferred cannot be written (the connection is
        released all the same)."""
        try:
            self.flush()
        finally:
            self._db.close()

    @property
    def events_written(self) -> int:
        """How many events this process has made durable (for the crash sweep)."""
        return self._crash.count

    # --- transactions -----------------------------------------------------------------
    def begin(self, kind: Kind, command: list[str], user: str, host: str) -> int:
        """Create a transaction in state `open`, durably; return its id."""
        row = {
            "kind": kind,
            "state": State.OPEN,
            "started_at": now_iso(),
            "user": user,
            "host": host,
            "command": json.dumps(command),
            "pid": os.getpid(),
        }
        with self._write() as db:
            return insert(db, "transactions", row)

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
        return self._event(tx_id, phase, step, status, detail)

    def event_later(
        self,
        tx_id: int,
        phase: Phase,
        step: Step,
        status: Status,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append an event with the next write of this journal (or read, `flush` or
        `close`) instead of in a commit of its own (see `step`'s `defer`): for an event
        that only saves work after a crash, such as a restore batch being done."""
        self._deferred.append(
            lambda: self._event(tx_id, phase, step, status, detail, announce=False)
        )
        self._announce(tx_id, phase, step, status, detail)

    def _announce(
        self, tx_id: int, phase: Phase, step: Step, status: Status, detail: Mapping[str, Any] | None
    ) -> None:
        """Tell `on_event` (progress for the operator) about an event written or decided:
        at once outside a write, at the commit of the write it is part of."""
        if self.on_event is None:
            return
        if self._db.in_transaction:
            self._announced.append((tx_id, phase, step, status, detail))
        else:
            self._tell(tx_id, phase, step, status, detail)

    def _tell(
        self, tx_id: int, phase: Phase, step: Step, status: Status, detail: Mapping[str, Any] | None
    ) -> None:
        """Call `on_event`; a reader that went away (a closed pipe) ends the telling,
        never the run."""
        if self.on_event is None:
            return
        try:
            self.on_event(tx_id, phase, step, status, detail)
        except (OSError, ValueError):
            self.on_event = None

    def _event(
        self,
        tx_id: int,
        phase: Phase,
        step: Step,
        status: Status,
        detail: Mapping[str, Any] | None,
        announce: bool = True,
    ) -> int:
        """`event`; `announce`: tell `on_event` once it is written."""
        text = json.dumps(dict(detail), sort_keys=True) if detail is not None else None
        with self._write() as db:
            query = "SELECT coalesce(max(seq), 0) FROM events WHERE tx_id = ?"
            seq = int(db.execute(query, (tx_id,)).fetchone()[0]) + 1
            row = {
                "tx_id": tx_id,
                "seq": seq,
                "phase": phase,
                "step": step,
                "status": status,
                "at": now_iso(),
                "detail": text,
            }
            insert(db, "events", row)
            self._pending += 1
        if announce:
            self._announce(tx_id, phase, step, status, detail)
        return seq

    @contextmanager
    def step(
        self,
        tx_id: int,
        phase: Phase,
        step: Step,
        detail: Mapping[str, Any] | None = None,
        *,
        first: Callable[[], Any] | None = None,
        defer: bool = False,
    ) -> Iterator[StepRecord]:
        """Journal the intent of a step (with what `first` writes, in one commit; what
        it returns is the record's `started`), run the body, then journal its outcome.

        The outcome is `done`, or `failed` when the body called `fail()` or
        raised (the error is added to the detail; the exception propagates,
        even when the failed event itself cannot be written). With `defer`, an
        outcome of a body that returned is committed with the next write (or read,
        `flush` or `close`) of this journal instead of on its own: for a step whose
        end starts nothing, such as a module run whose next step is the next one's
        intent.
        """
        with self._write():
            self.event(tx_id, phase, step, Status.INTENT, detail)
            started = first() if first is not None else None
        record = StepRecord(dict(detail or {}), started=started)
        try:
            yield record
        except BaseException as exc:
            with suppress(Exception):
                failed = {**record.detail, "error": str(exc) or type(exc).__name__}
                self.event(tx_id, phase, step, Status.FAILED, failed)
            raise

        status = Status.FAILED if record.failed else Status.DONE

        def outcome() -> None:
            with self._write():
                for write in record.joined:
                    write()
                if record.path is not None:
                    self.update_path(tx_id, record.path[0], **record.path[1])
                self._event(tx_id, phase, step, status, record.detail, announce=False)

        if defer:
            self._deferred.append(outcome)
        else:
            outcome()
        self._announce(tx_id, phase, step, status, record.detail)
