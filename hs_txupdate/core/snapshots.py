"""Snapshots of a transaction's scope: capture, compare, restore, delete.

Joins the backends (which know filesystems) with the journal (which knows
transactions). Every filesystem change is announced by an intent event first.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..base.errors import DamagedError
from ..journal import Journal, PathInfo, Phase, Status, Step
from ..snapshot import Captured, SnapshotTarget, backend_by_name
from ..snapshot.base import Base, tx_key
from ..snapshot.btrfs import BtrfsBackend
from ..snapshot.changelist import ChangeLists
from ..snapshot.manifest import (
    IN_SNAPSHOT,
    Changes,
    Manifest,
    check_reference,
    manifest_fingerprint,
    needed_entries,
    read_manifest,
    tree_fingerprint,
    write_manifest,
)
from ..snapshot.sqlite import SqliteBackend
from ..snapshot.tardiff import holds_changes
from ..snapshot.tarindex import base_of, read_index
from ..snapshot.treediff import diff
from .config import Config
from .orphans import claim_store
from .scope import ScopeEntry

Log = Callable[[str], None]
# a lazy manifest is kept in the journal itself (after this prefix), not in a file
LAZY_PREFIX = "lazy:"


def tx_dir(config: Config, journal: Journal, tx_id: int) -> Path:
    """The dir in the state dir that holds the manifests (and tar archives, database
    copies) of one transaction of this journal."""
    return config.snapshots_dir / tx_key(journal.uuid, tx_id)


def target_of(
    journal: Journal, tx_id: int, n: int, path: Path, fresh: bool = False
) -> SnapshotTarget:
    """Scope path `n` of transaction `tx_id` of this journal, as a backend names it."""
    return SnapshotTarget(tx_key(journal.uuid, tx_id), n, path, fresh)


def captured_of(info: PathInfo) -> Captured:
    """What a backend recorded of scope path `info`, as the backends take it back."""
    return Captured(info.snapshot or "", info.size, info.checksum)


def capture_scope(config: Config, journal: Journal, tx_id: int, entries: list[ScopeEntry]) -> None:
    """Record and snapshot every scope path, each announced before it acts."""
    for n, entry in enumerate(entries):
        record_path(journal, tx_id, n, entry)
    for n, entry in enumerate(entries):
        if entry.existed:
            capture_path(config, journal, tx_id, n, entry)


def record_path(
    journal: Journal, tx_id: int, n: int, entry: ScopeEntry, **more: str | None
) -> None:
    """Journal scope path `n` (not yet snapshotted); `more`: added_by, role."""
    origin = str(entry.origin) if entry.origin else None
    journal.add_path(tx_id, n, str(entry.path), entry.existed, entry.backend, origin=origin, **more)
    if not entry.existed:
        journal.update_path(tx_id, n, fingerprint_before=manifest_fingerprint(None))


def capture_path(
    config: Config, journal: Journal, tx_id: int, n: int, entry: ScopeEntry, fresh: bool = False
) -> None:
    """Snapshot the existing scope path `n`, journaled. `fresh`: the run may have
    changed things already, so no snapshot taken earlier in it may serve."""
    detail = {"n": n, "path": str(entry.path), "backend": entry.backend}
    with journal.step(tx_id, Phase.SNAPSHOT, Step.CAPTURE, detail) as step:
        values, base = _capture_one(config, journal, tx_id, n, entry.path, entry.backend, fresh)
        if base is not None:
            step.detail["base"] = base  # an increment: the snapshot it completes
        step.update_path(n, **values)  # in the done event's commit


def _capture_one(
    config: Config,
    journal: Journal,
    tx_id: int,
    n: int,
    path: Path,
    backend_name: str,
    fresh: bool,
) -> tuple[dict[str, str | int | None], str | None]:
    """Snapshot one existing scope path and write its manifest (a lazy one on btrfs: the
    snapshot step reads nothing of the tree); return the columns that record them, and
    the base it was taken as an increment of (see snapshot.tardiff), if any."""
    target = target_of(journal, tx_id, n, path, fresh)
    place = tx_dir(config, journal, tx_id) / f"{n}.manifest"
    if backend_name != "btrfs":
        place.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if backend_name == "tar":
        target = replace(target, base=_tar_base(journal, path), manifest=place)
    backend = backend_by_name(backend_name, config.snapshots_dir)
    taken_ns = time.time_ns()
    captured = backend.capture(target)
    if isinstance(backend, BtrfsBackend):
        claim_store(Path(json.loads(captured.ref)["snapshot"]).parent, journal)
        manifest = Manifest(taken_ns, lazy=True)
        data = manifest.to_bytes()
        where = LAZY_PREFIX + data.decode()  # nothing to keep beside the snapshot
        sha256, fingerprint = hashlib.sha256(data).hexdigest(), manifest_fingerprint(manifest)
    else:
        written = captured.manifest  # an increment's, when tar read it as its walk saw it
        if written is None:
            written = write_manifest(backend.manifest_root(target, captured), taken_ns, place)
            if not _holds_changes(target, captured, written[0]):
                # the tree changed while tar ran, beyond what the increment took: whole then
                backend.delete(target, captured.ref)
                target = replace(target, base=None)
                taken_ns = time.time_ns()
                captured = backend.capture(target)
                written = write_manifest(backend.manifest_root(target, captured), taken_ns, place)
        manifest, sha256, fingerprint = written
        where = str(place)
    columns: dict[str, str | int | None] = {
        "snapshot": captured.ref,
        "size": captured.size,
        "checksum": captured.checksum,
        "manifest": where,
        "manifest_sha256": sha256,
        "fingerprint_before": fingerprint,
    }
    return columns, captured.base


def _holds_changes(target: SnapshotTarget, captured: Captured, manifest: Manifest) -> bool:
    """True unless `captured` is an increment that misses an entry the manifest taken
    after it shows changed since its base (see snapshot.tardiff)."""
    if target.base is None or captured.base is None:
        return True
    index = read_index(Path(captured.ref), captured.checksum or "")
    members = set(index.places) if index is not None else set()
    return holds_changes(target.path, target.base.manifest, manifest, members)


def _tar_base(journal: Journal, path: Path) -> Base | None:
    """The full tar archive of `path` that a new capture may hold only the differences
    from (see snapshot.tardiff), with its manifest: that of the newest committed
    transaction that keeps one, or the base of its incremental one. None when there
    is none usable."""
    for info in journal.committed_with_snapshots([]):
        for kept in info.paths:
            if kept.path != str(path) or kept.backend != "tar" or not kept.snapshot:
                continue
            base = base_of(Path(kept.snapshot))
            full = kept if base is None else journal.path_with_snapshot(base)
            try:
                manifest = load_manifest(full) if full is not None else None
            except DamagedError:
                continue
            if full is not None and manifest is not None and not manifest.lazy:
                return Base(captured_of(full), manifest)
    return None


def load_manifest(info: PathInfo) -> Manifest | None:
    """The manifest of a scope path (None when the path was absent), checked against
    the checksum the journal recorded (a manifest file as it is read: Manifest.items).

    Raises DamagedError when it is missing or fails its checksum.
    """
    if not info.existed:
        return None
    if info.manifest is None or info.manifest_sha256 is None:
        raise DamagedError(
            f"no manifest was recorded for {info.path}", "the snapshot was never completed"
        )
    try:
        if not info.manifest.startswith(LAZY_PREFIX):
            return read_manifest(Path(info.manifest), info.manifest_sha256)
        data = info.manifest[len(LAZY_PREFIX) :].encode()
    except OSError as exc:
        raise DamagedError(
            f"manifest {info.manifest} of {info.path} is unreadable: {exc}",
            "restore the path by hand from its snapshot",
        ) from exc
    if hashlib.sha256(data).hexdigest() != info.manifest_sha256:
        raise DamagedError(
            f"manifest {info.manifest} of {info.path} fails its checksum",
            "restore the path by hand from its snapshot",
        )
    return Manifest.from_bytes(data)


def never_snapshotted(info: PathInfo) -> bool:
    """True for a path a StateManager backup added mid-run whose snapshot was cut off
    (hs-tx stopped): there is nothing to restore it from."""
    return info.added_by is not None and info.existed and info.manifest is None


def path_changes(journal: Journal, info: PathInfo, lists: ChangeLists | None = None) -> Changes:
    """How the live path differs from what its snapshot holds (btrfs: read through
    `lists` when given, see snapshot.changelist.ChangeLists).

    Raises DamagedError when the manifest or (btrfs) the snapshot is not the one recorded.
    """
    return _changes(journal, info, load_manifest(info), lists)


def _changes(
    journal: Journal, info: PathInfo, manifest: Manifest | None, lists: ChangeLists | None
) -> Changes:
    """`path_changes` with the manifest loaded: from btrfs's change list when it is lazy."""
    live = Path(info.path)
    if manifest is None or not manifest.lazy:
        return diff(live, manifest)
    target = target_of(journal, 0, info.n, live)  # only the recorded ref is read
    return BtrfsBackend().changes(target, captured_of(info), lists)


def snapshot_fingerprint(journal: Journal, info: PathInfo) -> str | None:
    """What tree_fingerprint said of the path when it was snapshotted: recorded, or (lazy
    manifest) read from the snapshot now, which keeps inode numbers and ctimes.

    Raises DamagedError when the snapshot is not the one recorded.
    """
    if info.fingerprint_before != IN_SNAPSHOT:
        return info.fingerprint_before
    target = target_of(journal, 0, info.n, Path(info.path))
    return tree_fingerprint(BtrfsBackend().check(target, captured_of(info)))


def restore_path(
    config: Config,
    journal: Journal,
    tx_id: int,
    info: PathInfo,
    phase: Phase = Phase.ROLLBACK,
    only: Path | None = None,
    keep: Callable[[str], bool] | None = None,
    lists: ChangeLists | None = None,
) -> int:
    """Put one scope path back exactly as snapshotted; return how many entries it put
    back or removed, each read again afterwards and found to be the snapshot's.

    `info` may belong to an earlier transaction (undo); the events go to `tx_id`
    under `phase`. `only` (a path at or below it) restores just that part; `keep`
    (given a path relative to it) just the entries it accepts (a system scope's);
    `lists` shares btrfs change lists between the paths of one pass.
    Idempotent: an interrupted restore is finished by calling it again. Raises
    DamagedError when the snapshot needed is missing or corrupt, or an entry is not
    the snapshot's once put back.
    """
    from ..snapshot.restore import refuse_links_above  # here: only a restore needs it

    manifest = load_manifest(info)
    live = Path(info.path)
    refuse_links_above(live)  # before the diff walks it
    # a pass of its own unless given one: its probe outlives the restore (ChangeLists)
    with ChangeLists() as own:
        changes = _changes(journal, info, manifest, lists or own)
        if only is not None:
            changes = changes.under("" if only == live else str(only.relative_to(live)))
        if keep is not None:
            changes = changes.where(keep)
        if not changes:
            return 0
        if info.backend == "sqlite" and manifest is not None:
            return _restore_database(config, journal, tx_id, info, phase)
        return _put_back(config, journal, tx_id, info, phase, manifest, changes)


def _put_back(
    config: Config,
    journal: Journal,
    tx_id: int,
    info: PathInfo,
    phase: Phase,
    manifest: Manifest | None,
    changes: Changes,
) -> int:
    """Restore `changes` of one scope path from its snapshot (none when `manifest` is
    None: the path did not exist), journaled in batches; see restore_path."""
    from ..snapshot.restore import restore as restore_tree

    live = Path(info.path)
    batches: dict[str, int] = {}  # a batch's first entry -> its number (one may overlap the next)

    def announce(status: str, rels: list[str]) -> None:
        number = batches.setdefault(rels[0], len(batches) + 1)
        detail = {"n": info.n, "batch": number, "entries": len(rels), "first": rels[0]}
        # a batch done goes with the next write: a restore cut off before it redoes the batch
        write = journal.event_later if status == Status.DONE else journal.event
        write(tx_id, phase, Step.RESTORE_BATCH, Status(status), detail)

    detail = {"n": info.n, "path": info.path, "entries": changes.count}
    with journal.step(tx_id, phase, Step.RESTORE, detail) as record:
        if manifest is None:
            checked = restore_tree(live, None, changes, announce)
        else:
            target = target_of(journal, tx_id, info.n, live)
            backend = backend_by_name(info.backend, config.snapshots_dir)
            captured = captured_of(info)
            # a lazy manifest's snapshot was checked to be the one recorded
            needed = None if manifest.lazy else needed_entries(changes)
            wanted = None if needed is None else list(needed)
            with backend.reference(target, captured, wanted) as ref:
                if not manifest.lazy:
                    check_reference(ref, manifest, needed)
                checked = restore_tree(live, ref, changes, announce, disposable=backend.disposable)
        record.detail["checked"] = checked  # each entry read back: see snapshot.restored
    return checked


def _restore_database(
    config: Config, journal: Journal, tx_id: int, info: PathInfo, phase: Phase
) -> int:
    """Put a database captured by the sqlite backend back through the backup API."""
    target = target_of(journal, tx_id, info.n, Path(info.path))
    captured = captured_of(info)
    with journal.step(
        tx_id, phase, Step.RESTORE, {"n": info.n, "path": info.path, "entries": 1}
    ) as record:
        SqliteBackend(config.snapshots_dir).restore(target, captured)
        record.detail["checked"] = 1  # read back and compared with the copy
    return 1


def verify_snapshot(config: Config, journal: Journal, info: PathInfo) -> None:
    """Check that the manifest and snapshot of a scope path are intact and the ones
    recorded, changing nothing.

    Raises DamagedError when either is missing, fails its checksum or was changed.
    """
    load_manifest(info)
    if info.existed:
        target = target_of(journal, 0, info.n, Path(info.path))  # checks read recorded refs
        captured = captured_of(info)
        backend_by_name(info.backend, config.snapshots_dir).check(target, captured)
