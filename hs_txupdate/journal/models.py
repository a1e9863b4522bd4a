"""SQLAlchemy models of the journal. Only the journal package touches them."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of every journal table."""


class Meta(Base):
    """Key/value facts about the journal itself, e.g. its compatibility level."""

    __tablename__ = "hs_tx_meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(String)


class Transaction(Base):
    """One run of a command that changes the system: update, undo or config."""

    __tablename__ = "transactions"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 - SQLAlchemy idiom
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String)
    state: Mapped[str] = mapped_column(String)
    started_at: Mapped[str] = mapped_column(String)
    finished_at: Mapped[str | None] = mapped_column(String, nullable=True)
    user: Mapped[str] = mapped_column(String)
    host: Mapped[str] = mapped_column(String)
    command: Mapped[str] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    undoes: Mapped[int | None] = mapped_column(ForeignKey("transactions.id"), nullable=True)
    snapshots_pruned_at: Mapped[str | None] = mapped_column(String, nullable=True)
    source_before: Mapped[str | None] = mapped_column(String, nullable=True)
    source_after: Mapped[str | None] = mapped_column(String, nullable=True)
    # network guard, JSON text: captured state before and after the run, the state
    # after the guard restored it, and every change the guard made
    net_before: Mapped[str | None] = mapped_column(Text, nullable=True)
    net_after: Mapped[str | None] = mapped_column(Text, nullable=True)
    net_restored: Mapped[str | None] = mapped_column(Text, nullable=True)
    net_actions: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the write audit: how it watched (fanotify | scan), what it could not see,
    # how many writes by other processes it counted
    audit_method: Mapped[str | None] = mapped_column(String, nullable=True)
    audit_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    audit_others: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ScopePath(Base):
    """One path in a transaction's scope and the snapshot that can restore it."""

    __tablename__ = "paths"
    __table_args__ = (UniqueConstraint("tx_id", "n"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tx_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"), index=True)
    n: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    existed: Mapped[bool]
    backend: Mapped[str] = mapped_column(String)
    snapshot: Mapped[str | None] = mapped_column(Text, nullable=True)
    manifest: Mapped[str | None] = mapped_column(Text, nullable=True)
    manifest_sha256: Mapped[str | None] = mapped_column(String, nullable=True)
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    checksum: Mapped[str | None] = mapped_column(String, nullable=True)
    changed: Mapped[bool | None] = mapped_column(nullable=True)
    pruned_at: Mapped[str | None] = mapped_column(String, nullable=True)
    fingerprint: Mapped[str | None] = mapped_column(String, nullable=True)
    fingerprint_before: Mapped[str | None] = mapped_column(String, nullable=True)
    origin: Mapped[str | None] = mapped_column(String, nullable=True)  # see vocab.Origin
    added_by: Mapped[str | None] = mapped_column(String, nullable=True)  # module, mid-run
    role: Mapped[str | None] = mapped_column(String, nullable=True)  # None scope, "point"


class Event(Base):
    """One journaled step: its intent before it acts, done or failed after."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("tx_id", "seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tx_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String)
    step: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String)
    at: Mapped[str] = mapped_column(String)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class ModuleRun(Base):
    """One module's run inside a transaction."""

    __tablename__ = "module_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tx_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"), index=True)
    name: Mapped[str] = mapped_column(String)
    schema_version: Mapped[str | None] = mapped_column(String, nullable=True)
    version_from: Mapped[str | None] = mapped_column(String, nullable=True)
    version_to: Mapped[str | None] = mapped_column(String, nullable=True)
    status: Mapped[str] = mapped_column(String)
    started_at: Mapped[str] = mapped_column(String)
    duration_s: Mapped[float | None] = mapped_column(nullable=True)
    exit_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output_tail: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    kind: Mapped[str | None] = mapped_column(String, nullable=True)  # main | maintenance


class UndoLink(Base):
    """Undo transaction `undo_tx_id` reversed transaction `undone_tx_id`."""

    __tablename__ = "undo_links"
    undo_tx_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"), primary_key=True)
    undone_tx_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"), primary_key=True)


class _Change:
    """The columns of a path a run changed, as the write audit saw it."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tx_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    change: Mapped[str] = mapped_column(String)  # created | modified | metadata | deleted
    module: Mapped[str | None] = mapped_column(String, nullable=True)
    count: Mapped[int] = mapped_column(Integer)  # entries folded into this path


class OutsideChange(_Change, Base):
    """A path a run changed outside its scope, as the write audit saw it."""

    __tablename__ = "outside_scope"
    restored: Mapped[bool | None] = mapped_column(nullable=True)


class RunChange(_Change, Base):
    """A path a run changed inside its whole-system scope: what its rollback and undo put
    back (the write audit's attribution, or btrfs's change list when that was incomplete)."""

    # a directory with many changed entries: the keys of their names (audit.fold.name_key)
    names: Mapped[str | None] = mapped_column(Text, nullable=True)

    __tablename__ = "run_changes"


class Footprint(Base):
    """A path a module changed outside its scope in an earlier run: in scope from now on."""

    __tablename__ = "footprints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    module: Mapped[str] = mapped_column(String, index=True)
    path: Mapped[str] = mapped_column(Text)
    tx_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"))
    forgotten_at: Mapped[str | None] = mapped_column(String, nullable=True)


class StateManagerBackup(Base):
    """One path of a module's StateManager backup: which snapshot (scope path `n` of
    the transaction) holds it as it was at the backup call."""

    __tablename__ = "statemanager_backups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tx_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"), index=True)
    name: Mapped[str] = mapped_column(String, index=True)  # the backup's module_name
    module: Mapped[str | None] = mapped_column(String, nullable=True)  # the module that ran
    kind: Mapped[str] = mapped_column(String)  # path | service
    path: Mapped[str] = mapped_column(Text)  # the path, or the service's unit
    n: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: absent at backup time
    state: Mapped[str | None] = mapped_column(Text, nullable=True)  # a service's, as JSON
    at: Mapped[str] = mapped_column(String)


class ServiceState(Base):
    """A service's state before a run changed it, to be put back by a rollback."""

    __tablename__ = "services"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tx_id: Mapped[int] = mapped_column(ForeignKey("transactions.id"), index=True)
    unit: Mapped[str] = mapped_column(String)
    active: Mapped[bool | None] = mapped_column(nullable=True)
    enabled: Mapped[str | None] = mapped_column(String, nullable=True)  # is-enabled's word
    source: Mapped[str] = mapped_column(String)  # module | statemanager | unit-file
