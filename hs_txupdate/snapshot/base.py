"""The snapshot backend protocol shared by every backend."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .manifest import Manifest, Written


@dataclass(frozen=True)
class Captured:
    """What a backend made of one path: a reference it can restore from later."""

    ref: str
    size: int | None = None
    checksum: str | None = None
    base: str | None = None  # the ref of the snapshot this one holds the changes from
    # an increment's manifest, written by the walk that listed it (SnapshotTarget.manifest)
    # when tar read every member as that walk saw it; None: the caller walks for one
    manifest: Written | None = field(default=None, compare=False)


def tx_key(journal_uuid: str, tx_id: int) -> str:
    """`<journal-uuid>-<txid>`: names what belongs to one transaction of one journal, so a
    new journal (the old one moved aside) or a second state dir never meets its snapshots."""
    return f"{journal_uuid}-{tx_id}"


@dataclass(frozen=True)
class Base:
    """An earlier full snapshot of the same path that a backend may capture only the
    differences from (tar): what it recorded, and the manifest taken with it."""

    captured: Captured
    manifest: Manifest


@dataclass(frozen=True)
class SnapshotTarget:
    """One scope path to capture: its transaction's key (`tx_key`), its number in the
    scope, the path, and an earlier snapshot to capture only the differences from."""

    tx: str
    n: int
    path: Path
    fresh: bool = False  # taken mid-run: a snapshot taken earlier in the run may not serve
    base: Base | None = field(default=None, compare=False)
    manifest: Path | None = None  # where an increment's listing walk writes the manifest

    @property
    def journal(self) -> str:
        """The UUID of the journal the transaction belongs to ('' when not known)."""
        return self.tx.rpartition("-")[0]

    @property
    def name(self) -> str:
        """The snapshot's name, `<journal-uuid>-<txid>-<n>`."""
        return f"{self.tx}-{self.n}"


class Backend(Protocol):
    """A way to capture a set of paths and later restore exactly those paths."""

    name: str
    # True when the tree `reference` gives is a copy made for the one restore (its
    # entries may be moved into place); False for a snapshot that must stay as it is
    disposable: bool

    def supports(self, path: Path) -> bool:
        """True when this backend can snapshot the (existing) `path`."""
        ...

    def required_space(self, path: Path, size: int) -> list[tuple[Path, int]]:
        """(directory, bytes) pairs that must be free to capture and restore `path`."""
        ...

    def capture(self, target: SnapshotTarget) -> Captured:
        """Snapshot `target.path` durably and return how to find it again."""
        ...

    def reference(
        self, target: SnapshotTarget, captured: Captured, entries: list[str] | None = None
    ) -> AbstractContextManager[Path]:
        """A context giving a read-only tree equal to the path as captured.

        `entries` (relative paths) are all the caller will read; None means all.
        Raises DamagedError when the snapshot is missing or its checksum fails.
        """
        ...

    def check(self, target: SnapshotTarget, captured: Captured) -> Path:
        """Check the snapshot is intact; raise DamagedError when it is missing or corrupt."""
        ...

    def delete(self, target: SnapshotTarget, ref: str | None) -> None:
        """Delete the snapshot (whole or partial) of `target`; missing is fine.

        `ref` is what capture recorded (None when capture was cut off before that).
        Raises DamagedError, deleting nothing, when the snapshot is not the one recorded.
        """
        ...

    def manifest_root(self, target: SnapshotTarget, captured: Captured) -> Path:
        """Where to walk to build the manifest of what was captured."""
        ...
