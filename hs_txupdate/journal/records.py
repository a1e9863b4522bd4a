"""The plain records the journal hands out: transactions, scope paths, events, module runs.

Rows are copied into these dataclasses as they are read, each value checked
against the type its field declares, so callers never hold a database row and
the journal's tables stay its own business. Words stay plain strings here;
compare them with `vocab`.
"""

from __future__ import annotations

import json
import sqlite3
import types
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from ..base.errors import DamagedError

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
class ChangeInfo:
    """A path a run changed, as the write audit saw it (`count`: entries folded into it);
    in `TxInfo.run_changes`: inside its whole-system scope."""

    path: str
    change: str
    module: str | None
    count: int


@dataclass
class RunChangeInfo(ChangeInfo):
    """A path a run changed inside its whole-system scope; `names`: for a directory with
    many changed entries, the keys of their names, space-separated (the run changed
    those entries, and no others there)."""

    names: str | None = None


@dataclass
class OutsideInfo(ChangeInfo):
    """A path a run changed outside its scope, and whether a rollback put it back."""

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
    run_changes: list[RunChangeInfo] = field(default_factory=list)  # inside a system scope
    modules: list[ModuleRunInfo] = field(default_factory=list)
    events: list[EventInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of everything in this record."""
        return asdict(self)


class MalformedRowError(DamagedError):
    """A journal row whose values hs-tx cannot use (damaged, or edited by hand)."""

    def __init__(self, table: str, row_id: object, why: str) -> None:
        super().__init__(
            f"journal row {table} #{row_id} is malformed: {why}",
            "it was damaged or edited by hand, and hs-tx does not act on it; inspect it in"
            f" the journal: SELECT * FROM {table} WHERE id = {row_id}",
        )
        self.table, self.row_id = table, row_id


def columns(cls: type) -> tuple[str, ...]:
    """The columns a record of type `cls` is read from: its fields that are not lists
    of child records (a TxInfo's undone_by is no column either)."""
    if cls not in _COLUMNS:
        hints = _hints(cls)
        _COLUMNS[cls] = tuple(
            f.name
            for f in fields(cls)
            if get_origin(hints[f.name]) is not list or f.name == "command"
            if f.name != "undone_by"
        )
    return _COLUMNS[cls]


def from_row(cls: type[_Info], row: sqlite3.Row, table: str) -> _Info:
    """Build a plain record from a row read with its `id` and the record's `columns`.

    Raises MalformedRowError when a value is not of the record's type.
    """
    values = {name: _column(cls, name, row[name]) for name in columns(cls)}
    return checked(cls, values, table, row["id"])


def _column(cls: type, name: str, value: Any) -> Any:
    """A value as read from SQLite, with 0 and 1 as the booleans a bool field stores."""
    hint = _hints(cls)[name]
    if type(value) is int and value in (0, 1) and _conforms(True, hint):
        return bool(value)
    return value


def checked(cls: type[_Info], values: dict[str, Any], table: str, row_id: object) -> _Info:
    """`cls(**values)` once every value has the type `cls` declares for it (every `path`
    an absolute path, every time ISO 8601 with its UTC offset, since times of different
    rows are compared). Raises MalformedRowError naming the row otherwise."""
    hints = _hints(cls)
    for name, value in values.items():
        if not _conforms(value, hints[name]):
            raise MalformedRowError(table, row_id, f"{name} is {_show(value)}")
        if name == "path" and isinstance(value, str) and not _is_path(value):
            raise MalformedRowError(table, row_id, f"path is {_show(value)}")
        is_time_field = name == "at" or name.endswith("_at")
        if is_time_field and isinstance(value, str) and not _is_time(value):
            raise MalformedRowError(table, row_id, f"{name} is {_show(value)}")
    return cls(**values)


def _is_time(value: str) -> bool:
    """True when `value` is an ISO 8601 time carrying its UTC offset."""
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def typed_row(table: str, row_id: object, values: Any, *hints: Any) -> tuple[Any, ...]:
    """`values` (the columns of one row, read raw) as a tuple, once each has the type of
    its hint. Raises MalformedRowError naming the row otherwise."""
    row = tuple(values)
    for value, hint in zip(row, hints, strict=True):
        if not _conforms(value, hint):
            raise MalformedRowError(table, row_id, f"a value is {_show(value)}")
    return row


_HINTS: dict[type, dict[str, Any]] = {}
_COLUMNS: dict[type, tuple[str, ...]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def _conforms(value: Any, hint: Any) -> bool:
    """True when `value` is of the (simple) type `hint` a record field declares (a bool
    is no int or float unless the hint names bool; an int is a float)."""
    kinds = _KINDS.get(hint)
    if kinds is None:
        kinds = _KINDS[hint] = _kinds(hint)
    if not kinds:  # Any
        return True
    return isinstance(value, kinds) and (type(value) is not bool or bool in kinds)


_KINDS: dict[Any, tuple[type, ...]] = {}


def _kinds(hint: Any) -> tuple[type, ...]:
    """The classes a value of `hint` may be an instance of; () for Any."""
    if hint is Any:
        return ()
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        found: tuple[type, ...] = ()
        for arg in get_args(hint):
            kinds = _kinds(arg)
            if not kinds:
                return ()
            found += kinds
        return found
    if origin in (list, dict):
        return (origin,)
    if hint is float:
        return (int, float)
    return (hint,)


def _is_path(text: str) -> bool:
    return text.startswith("/") and "\0" not in text


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def tx_info(row: sqlite3.Row, undone_by: int | None) -> TxInfo:
    """Build a TxInfo (without children) from a transactions row read with its
    `columns(TxInfo)`.

    Raises MalformedRowError when a value of the row is unusable.
    """
    tx_id = row["id"]
    values = {name: row[name] for name in columns(TxInfo)}
    for column in ("command", "net_before", "net_after", "net_restored", "net_actions"):
        values[column] = loads(row[column], "transactions", tx_id, column)
    values["undone_by"] = undone_by
    return checked(TxInfo, values, "transactions", tx_id)


def loads(text: Any, table: str = "?", row_id: object = "?", column: str = "detail") -> Any:
    """Given a JSON column's text (or None), return the parsed value (None for none).

    Raises MalformedRowError (naming `table`, `row_id`, `column`) for text that is
    not JSON.
    """
    if not text:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise MalformedRowError(table, row_id, f"{column} is not JSON ({exc})") from exc
