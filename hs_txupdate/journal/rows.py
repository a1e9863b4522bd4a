"""The journal's writes of its rows: a transaction's columns, its scope paths, module
runs, what the write audit saw, StateManager backups and services. `RowWrites` is the
half of `Journal` (api.py) that names tables and columns; each write is a transaction
of the journal's `_write`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from .reads import NET_COLUMNS, JournalReads, marks
from .records import RunChangeInfo, now_iso
from .vocab import RunStatus


def insert(db: sqlite3.Connection, table: str, values: Mapping[str, object]) -> int:
    """Insert one row of `values` (column: value) into `table`; return its id."""
    names = ", ".join(values)
    query = f"INSERT INTO {table} ({names}) VALUES ({marks(values)})"
    row_id = db.execute(query, tuple(values.values())).lastrowid
    assert row_id is not None
    return row_id


def insert_all(
    db: sqlite3.Connection, table: str, names: Sequence[str], rows: Iterable[Sequence[object]]
) -> None:
    """Insert `rows` (values in the order of the columns `names`) into `table`."""
    query = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks(names)})"
    db.executemany(query, rows)


def update(
    db: sqlite3.Connection, table: str, values: Mapping[str, object], where: str, *params: object
) -> int:
    """Set `values` (column: value) in the rows of `table` matching `where`; return how
    many rows that was."""
    sets = ", ".join(f"{name} = ?" for name in values)
    query = f"UPDATE {table} SET {sets} WHERE {where}"
    return db.execute(query, (*values.values(), *params)).rowcount


class RowWrites(JournalReads):
    """The writes of the journal's rows, each in one write transaction of `_write`."""

    # one write transaction: Journal's, which checks and commits it
    _write: Callable[[], AbstractContextManager[sqlite3.Connection]]

    # --- a transaction's columns --------------------------------------------------------
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
        with self._write() as db:
            names = ("undo_tx_id", "undone_tx_id")
            insert_all(db, "undo_links", names, ((undo_tx, i) for i in undone))

    def _update_tx(self, tx_id: int, values: dict[str, Any]) -> None:
        with self._write() as db:
            update(db, "transactions", values, "id = ?", tx_id)

    # --- scope paths --------------------------------------------------------------------
    def add_path(
        self, tx_id: int, n: int, path: str, existed: bool, backend: str, **more: str | None
    ) -> None:
        """Record scope path number `n` of a transaction, before it is snapshotted;
        `more` sets origin, added_by (the module that added it mid-run) or role."""
        row = {"tx_id": tx_id, "n": n, "path": path, "existed": existed, "backend": backend}
        with self._write() as db:
            insert(db, "paths", {**row, **more})

    def next_path_number(self, tx_id: int) -> int:
        """The number the next scope path (or point-in-time snapshot) of `tx_id` gets."""
        query = "SELECT coalesce(max(n) + 1, 0) FROM paths WHERE tx_id = ?"
        return int(self._query(query, (tx_id,)).fetchone()[0])

    def update_path(self, tx_id: int, n: int, **values: Any) -> None:
        """Set columns (snapshot, manifest, size, checksum, changed, ...) of a scope path."""
        with self._write() as db:
            update(db, "paths", values, "tx_id = ? AND n = ?", tx_id, n)

    def mark_pruned(self, tx_id: int) -> None:
        """Record that every snapshot of `tx_id` was deleted by retention."""
        at = now_iso()
        with self._write() as db:
            update(db, "paths", {"pruned_at": at}, "tx_id = ?", tx_id)
            update(db, "transactions", {"snapshots_pruned_at": at}, "id = ?", tx_id)

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
        row = {
            "tx_id": tx_id,
            "name": name,
            "schema_version": schema_version,
            "version_from": version_from or schema_version,
            "version_to": schema_version,
            "kind": kind,
            "status": RunStatus.RUNNING,
            "started_at": now_iso(),
        }
        with self._write() as db:
            return insert(db, "module_runs", row)

    def finish_module_run(self, run_id: int, status: RunStatus, **values: Any) -> None:
        """Record a module run's outcome: `status`, and any of duration_s, exit_status,
        output_tail and error."""
        with self._write() as db:
            update(db, "module_runs", {"status": status, **values}, "id = ?", run_id)

    # --- the write audit, StateManager backups, services ---------------------------------
    def set_audit(self, tx_id: int, method: str, reason: str | None, others: int) -> None:
        """Record how the write audit watched the run and how many writes by other
        processes it counted."""
        values = {"audit_method": method, "audit_reason": reason, "audit_others": others}
        self._update_tx(tx_id, values)

    def add_outside(self, tx_id: int, changes: Sequence[tuple[str, str, str | None, int]]) -> None:
        """Record paths the run changed outside its scope: (path, change, module, count)."""
        names = ("tx_id", "path", "change", "module", "count")
        with self._write() as db:
            insert_all(db, "outside_scope", names, ((tx_id, *c) for c in changes))

    def add_run_changes(self, tx_id: int, changes: Sequence[RunChangeInfo]) -> None:
        """Record paths the run changed inside its whole-system scope."""
        names = ("tx_id", "path", "change", "module", "count", "names")
        rows = ((tx_id, c.path, c.change, c.module, c.count, c.names) for c in changes)
        with self._write() as db:
            insert_all(db, "run_changes", names, rows)

    def set_outside_restored(self, tx_id: int, restored: bool) -> None:
        """Record whether the outside-scope changes of `tx_id` were put back (never, so far)."""
        with self._write() as db:
            update(db, "outside_scope", {"restored": restored}, "tx_id = ?", tx_id)

    def learn(self, tx_id: int, footprints: list[tuple[str, str]]) -> None:
        """Add (module, path) footprints learned from transaction `tx_id` (known ones skipped)."""
        known = set((m, p) for m, p, _ in self.footprints())
        new = [(m, p, tx_id) for m, p in dict.fromkeys(footprints) if (m, p) not in known]
        with self._write() as db:
            insert_all(db, "footprints", ("module", "path", "tx_id"), new)

    def forget(self, module: str, path: str) -> int:
        """Forget a learned path of `module`; return how many footprints that was."""
        where = "module = ? AND path = ? AND forgotten_at IS NULL"
        with self._write() as db:
            return update(db, "footprints", {"forgotten_at": now_iso()}, where, module, path)

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
        rows: list[tuple[object, ...]] = [
            (tx_id, name, module, at, "path", p, n, None) for p, n in paths
        ]
        rows += [
            (tx_id, name, module, at, "service", unit, None, json.dumps(state, sort_keys=True))
            for unit, state in services.items()
        ]
        names = ("tx_id", "name", "module", "at", "kind", "path", "n", "state")
        with self._write() as db:
            insert_all(db, "statemanager_backups", names, rows)

    def add_service(
        self, tx_id: int, unit: str, active: bool | None, enabled: str | None, source: str
    ) -> None:
        """Record a service's state before the run changes it (the first record wins)."""
        if any(known.unit == unit for known in self.services(tx_id)):
            return
        row = {"tx_id": tx_id, "unit": unit, "active": active, "enabled": enabled, "source": source}
        with self._write() as db:
            insert(db, "services", row)
