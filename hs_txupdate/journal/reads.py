"""Reading the journal: every query `hs-tx` runs, returning plain records.

`JournalReads` is the read half of `Journal` (see api.py for the writes); it
needs only the session factory the journal opened.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ..base.errors import DamagedError
from .models import (
    Event,
    Footprint,
    Meta,
    ModuleRun,
    OutsideChange,
    RunChange,
    ScopePath,
    ServiceState,
    StateManagerBackup,
    Transaction,
    UndoLink,
)
from .records import (
    BackupInfo,
    EventInfo,
    LastRunInfo,
    MalformedRowError,
    ModuleRunInfo,
    OutsideInfo,
    PathInfo,
    RunChangeInfo,
    ServiceInfo,
    TxInfo,
    checked,
    from_row,
    loads,
    tx_info,
    typed_row,
)
from .vocab import POINT, RUNNING_STATES, State, Step

NET_COLUMNS = frozenset({"before", "after", "restored", "actions"})
MAX_ID = (1 << 63) - 1
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Where a bulk read puts the errors of the transactions it left out (None: raise them).
Malformed = list[DamagedError] | None


class JournalReads:
    """The queries of the journal; each opens and closes its own session."""

    _session: sessionmaker[Session]
    _uuid: str | None = None

    @property
    def uuid(self) -> str:
        """The journal's identity, created with it; every snapshot name carries it."""
        if self._uuid is None:
            with self._session() as s:
                found: object = s.scalar(select(Meta.value).where(Meta.key == "journal_uuid"))
            if found is None:
                raise DamagedError(
                    "the journal has no identity (hs_tx_meta.journal_uuid)",
                    "it was edited by hand; move it aside to start a new journal",
                )
            if not isinstance(found, str) or not _UUID.fullmatch(found):
                raise MalformedRowError("hs_tx_meta", "journal_uuid", f"it is {found!r:.80}")
            self._uuid = found
        return self._uuid

    def last_applied_source(self) -> str | None:
        """The source commit of the newest committed transaction that fetched one."""
        with self._session() as s:
            row = s.execute(
                select(Transaction.id, Transaction.source_after)
                .where(Transaction.state == State.COMMITTED, Transaction.source_after.is_not(None))
                .order_by(Transaction.id.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        if not isinstance(row[1], str) or not _COMMIT.fullmatch(row[1]):
            raise MalformedRowError("transactions", row[0], f"source_after is {row[1]!r:.80}")
        return row[1]

    def net(self, tx_id: int) -> dict[str, Any]:
        """The network guard data of a transaction: `before`, `after`, `restored`,
        `actions`, each None when never recorded."""
        with self._session() as s:
            row = s.get(Transaction, tx_id)
            if row is None:
                return dict.fromkeys(NET_COLUMNS)
            return {
                k: loads(getattr(row, f"net_{k}"), "transactions", tx_id, f"net_{k}")
                for k in NET_COLUMNS
            }

    # --- reading ------------------------------------------------------------------------
    def transactions(self, limit: int | None = None, malformed: Malformed = None) -> list[TxInfo]:
        """Transactions newest first (at most `limit`), with their module runs; a
        malformed one is handled as in `committed_with_snapshots`."""
        with self._session() as s:
            query = select(Transaction).order_by(Transaction.id.desc())
            if limit is not None:
                query = query.limit(min(limit, MAX_ID))
            rows = list(s.scalars(query))
            undone = self._undone_by(s, [r.id for r in rows])
            runs, bad = self._module_runs_from(s, min((r.id for r in rows), default=0))
            infos = []
            for row in rows:
                try:
                    if row.id in bad:
                        raise bad[row.id]
                    info = tx_info(row, undone.get(row.id))
                    info.modules = runs.get(row.id, [])
                except MalformedRowError as exc:
                    if malformed is None:
                        raise
                    malformed.append(exc)
                    continue
                infos.append(info)
            return infos

    def transaction(self, tx_id: int) -> TxInfo | None:
        """One transaction with its paths, module runs and events; None if unknown.

        Raises MalformedRowError when one of its rows is unusable.
        """
        if not 0 < tx_id <= MAX_ID:
            return None  # SQLite ids are positive 64-bit integers
        with self._session() as s:
            row = s.get(Transaction, tx_id)
            if row is None:
                return None
            info = tx_info(row, self._undone_by(s, [tx_id]).get(tx_id))
            every = self._paths(s, tx_id)
            info.paths = [p for p in every if p.role != POINT]
            info.points = [p for p in every if p.role == POINT]
            info.outside = [
                from_row(OutsideInfo, r)
                for r in s.scalars(
                    select(OutsideChange)
                    .where(OutsideChange.tx_id == tx_id)
                    .order_by(OutsideChange.path)
                )
            ]
            info.run_changes = [
                from_row(RunChangeInfo, r)
                for r in s.scalars(
                    select(RunChange).where(RunChange.tx_id == tx_id).order_by(RunChange.path)
                )
            ]
            info.modules = self._modules(s, tx_id)
            info.events = [
                checked(
                    EventInfo,
                    {
                        "seq": e.seq,
                        "phase": e.phase,
                        "step": e.step,
                        "status": e.status,
                        "at": e.at,
                        "detail": loads(e.detail, "events", e.id),
                    },
                    "events",
                    e.id,
                )
                for e in s.scalars(select(Event).where(Event.tx_id == tx_id).order_by(Event.seq))
            ]
            return info

    def kept_snapshots(self) -> tuple[list[tuple[int, str, str | None, str | None]], set[int]]:
        """What the journal still relies on: (row id, backend, snapshot ref, manifest) of every
        scope path whose snapshot was not pruned, and the ids of running transactions
        (whose captures may not be recorded yet)."""
        with self._session() as s:
            rows = s.execute(
                select(ScopePath.id, ScopePath.backend, ScopePath.snapshot, ScopePath.manifest)
                .join(Transaction, Transaction.id == ScopePath.tx_id)
                .where(ScopePath.pruned_at.is_(None), Transaction.snapshots_pruned_at.is_(None))
            ).all()
            running = set(
                s.scalars(select(Transaction.id).where(Transaction.state.in_(RUNNING_STATES)))
            )
        optional = str | None
        typed = [(r[0], *typed_row("paths", r[0], r[1:], str, optional, optional)) for r in rows]
        return typed, running

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
        return self._each(ids)

    def failed_rollbacks(self) -> list[TxInfo]:
        """Transactions whose rollback failed and that nobody declared good
        (`recover --accept-current`), oldest first, with paths and events."""
        accepted = select(Event.tx_id).where(Event.step == Step.ACCEPT_CURRENT)
        with self._session() as s:
            ids = list(
                s.scalars(
                    select(Transaction.id)
                    .where(
                        Transaction.state == State.ROLLBACK_FAILED,
                        Transaction.id.not_in(accepted),
                    )
                    .order_by(Transaction.id)
                )
            )
        return self._each(ids)

    def committed_with_snapshots(self, malformed: Malformed = None) -> list[TxInfo]:
        """Committed transactions whose snapshots are still kept, newest first, with paths.

        A transaction with a malformed row is left out and its error added to
        `malformed`; without that list, MalformedRowError is raised."""
        with self._session() as s:
            ids = list(
                s.scalars(
                    select(Transaction.id)
                    .where(
                        Transaction.state == State.COMMITTED,
                        Transaction.snapshots_pruned_at.is_(None),
                    )
                    .order_by(Transaction.id.desc())
                )
            )
        return self._each(ids, malformed)

    def final_with_snapshots(self, malformed: Malformed = None) -> list[TxInfo]:
        """Rolled-back or aborted transactions whose snapshots were never deleted
        (hs-tx stopped between the final state and the deletion), with paths; a
        malformed one is handled as in `committed_with_snapshots`."""
        with self._session() as s:
            ids = list(
                s.scalars(
                    select(Transaction.id)
                    .where(
                        Transaction.state.in_((State.ROLLED_BACK, State.ABORTED)),
                        Transaction.snapshots_pruned_at.is_(None),
                    )
                    .order_by(Transaction.id)
                )
            )
        return self._each(ids, malformed)

    def last_module_runs(self) -> dict[str, LastRunInfo]:
        """For every module that ever ran: its newest run (main or maintenance), by name."""
        with self._session() as s:
            newest = select(func.max(ModuleRun.id)).group_by(ModuleRun.name)
            rows = s.scalars(select(ModuleRun).where(ModuleRun.id.in_(newest)))
            return {r.name: from_row(LastRunInfo, r) for r in rows}

    def committed_changes(self) -> list[tuple[int, str, str | None]]:
        """(transaction, path, fingerprint) of every path a committed transaction
        changed, newest transaction first."""
        with self._session() as s:
            rows = s.execute(
                select(ScopePath.id, ScopePath.tx_id, ScopePath.path, ScopePath.fingerprint)
                .join(Transaction, Transaction.id == ScopePath.tx_id)
                .where(Transaction.state == State.COMMITTED, ScopePath.changed.is_(True))
                .order_by(ScopePath.tx_id.desc(), ScopePath.n)
            )
            return [typed_row("paths", r[0], r[1:], int, str, str | None) for r in rows]

    def latest_fingerprints(self) -> list[tuple[int, str, str | None]]:
        """(transaction, path, fingerprint) of every state hs-tx left a path in, newest
        transaction first: what a committed run changed, and what a rollback put back."""
        with self._session() as s:
            rows = s.execute(
                select(ScopePath.id, ScopePath.tx_id, ScopePath.path, ScopePath.fingerprint)
                .join(Transaction, Transaction.id == ScopePath.tx_id)
                .where(
                    ScopePath.fingerprint.is_not(None),
                    ((Transaction.state == State.COMMITTED) & ScopePath.changed.is_(True))
                    | (Transaction.state == State.ROLLED_BACK),
                )
                .order_by(ScopePath.tx_id.desc(), ScopePath.n)
            )
            return [typed_row("paths", r[0], r[1:], int, str, str | None) for r in rows]

    def footprints(self, module: str | None = None) -> list[tuple[str, str, int]]:
        """(module, path, learned in transaction) of every footprint not forgotten,
        of `module` or of all modules, oldest first."""
        query = select(Footprint.id, Footprint.module, Footprint.path, Footprint.tx_id).where(
            Footprint.forgotten_at.is_(None)
        )
        if module is not None:
            query = query.where(Footprint.module == module)
        with self._session() as s:
            rows = s.execute(query.order_by(Footprint.id))
            return [typed_row("footprints", r[0], r[1:], str, str, int) for r in rows]

    def backups(self, name: str) -> list[BackupInfo]:
        """Every path of the newest StateManager backup called `name` (in the newest
        transaction that made one), in the order it was backed up."""
        with self._session() as s:
            newest = s.scalar(
                select(func.max(StateManagerBackup.id)).where(StateManagerBackup.name == name)
            )
            if newest is None:
                return []
            row = s.get(StateManagerBackup, newest)
            assert row is not None
            rows = s.scalars(
                select(StateManagerBackup)
                .where(StateManagerBackup.tx_id == row.tx_id, StateManagerBackup.name == name)
                .where(StateManagerBackup.at == row.at)
                .order_by(StateManagerBackup.id)
            )
            return [from_row(BackupInfo, r) for r in rows]

    def backup_paths(self, module: str) -> list[str]:
        """The paths module `module`'s StateManager backups named, newest first, once each."""
        with self._session() as s:
            rows = s.scalars(
                select(StateManagerBackup.path)
                .where(StateManagerBackup.module == module, StateManagerBackup.kind == "path")
                .order_by(StateManagerBackup.id.desc())
            )
            return list(dict.fromkeys(rows))

    def services(self, tx_id: int) -> list[ServiceInfo]:
        """The services whose state transaction `tx_id` recorded before changing them."""
        with self._session() as s:
            rows = s.scalars(
                select(ServiceState).where(ServiceState.tx_id == tx_id).order_by(ServiceState.id)
            )
            return [from_row(ServiceInfo, r) for r in rows]

    @classmethod
    def _undone_by(cls, s: Session, ids: Iterable[int]) -> dict[int, int]:
        """Map each id in `ids` to the committed undo transaction that reversed it,
        unless that undo was itself undone later."""
        wanted = list(ids)
        links = list(
            s.execute(
                select(UndoLink.undone_tx_id, UndoLink.undo_tx_id)
                .join(Transaction, Transaction.id == UndoLink.undo_tx_id)
                .where(Transaction.state == State.COMMITTED)
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

    def _each(self, ids: list[int], malformed: Malformed = None) -> list[TxInfo]:
        """The transactions `ids` in full; a malformed one goes to `malformed`, or
        raises MalformedRowError without that list."""
        out = []
        for tx_id in ids:
            try:
                info = self.transaction(tx_id)
            except MalformedRowError as exc:
                if malformed is None:
                    raise
                malformed.append(exc)
                continue
            if info is not None:
                out.append(info)
        return out

    @staticmethod
    def _paths(s: Session, tx_id: int) -> list[PathInfo]:
        rows = s.scalars(select(ScopePath).where(ScopePath.tx_id == tx_id).order_by(ScopePath.n))
        return [from_row(PathInfo, r) for r in rows]

    @staticmethod
    def _module_runs_from(
        s: Session, low: int
    ) -> tuple[dict[int, list[ModuleRunInfo]], dict[int, MalformedRowError]]:
        """The module runs of every transaction from id `low` on, in one query, by
        transaction; and, by transaction, the first malformed run row met."""
        runs: dict[int, list[ModuleRunInfo]] = {}
        bad: dict[int, MalformedRowError] = {}
        query = select(ModuleRun).where(ModuleRun.tx_id >= low).order_by(ModuleRun.id)
        for row in s.scalars(query):
            try:
                runs.setdefault(row.tx_id, []).append(from_row(ModuleRunInfo, row))
            except MalformedRowError as exc:
                bad.setdefault(row.tx_id, exc)
        return runs, bad

    @staticmethod
    def _modules(s: Session, tx_id: int) -> list[ModuleRunInfo]:
        rows = s.scalars(select(ModuleRun).where(ModuleRun.tx_id == tx_id).order_by(ModuleRun.id))
        return [from_row(ModuleRunInfo, r) for r in rows]
