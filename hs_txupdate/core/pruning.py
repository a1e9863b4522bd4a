"""Deleting what a transaction's snapshots left: its archives, manifests and btrfs
snapshots once retention or a rollback lets them go (the bases a kept increment still
needs stay), and the staging dirs of a restore."""

from __future__ import annotations

from pathlib import Path

from ..base.fsio import fsync_dir
from ..journal import Journal, PathInfo, Phase, Step, TxInfo
from ..snapshot import backend_by_name
from ..snapshot.base import tx_key
from ..snapshot.entries import STAGE_PREFIX, remove_entry
from ..snapshot.tarindex import base_of, index_path
from .config import Config
from .snapshots import target_of, tx_dir


def delete_snapshots(
    config: Config, journal: Journal, info: TxInfo, on_tx: int | None = None
) -> None:
    """Delete every snapshot (point-in-time ones too) and manifest of transaction
    `info`, journaled on transaction `on_tx` (default: its own).

    Raises DamagedError, before the transaction's dir is removed, when a snapshot is
    not the one recorded (it is kept, and so is everything not yet deleted).
    """
    tx_id, paths = info.id, [*info.paths, *info.points]
    on = tx_id if on_tx is None else on_tx
    mine = {p.snapshot for p in paths if p.snapshot}
    needed = _needed_by_others(journal, mine)
    bases = {b for s in mine if (b := base_of(Path(s))) is not None}
    keep = {Path(s) for s in needed}
    with journal.step(on, Phase.RETENTION, Step.DELETE_SNAPSHOTS, {"of": tx_id}) as record:
        # first the bases only this transaction still needed: its indexes name them
        for base in sorted(bases - needed):
            target = target_of(journal, tx_id, 0, Path(base))
            backend_by_name("tar", config.snapshots_dir).delete(target, base)  # checks where
            if Path(base).parent.is_dir():  # what else its pruned transaction left for it
                _clear(Path(base).parent, keep)
        for path in paths:
            if path.existed and path.snapshot not in needed:
                target = target_of(journal, tx_id, path.n, Path(path.path))
                backend_by_name(path.backend, config.snapshots_dir).delete(target, path.snapshot)
        for place in _tx_dirs(config, journal, tx_id, paths):
            _clear(place, keep)
        record.join(lambda: journal.mark_pruned(tx_id))  # one durable write with the outcome


def _needed_by_others(journal: Journal, mine: set[str]) -> set[str]:
    """The snapshot refs that kept paths other than `mine` rely on: their own, and the
    base archives of the incremental tar archives among them."""
    rows, _running = journal.kept_snapshots()
    refs = {ref for _row, _backend, ref, _manifest in rows if ref and ref not in mine}
    tar = [ref for _row, backend, ref, _manifest in rows if backend == "tar" and ref in refs]
    return refs | {b for ref in tar if (b := base_of(Path(ref))) is not None}


def _clear(place: Path, keep: set[Path]) -> None:
    """Remove the transaction dir `place`, or, when it holds archives in `keep` (the
    bases of later snapshots), everything in it but them, their indexes and manifests
    (a later capture may take its differences from them too)."""
    bases = [k for k in keep if k.parent == place]
    kept = {f for k in bases for f in (k, index_path(k), k.with_suffix(".manifest"))}
    if not kept:
        remove_entry(place)
    else:
        for entry in place.iterdir():
            if entry not in kept:
                remove_entry(entry)
        fsync_dir(place)
    fsync_dir(place.parent)


def _tx_dirs(config: Config, journal: Journal, tx_id: int, paths: list[PathInfo]) -> set[Path]:
    """The existing dirs of the snapshots dir that hold this transaction's files: its
    own, and where its rows recorded manifests (journals older than their identity
    used `<txid>`)."""
    own = tx_dir(config, journal, tx_id)
    places = {own} | {Path(info.manifest).parent for info in paths if info.manifest}
    names = (own.name, str(tx_id))
    return {
        p
        for p in places
        if p.parent == config.snapshots_dir
        and p.name in names
        and p.is_dir()
        and not p.is_symlink()
    }


def remove_stage_dirs(
    journal: Journal, tx_id: int, paths: list[PathInfo], modules_dir: Path
) -> None:
    """Remove staging dirs an interrupted restore or schema update of `tx_id` left
    beside its scope paths or in the modules dir."""
    places = {Path(info.path).parent for info in paths} | {modules_dir}
    for place in places:
        if not place.is_dir():
            continue
        stages = list(place.glob(f"{STAGE_PREFIX}{tx_key(journal.uuid, tx_id)}-*"))
        for stage in stages:
            remove_entry(stage)
        if stages:
            fsync_dir(place)
