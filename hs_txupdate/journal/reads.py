"""Reading the journal: every query `hs-tx` runs, returning plain records.

`JournalReads` is the read half of `Journal` (see api.py for the writes); it
needs only the connection the journal opened. Every query names its columns, so
a journal a newer hs-tx widened still reads.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ..base.errors import DamagedError
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
    columns,
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
_Info = TypeVar("_Info")
_RUNNING = tuple(str(s) for s in RUNNING_STATES)
_BATCH = 500  # ids per IN list, well below SQLite's limit of bound parameters
# the child records of a transaction read in full: table -> (record, order within it)
_CHILDREN: dict[str, tuple[type[Any], str]] = {
    "paths": (PathInfo, "n"),
    "outside_scope": (OutsideInfo, "path"),
    "run_changes": (RunChangeInfo, "path"),
    "module_runs": (ModuleRunInfo, "id"),
}
_EVENT_COLUMNS = ("seq", "phase", "step", "status", "at", "detail")
_FULL = (*_CHILDREN, "events")


def marks(values: Iterable[object]) -> str:
    """The `?, ?, ...` of an IN list of `values`."""
    return ", ".join("?" for _ in values)


class JournalReads:
    """The queries of the journal, on the connection `_db` (autocommit mode)."""

    _db: sqlite3.Connection
    _uuid: str | None = None

    def _flushed(self) -> sqlite3.Connection:
        """The connection, once every write this process deferred is committed (see
        Journal.step's `defer`): a read sees everything written before it."""
        return self._db

    def _query(self, sql: str, params: Iterable[object] = ()) -> sqlite3.Cursor:
        """Run one query; return its cursor."""
        return self._flushed().execute(sql, tuple(params))

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: the queries inside it see one state of the journal
        (inside a write, that write's)."""
        if self._flushed().in_transaction:
            yield self._db
            return
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            if self._db.in_transaction:
                self._db.execute("COMMIT")

    def _records(
        self, cls: type[_Info], table: str, where: str, params: Iterable[object], order: str
    ) -> list[_Info]:
        """The rows of `table` matching `where`, ordered by `order`, as records `cls`."""
        names = ", ".join(("id", *columns(cls)))
        query = f"SELECT {names} FROM {table} WHERE {where} ORDER BY {order}"
        cursor = self._query(query, tuple(params))
        cursor.row_factory = sqlite3.Row
        return [from_row(cls, row, table) for row in cursor]

    def _ids(self, where: str, params: Iterable[object], order: str = "id") -> list[int]:
        query = f"SELECT id FROM transactions WHERE {where} ORDER BY {order}"
        return [r[0] for r in self._query(query, tuple(params))]

    @property
    def uuid(self) -> str:
        """The journal's identity, created with it; every snapshot name carries it."""
        if self._uuid is None:
            row = self._query("SELECT value FROM hs_tx_meta WHERE key = 'journal_uuid'").fetchone()
            if row is None:
                raise DamagedError(
                    "the journal has no identity (hs_tx_meta.journal_uuid)",
                    "it was edited by hand; move it aside to start a new journal",
                )
            found: object = row[0]
            if not isinstance(found, str) or not _UUID.fullmatch(found):
                raise MalformedRowError("hs_tx_meta", "journal_uuid", f"it is {found!r:.80}")
            self._uuid = found
        return self._uuid

    def last_applied_source(self) -> str | None:
        """The source commit of the newest committed transaction that fetched one."""
        row = self._query(
            "SELECT id, source_after FROM transactions"
            " WHERE state = ? AND source_after IS NOT NULL ORDER BY id DESC LIMIT 1",
            (State.COMMITTED,),
        ).fetchone()
        if row is None:
            return None
        if not isinstance(row[1], str) or not _COMMIT.fullmatch(row[1]):
            raise MalformedRowError("transactions", row[0], f"source_after is {row[1]!r:.80}")
        return str(row[1])

    def net(self, tx_id: int) -> dict[str, Any]:
        """The network guard data of a transaction: `before`, `after`, `restored`,
        `actions`, each None when never recorded."""
        keys = sorted(NET_COLUMNS)
        names = ", ".join(f"net_{k}" for k in keys)
        row = self._query(f"SELECT {names} FROM transactions WHERE id = ?", (tx_id,)).fetchone()
        if row is None:
            return dict.fromkeys(NET_COLUMNS)
        values = zip(keys, row, strict=True)
        return {k: loads(v, "transactions", tx_id, f"net_{k}") for k, v in values}

    # --- reading ------------------------------------------------------------------------
    def transactions(self, limit: int | None = None, malformed: Malformed = None) -> list[TxInfo]:
        """Transactions newest first (at most `limit`), with their module runs; a
        malformed one is handled as in `committed_with_snapshots`."""
        with self._read():
            rows = self._tx_rows("1", (), "id DESC", limit)
            undone = self._undone_by([r["id"] for r in rows])
            runs, bad = self._module_runs_from(min((r["id"] for r in rows), default=0))
        infos = []
        for row in rows:
            try:
                if row["id"] in bad:
                    raise bad[row["id"]]
                info = tx_info(row, undone.get(row["id"]))
                info.modules = runs.get(row["id"], [])
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
        found = self._each([tx_id])
        return found[0] if found else None

    def kept_snapshots(self) -> tuple[list[tuple[int, str, str | None, str | None]], set[int]]:
        """What the journal still relies on: (row id, backend, snapshot ref, manifest) of every
        scope path whose snapshot was not pruned, and the ids of running transactions
        (whose captures may not be recorded yet)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT p.id, p.backend, p.snapshot, p.manifest FROM paths p"
                " JOIN transactions t ON t.id = p.tx_id"
                " WHERE p.pruned_at IS NULL AND t.snapshots_pruned_at IS NULL"
            ).fetchall()
            running = set(self._ids(f"state IN ({marks(_RUNNING)})", _RUNNING))
        optional = str | None
        typed = [(r[0], *typed_row("paths", r[0], r[1:], str, optional, optional)) for r in rows]
        return typed, running

    def unfinished(self) -> list[TxInfo]:
        """Transactions left in a running state, oldest first, with paths and events."""
        return self._each(self._ids(f"state IN ({marks(_RUNNING)})", _RUNNING))

    def failed_rollbacks(self) -> list[TxInfo]:
        """Transactions whose rollback failed and that nobody declared good
        (`recover --accept-current`), oldest first, with paths and events."""
        accepted = "SELECT tx_id FROM events WHERE step = ?"
        where = f"state = ? AND id NOT IN ({accepted})"
        return self._each(self._ids(where, (State.ROLLBACK_FAILED, Step.ACCEPT_CURRENT)))

    def committed_with_snapshots(self, malformed: Malformed = None) -> list[TxInfo]:
        """Committed transactions whose snapshots are still kept, newest first, with
        their paths only (no events or module runs).

        A transaction with a malformed row among those is left out and its error added
        to `malformed`; without that list, MalformedRowError is raised."""
        where = "state = ? AND snapshots_pruned_at IS NULL"
        ids = self._ids(where, (State.COMMITTED,), "id DESC")
        return self._each(ids, malformed, ["paths"])

    def final_with_snapshots(self, malformed: Malformed = None) -> list[TxInfo]:
        """Rolled-back or aborted transactions whose snapshots were never deleted
        (hs-tx stopped between the final state and the deletion), with their paths
        only; a malformed one is handled as in `committed_with_snapshots`."""
        where = "state IN (?, ?) AND snapshots_pruned_at IS NULL"
        ids = self._ids(where, (State.ROLLED_BACK, State.ABORTED))
        return self._each(ids, malformed, ["paths"])

    def last_module_runs(self) -> dict[str, LastRunInfo]:
        """For every module that ever ran: its newest run (main or maintenance), by name."""
        newest = "id IN (SELECT max(id) FROM module_runs GROUP BY name)"
        rows = self._records(LastRunInfo, "module_runs", newest, (), "id")
        return {r.name: r for r in rows}

    def committed_changes(self) -> list[tuple[int, str, str | None]]:
        """(transaction, path, fingerprint) of every path a committed transaction
        changed, newest transaction first."""
        return self._fingerprints("t.state = ? AND p.changed = 1", (State.COMMITTED,))

    def latest_fingerprints(self) -> list[tuple[int, str, str | None]]:
        """(transaction, path, fingerprint) of every state hs-tx left a path in, newest
        transaction first: what a committed run changed, and what a rollback put back."""
        where = "p.fingerprint IS NOT NULL AND ((t.state = ? AND p.changed = 1) OR t.state = ?)"
        return self._fingerprints(where, (State.COMMITTED, State.ROLLED_BACK))

    def footprints(self, module: str | None = None) -> list[tuple[str, str, int]]:
        """(module, path, learned in transaction) of every footprint not forgotten,
        of `module` or of all modules, oldest first."""
        query = "SELECT id, module, path, tx_id FROM footprints WHERE forgotten_at IS NULL"
        params: tuple[object, ...] = ()
        if module is not None:
            query, params = query + " AND module = ?", (module,)
        rows = self._query(query + " ORDER BY id", params)
        return [typed_row("footprints", r[0], r[1:], str, str, int) for r in rows]

    def backups(self, name: str) -> list[BackupInfo]:
        """Every path of the newest StateManager backup called `name` (in the newest
        transaction that made one), in the order it was backed up."""
        with self._read() as db:
            newest = db.execute(
                "SELECT tx_id, at FROM statemanager_backups WHERE name = ?"
                " ORDER BY id DESC LIMIT 1",
                (name,),
            ).fetchone()
            if newest is None:
                return []
            where = "tx_id = ? AND name = ? AND at = ?"
            return self._records(
                BackupInfo, "statemanager_backups", where, (newest[0], name, newest[1]), "id"
            )

    def backup_paths(self, module: str) -> list[str]:
        """The paths module `module`'s StateManager backups named, newest first, once each."""
        rows = self._query(
            "SELECT path FROM statemanager_backups WHERE module = ? AND kind = 'path'"
            " ORDER BY id DESC",
            (module,),
        )
        return list(dict.fromkeys(r[0] for r in rows))

    def path_with_snapshot(self, ref: str) -> PathInfo | None:
        """The scope path (of any transaction, pruned or not) that recorded the snapshot
        `ref`, or None."""
        rows = self._records(PathInfo, "paths", "snapshot = ?", (ref,), "id")
        return rows[0] if rows else None

    def services(self, tx_id: int) -> list[ServiceInfo]:
        """The services whose state transaction `tx_id` recorded before changing them."""
        return self._records(ServiceInfo, "services", "tx_id = ?", (tx_id,), "id")

    def _tx_rows(
        self, where: str, params: tuple[object, ...], order: str, limit: int | None
    ) -> list[sqlite3.Row]:
        names = ", ".join(("id", *columns(TxInfo)))
        query = f"SELECT {names} FROM transactions WHERE {where} ORDER BY {order}"
        if limit is not None:
            query, params = query + " LIMIT ?", (*params, min(limit, MAX_ID))
        cursor = self._query(query, params)
        cursor.row_factory = sqlite3.Row
        return cursor.fetchall()

    def _fingerprints(
        self, where: str, params: tuple[object, ...]
    ) -> list[tuple[int, str, str | None]]:
        rows = self._query(
            "SELECT p.id, p.tx_id, p.path, p.fingerprint FROM paths p"
            f" JOIN transactions t ON t.id = p.tx_id WHERE {where}"
            " ORDER BY p.tx_id DESC, p.n",
            params,
        )
        return [typed_row("paths", r[0], r[1:], int, str, str | None) for r in rows]

    def _undone_by(self, ids: Iterable[int]) -> dict[int, int]:
        """Map each id in `ids` to the committed undo transaction that reversed it,
        unless that undo was itself undone later."""
        links = self._query(
            "SELECT l.undone_tx_id, l.undo_tx_id FROM undo_links l"
            " JOIN transactions t ON t.id = l.undo_tx_id WHERE t.state = ?"
            " ORDER BY l.undo_tx_id",
            (State.COMMITTED,),
        )
        by: dict[int, int] = {}
        for undone, undo in links:
            by[undone] = undo  # the newest undo wins

        def live(tx: int, depth: int = 0) -> int | None:
            undo = by.get(tx)
            if undo is None or depth > 64:
                return None
            return None if live(undo, depth + 1) is not None else undo

        return {i: u for i in ids if (u := live(i)) is not None}

    def _each(
        self, ids: list[int], malformed: Malformed = None, tables: Iterable[str] = _FULL
    ) -> list[TxInfo]:
        """The transactions `ids` in that order (unknown ids left out) with the child
        rows of `tables` (of _CHILDREN and "events"; by default all), read with one
        query per table for each batch of ids. A transaction with a malformed row among
        those goes to `malformed`, or raises MalformedRowError without that list."""
        out: list[TxInfo] = []
        for start in range(0, len(ids), _BATCH):
            out += self._batch(ids[start : start + _BATCH], malformed, set(tables))
        return out

    def _batch(self, ids: list[int], malformed: Malformed, tables: set[str]) -> list[TxInfo]:
        """See `_each`: at most _BATCH ids."""
        where = f"tx_id IN ({marks(ids)})"
        with self._read():
            tx_rows = self._tx_rows(f"id IN ({marks(ids)})", tuple(ids), "id", None)
            rows = {r["id"]: r for r in tx_rows}
            undone = self._undone_by(ids)
            children = {
                table: (cls, self._rows_by_tx(table, columns(cls), where, ids, order))
                for table, (cls, order) in _CHILDREN.items()
                if table in tables
            }
            events = {}
            if "events" in tables:
                events = self._rows_by_tx("events", _EVENT_COLUMNS, where, ids, "seq")
        out = []
        for tx_id in ids:
            if tx_id not in rows:
                continue
            try:
                info = tx_info(rows[tx_id], undone.get(tx_id))
                mine = {
                    table: [from_row(cls, row, table) for row in grouped.get(tx_id, [])]
                    for table, (cls, grouped) in children.items()
                }
                every: list[PathInfo] = mine.get("paths", [])
                info.paths = [p for p in every if p.role != POINT]
                info.points = [p for p in every if p.role == POINT]
                info.outside = mine.get("outside_scope", [])
                info.run_changes = mine.get("run_changes", [])
                info.modules = mine.get("module_runs", [])
                info.events = [_event(row) for row in events.get(tx_id, [])]
            except MalformedRowError as exc:
                if malformed is None:
                    raise
                malformed.append(exc)
                continue
            out.append(info)
        return out

    def _rows_by_tx(
        self, table: str, names: Iterable[str], where: str, ids: list[int], order: str
    ) -> dict[int, list[sqlite3.Row]]:
        """The rows (`id`, `names`) of `table` matching `where`, by transaction, each
        transaction's in `order`."""
        query = f"SELECT tx_id, {', '.join(('id', *names))} FROM {table} WHERE {where}"
        cursor = self._query(f"{query} ORDER BY tx_id, {order}", ids)
        cursor.row_factory = sqlite3.Row
        grouped: dict[int, list[sqlite3.Row]] = {}
        for row in cursor:
            grouped.setdefault(row["tx_id"], []).append(row)
        return grouped

    def _module_runs_from(
        self, low: int
    ) -> tuple[dict[int, list[ModuleRunInfo]], dict[int, MalformedRowError]]:
        """The module runs of every transaction from id `low` on, in one query, by
        transaction; and, by transaction, the first malformed run row met."""
        runs: dict[int, list[ModuleRunInfo]] = {}
        bad: dict[int, MalformedRowError] = {}
        names = ", ".join(("id", "tx_id", *columns(ModuleRunInfo)))
        cursor = self._query(
            f"SELECT {names} FROM module_runs WHERE tx_id >= ? ORDER BY id", (low,)
        )
        cursor.row_factory = sqlite3.Row
        for row in cursor:
            try:
                runs.setdefault(row["tx_id"], []).append(
                    from_row(ModuleRunInfo, row, "module_runs")
                )
            except MalformedRowError as exc:
                bad.setdefault(row["tx_id"], exc)
        return runs, bad


def _event(row: sqlite3.Row) -> EventInfo:
    """An EventInfo from an events row read with its id and `_EVENT_COLUMNS`.
    Raises MalformedRowError."""
    values = {name: row[name] for name in _EVENT_COLUMNS}
    values["detail"] = loads(row["detail"], "events", row["id"])
    return checked(EventInfo, values, "events", row["id"])
