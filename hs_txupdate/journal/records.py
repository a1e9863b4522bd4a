"""The plain records the journal hands out: transactions, scope paths, events, module runs.

Rows are copied into these dataclasses inside the session that read them, so
callers never hold an ORM object (nor a session) and the journal's tables stay
its own business. Words stay plain strings here; compare them with `vocab`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, TypeVar

from .models import Transaction

_Info = TypeVar("_Info")


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
    origin: str | None = None
    added_by: str | None = None
    role: str | None = None


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
class OutsideInfo:
    """A path a run changed outside its scope."""

    path: str
    change: str
    module: str | None
    count: int
    restored: bool | None


@dataclass
class BackupInfo:
    """One path of a StateManager backup and the snapshot (scope path n) holding it."""

    tx_id: int
    name: str
    module: str | None
    kind: str  # path | service
    path: str  # the path, or the unit of a service
    n: int | None
    state: str | None  # a service's state as JSON
    at: str


@dataclass
class ServiceInfo:
    """A service's state as recorded before a run changed it."""

    unit: str
    active: bool | None
    enabled: str | None
    source: str


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
    audit_method: str | None = None
    audit_reason: str | None = None
    audit_others: int | None = None
    paths: list[PathInfo] = field(default_factory=list)
    points: list[PathInfo] = field(default_factory=list)  # point-in-time snapshots
    outside: list[OutsideInfo] = field(default_factory=list)
    modules: list[ModuleRunInfo] = field(default_factory=list)
    events: list[EventInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of everything in this record."""
        return asdict(self)


def from_row(cls: type[_Info], row: object) -> _Info:
    """Build a plain record from an ORM row, copying the fields the record has."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})  # type: ignore[arg-type]


def tx_info(row: Transaction, undone_by: int | None) -> TxInfo:
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
        net_before=loads(row.net_before),
        net_after=loads(row.net_after),
        net_restored=loads(row.net_restored),
        net_actions=loads(row.net_actions),
        audit_method=row.audit_method,
        audit_reason=row.audit_reason,
        audit_others=row.audit_others,
    )


def loads(text: str | None) -> Any:
    """Given a JSON column's text (or None), return the parsed value (None for none)."""
    return json.loads(text) if text else None
