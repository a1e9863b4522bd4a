"""StateManager backups joining the running transaction: the orchestrator's side.

A module's `StateManager.backup_module_state(...)` asks (over base.channel,
answered here in the main thread while the module waits):
- each named path not yet in scope is checked like any scope path, recorded
  (origin statemanager, added by the module) and snapshotted, fresh, before the
  answer goes back; a path already in scope is noted against the snapshot that
  holds it, or, when the run has changed it since, snapshotted again for
  `restore_module_state` alone (role `point`: the whole-run rollback still
  restores the run-start state);
- each SQLite database is copied through the backup API (the sqlite backend);
- each service's state (active, enabled) is journaled, to be put back on rollback.
A path that may not be snapshotted makes the call answer False with the reason.
`restore_module_state` asks to put the paths back as the backup found them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audit.paths import read_mounts
from ..audit.scan import changed_since
from ..base.errors import HsTxError
from ..base.fsio import fsync_dir
from ..journal import POINT, BackupInfo, Origin, PathInfo, Phase, Step
from ..modules.discovery import Module
from ..snapshot.entries import remove_entry
from .audit import RunAudit
from .context import Context
from .scope import Planned, ScopeEntry, check_free_space, check_path, resolve
from .services import put_back, record_services
from .snapshots import capture_path, path_changes, record_path, restore_path
from .system import holding, system_of


@dataclass
class BackupServer:
    """Answers one module's StateManager requests inside transaction `tx_id`."""

    ctx: Context
    tx_id: int
    module: Module
    audit: RunAudit | None = None
    log: list[str] = field(default_factory=list)

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        """Given one request of the worker, return its reply (never raises for a
        refused or failed request: the module gets False, as the original does)."""
        self.log = []
        op = request.get("op")
        try:
            if op == "backup":
                reply = self._backup(request)
            elif op == "restore":
                reply = self._restore(request)
            else:
                reply = {"ok": False, "error": f"unknown request {op!r}"}
        except (HsTxError, OSError, ValueError, TypeError, KeyError) as exc:
            reply = {"ok": False, "error": str(exc)}
        return {**reply, "tx": self.tx_id, "log": self.log}

    # --- backup ---------------------------------------------------------------------
    def _backup(self, request: dict[str, Any]) -> dict[str, Any]:
        name = str(request["name"])
        files = [_absolute(p) for p in request.get("files", [])]
        databases = _sqlite_paths(request.get("databases", []), self.log)
        detail = {"name": name, "module": self.module.name, "paths": [str(p) for p in files]}
        units = [str(u) for u in request.get("services", [])]
        with self.ctx.journal.step(self.tx_id, Phase.STATEMANAGER, Step.BACKUP, detail):
            entries = [(str(p), self._hold(p, database=False)) for p in files]
            entries += [(str(p), self._hold(p, database=True)) for p in databases]
            states = record_services(self.ctx, self.tx_id, units, "statemanager")
            self.ctx.journal.add_backup(self.tx_id, name, self.module.name, entries, states)
        absent = [path for path, n in entries if n is None]
        return {"ok": True, "absent": absent}

    def _hold(self, path: Path, database: bool) -> int | None:
        """Make sure a snapshot holds `path` (a SQLite `database`: a consistent copy) as
        it is now; return its number (a scope path or a point snapshot), or None when
        `path` does not exist. Raises ScopeError for a link out of the watched roots."""
        path = resolve(self.ctx.config, path)[0]
        exists = os.path.lexists(path)
        covering = self._covering(path)
        backend = "sqlite" if database and exists else None
        if covering is None:
            n = self._snapshot(path, backend, None)  # absent: rollback removes what appears
            return n if exists else None
        if not exists:
            return None
        if backend is None and self._unchanged_since(covering, path):
            return covering.n
        return self._snapshot(path, backend, POINT)

    def _unchanged_since(self, covering: PathInfo, path: Path) -> bool:
        """True when `path` (inside scope path `covering`) is still as its snapshot holds it."""
        rel = "" if path == Path(covering.path) else str(path.relative_to(covering.path))
        return not path_changes(self.ctx.journal, covering).under(rel)

    def _covering(self, path: Path) -> PathInfo | None:
        """The newest scope path of this transaction that holds `path`, if any."""
        info = self.ctx.journal.transaction(self.tx_id)
        assert info is not None
        system = system_of(info.paths)
        top = holding(path, system, read_mounts()) if system else None
        held = [
            p
            for p in info.paths
            if p.path == top or (p.origin != Origin.SYSTEM and path.is_relative_to(p.path))
        ]
        return max(held, key=lambda p: p.n) if held else None

    def _snapshot(self, path: Path, backend: str | None, role: str | None) -> int:
        """Add `path` to this transaction (scope, or a point snapshot) and snapshot it
        now. Raises ScopeError when it may not be snapshotted."""
        entry = check_path(self.ctx.config, Planned(path, Origin.STATEMANAGER, self.module.name))
        if backend is not None:
            entry = ScopeEntry(entry.path, entry.existed, backend, entry.size, entry.origin)
        check_free_space(self.ctx.config, [entry])
        if role is None and entry.existed:
            self._changed_before(path)
        n = self.ctx.journal.next_path_number(self.tx_id)
        record_path(self.ctx.journal, self.tx_id, n, entry, added_by=self.module.name, role=role)
        if entry.existed:
            capture_path(self.ctx.config, self.ctx.journal, self.tx_id, n, entry, fresh=True)
        what = "point-in-time snapshot of" if role == POINT else "added to the transaction:"
        self.log.append(f"hs-tx: {what} {path}")
        return n

    def _changed_before(self, path: Path) -> None:
        """What the run changed at `path` before this backup is not in its snapshot, so
        no rollback will undo it: journal it as changed outside the scope."""
        since = self.audit.started_ns if self.audit is not None else None
        if since is None:
            return
        ignores = [str(p) for p in self.ctx.config.ignores]
        changes = changed_since([str(path)], ignores, since, read_mounts())
        if changes:
            rows = [(c.path, c.change, None, c.count) for c in changes]
            self.ctx.journal.add_outside(self.tx_id, rows)
            self.log.append(
                f"hs-tx: warning: {path} changed earlier in this run; no rollback undoes it"
            )

    # --- restore --------------------------------------------------------------------
    def _restore(self, request: dict[str, Any]) -> dict[str, Any]:
        name = str(request["name"])
        records = self.ctx.journal.backups(name)
        if not records:
            return {"ok": False, "error": f"hs-tx holds no backup called {name}"}
        detail = {"name": name, "module": self.module.name}
        with self.ctx.journal.step(self.tx_id, Phase.STATEMANAGER, Step.RESTORE, detail):
            force_start = bool(request.get("force_start"))
            for record in records:
                if record.kind == "service":
                    state = json.loads(record.state or "{}")
                    active = True if force_start else state.get("active")
                    put_back(self.ctx, self.tx_id, record.path, active, state.get("enabled"))
                else:
                    self._put_back(record)
        self.log.append(f"hs-tx: restored the backup {name} of transaction {records[0].tx_id}")
        return {"ok": True}

    def _put_back(self, record: BackupInfo) -> None:
        """Restore one backed-up path from the snapshot that holds it (a path that was
        absent at the backup is removed)."""
        path = Path(record.path)
        holder = self._holder(record)
        if holder is None:
            if os.path.lexists(path):
                remove_entry(path)
                fsync_dir(path.parent)
            return
        restore_path(
            self.ctx.config, self.ctx.journal, self.tx_id, holder, Phase.STATEMANAGER, only=path
        )

    def _holder(self, record: BackupInfo) -> PathInfo | None:
        if record.n is None:
            return None
        info = self.ctx.journal.transaction(record.tx_id)
        if info is None or info.snapshots_pruned_at is not None:
            raise HsTxError(
                f"the snapshots of transaction {record.tx_id}, which hold this backup, are gone",
                "an older backup can no longer be restored",
            )
        return next(p for p in [*info.paths, *info.points] if p.n == record.n)


def _absolute(value: object) -> Path:
    text = str(value)
    if "\0" in text:
        raise ValueError(f"invalid path {text!r}")
    return Path(os.path.normpath(os.path.abspath(text)))


def _sqlite_paths(databases: list[Any], log: list[str]) -> list[Path]:
    """The files of the SQLite databases among `databases`; others are logged."""
    paths = []
    for i, db in enumerate(databases):
        kind = str(db.get("type", "postgresql")) if isinstance(db, dict) else "?"
        if kind != "sqlite" or not isinstance(db, dict) or "database" not in db:
            log.append(f"Database {i} ({kind}) not backed up: hs-tx copies SQLite databases only")
            continue
        paths.append(_absolute(db["database"]))
    return paths
