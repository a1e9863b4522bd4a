"""Snapshots no journal relies on: found for `hs-tx status`, removed by `hs-tx prune --orphans`.

Every snapshot is named after the journal that took it (`<journal-uuid>-<txid>…`),
and every btrfs snapshot store names, per journal, the journal file that owns its
snapshots (`<journal-uuid>.owner`). A snapshot is an orphan when this journal does
not record it and no other live journal owns it: its journal was moved aside or
lost, or hs-tx stopped before it recorded the capture. A snapshot of another
journal that is still there (a second state dir on the same filesystem) is never
an orphan here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..base.fsio import durable_write, fsync_dir
from ..journal import Journal, MalformedRowError, identity_of
from ..snapshot.btrfs import is_btrfs, subvolume_root
from ..snapshot.entries import SNAPSHOT_STORE, remove_entry
from ..snapshot.subvol import delete_subvolume
from ..snapshot.tarindex import base_of
from .config import Config

_NAME = re.compile(
    r"^(?:(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-)?"
    r"(?P<tx>[0-9]+)(?:-[0-9]+)?(?:-probe)?$"
)
_OWNER = ".owner"


@dataclass(frozen=True)
class Orphan:
    """A snapshot no journal relies on: a btrfs subvolume, or a dir of the snapshots dir."""

    path: Path
    kind: str  # "btrfs" or "dir"
    why: str


def claim_store(store: Path, journal: Journal) -> None:
    """Name `journal` as the owner of its snapshots in the btrfs snapshot `store`
    (once), so another state dir's hs-tx never takes them for orphans."""
    owner = store / f"{journal.uuid}{_OWNER}"
    if not owner.exists():
        durable_write(owner, f"{journal.path}\n".encode(), 0o600)


def find_orphans(config: Config, journal: Journal) -> list[Orphan]:
    """Every orphaned snapshot in the snapshots dir and in the btrfs stores this
    journal uses or that hold its watched roots. Reads only (directory listings)."""
    rows, running = journal.kept_snapshots()
    kept, stores = _kept_places(rows)
    for root in (*config.watch, config.modules_dir, config.state_dir):
        store = _store_of(root)
        if store is not None:
            stores.add(store)
    found = []
    for store in sorted(stores):
        found += _orphans_in(store, "btrfs", kept, running, journal)
    found += _orphans_in(_real(config.snapshots_dir), "dir", kept, running, journal)
    return found


def remove_orphan(orphan: Orphan) -> None:
    """Delete one orphan (the caller holds the lock); an owner file left without
    snapshots goes with it."""
    if orphan.kind == "btrfs":
        if os.path.lexists(orphan.path):
            delete_subvolume(orphan.path, commit=True)
        match = _NAME.match(orphan.path.name)
        uuid = match["uuid"] if match else None
        store = orphan.path.parent
        if uuid and not any(store.glob(f"{uuid}-*")):
            (store / f"{uuid}{_OWNER}").unlink(missing_ok=True)
    else:
        remove_entry(orphan.path)
    fsync_dir(orphan.path.parent)


def _kept_places(
    rows: list[tuple[int, str, str | None, str | None]],
) -> tuple[set[Path], set[Path]]:
    """(every snapshot or transaction dir the rows rely on, the btrfs stores they use).

    Raises MalformedRowError for a btrfs ref that names no snapshot: which one it
    relies on is unknown, so none is judged an orphan.
    """
    kept: set[Path] = set()
    stores: set[Path] = set()
    for row_id, backend, snapshot, manifest in rows:
        if manifest and os.path.isabs(manifest):  # a lazy one lives in the journal
            kept.add(_real(Path(manifest).parent))
        if not snapshot:
            continue
        if backend == "btrfs":
            try:
                where = Path(json.loads(snapshot)["snapshot"])
            except (ValueError, KeyError, TypeError) as exc:
                why = f"snapshot is {snapshot!r:.80}"
                raise MalformedRowError("paths", row_id, why) from exc
            kept.add(_real(where))
            stores.add(_real(where.parent))
        else:
            kept.add(_real(Path(snapshot).parent))
            base = base_of(Path(snapshot)) if backend == "tar" else None
            if base is not None:  # an incremental archive needs its base's dir too
                kept.add(_real(Path(base).parent))
    return kept, stores


def _store_of(root: Path) -> Path | None:
    """The snapshot store of the btrfs subvolume holding `root`, if there is one."""
    if not root.exists() or not is_btrfs(root):
        return None
    store = subvolume_root(root) / SNAPSHOT_STORE
    return _real(store) if store.is_dir() else None


def _real(path: Path) -> Path:
    """`path` with links resolved, so one place is compared as one."""
    return Path(os.path.realpath(path))


def _orphans_in(
    place: Path, kind: str, kept: set[Path], running: set[int], journal: Journal
) -> list[Orphan]:
    """The orphans among the snapshot dirs directly in `place`."""
    if not place.is_dir():
        return []
    found = []
    for entry in sorted(place.iterdir()):
        match = _NAME.match(entry.name)
        if entry in kept or match is None or not entry.is_dir() or entry.is_symlink():
            continue
        why = _why_orphan(place, kind, match, running, journal)
        if why is not None:
            found.append(Orphan(entry, kind, why))
    return found


def _why_orphan(
    place: Path, kind: str, match: re.Match[str], running: set[int], journal: Journal
) -> str | None:
    """Why the snapshot named `match` in `place` is an orphan, or None when it is not."""
    uuid, tx = match["uuid"], int(match["tx"])
    if uuid is None:
        return "named by an hs-tx older than journal identities, and not recorded by this journal"
    if uuid == journal.uuid:
        if tx in running:
            return None  # being captured right now
        return f"transaction {tx} of this journal left it behind unrecorded"
    if kind == "dir":  # the snapshots dir belongs to this state dir's journal only
        return f"its journal ({uuid}) is gone from this state dir"
    owner_file = place / f"{uuid}{_OWNER}"
    try:
        owner = Path(owner_file.read_text().strip())
    except FileNotFoundError:
        return f"no journal owns it (journal {uuid})"
    except OSError:
        return None  # cannot tell: kept
    if not os.path.lexists(owner):
        return f"its journal {owner} (identity {uuid}) is gone"
    found = identity_of(owner)
    if found is not None and found != uuid:
        return f"its journal {owner} was replaced by another (identity {found})"
    # that journal is there (another state dir's, recording its own snapshots), or a
    # file is there that cannot be read now: hs-tx cannot tell, so it keeps them
    return None
