"""The space kept snapshots hold: released for `[snapshot] min_free` before a run,
measured after a run and cached for `hs-tx status`.

A snapshot of a whole subvolume pins every block the system rewrites after it,
so a box that keeps ten of them can run short of space while nothing of hs-tx's
grows. Before a run, while a filesystem that holds kept snapshots has less free
space than `min_free`, the snapshots of the oldest committed transactions go
(never those of the newest committed one; never those of a transaction in any
other state, so a failed rollback can still be repaired).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..base.errors import DamagedError
from ..base.fsio import durable_write
from ..base.proc import CommandError, run, spawn_detached
from ..journal import Journal, Phase, Status, Step, TxInfo, identity_of, now_iso
from ..snapshot.btrfs import is_btrfs
from ..snapshot.tarindex import base_of
from .config import Config, min_free_bytes
from .context import Context
from .pruning import delete_snapshots

SPACE_CACHE = "snapshot-space.json"


def snapshot_places(config: Config, info: TxInfo) -> dict[int, Path]:
    """The filesystems (by device) on which `info`'s kept snapshots lie, each with a
    directory on it: the btrfs snapshot stores, and the state dir for files."""
    places: dict[int, Path] = {}
    for path in info.paths + info.points:
        if not path.existed or not path.snapshot:
            continue
        where = _btrfs_snapshot(path.snapshot) if path.backend == "btrfs" else None
        where = where.parent if where is not None else config.snapshots_dir
        try:
            places.setdefault(os.stat(where).st_dev, where)
        except OSError:
            continue
    return places


def release_for_space(ctx: Context, tx_id: int) -> list[int]:
    """Before run `tx_id`: release the snapshots of the oldest committed transactions
    while a filesystem holding them has less free space than `min_free`, each release
    journaled on `tx_id`; return the ids released."""
    kept = ctx.journal.committed_with_snapshots([])  # newest first; malformed left alone
    released: list[int] = []
    for old in reversed(kept[1:]):  # oldest first, never the newest committed one
        short = _short_of_space(ctx.config, snapshot_places(ctx.config, old))
        if short is None:
            continue
        where, free, wanted = short
        detail = {"of": old.id, "filesystem": str(where), "free": free, "min_free": wanted}
        ctx.journal.event(tx_id, Phase.RETENTION, Step.RELEASE_FOR_SPACE, Status.DONE, detail)
        ctx.log(
            f"hs-tx: releasing the snapshots of transaction {old.id}: the filesystem of"
            f" {where} has {_mib(free)} free, below [snapshot] min_free ({_mib(wanted)})"
        )
        try:
            delete_snapshots(ctx.config, ctx.journal, old, tx_id)
            _wait_for_cleaner(where)
        except (OSError, CommandError, DamagedError) as exc:
            ctx.log(f"hs-tx: warning: could not release the snapshots of {old.id}: {exc}")
            continue
        released.append(old.id)
    return released


def _short_of_space(config: Config, places: dict[int, Path]) -> tuple[Path, int, int] | None:
    """(a place, its free bytes, the bytes min_free wants) for the first filesystem
    among `places` that is below min_free; None when none is."""
    for where in places.values():
        vfs = os.statvfs(where)
        free, total = vfs.f_bavail * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize
        wanted = min_free_bytes(config.min_free, total)
        if free < wanted:
            return where, free, wanted
    return None


def _wait_for_cleaner(where: Path) -> None:
    """btrfs frees a deleted snapshot's blocks in the background, and counts them free
    from the next commit on: wait for both, so the next look at the free space (or at
    what a snapshot holds alone) sees them (nothing to wait for elsewhere)."""
    if is_btrfs(where):
        # a filesystem sync also wakes the cleaner, which otherwise waits up to the
        # commit interval (30 s by default) before it starts on a deleted snapshot
        run(["btrfs", "filesystem", "sync", str(where)])
        run(["btrfs", "subvolume", "sync", str(where)], timeout=600)
        run(["btrfs", "filesystem", "sync", str(where)])


def measure_later(config: Config, journal: Journal) -> None:
    """Measure what the kept snapshots hold in a process of its own, so the run that
    just committed does not wait for it (`btrfs filesystem du` reads the metadata of
    whole subvolumes). The process is handed what to measure and never opens the
    journal. Raises CommandError when it cannot be started."""
    plan = json.dumps(space_plan(journal))
    spawn_detached([sys.executable, "-m", __name__, str(config.state_dir), plan])


def space_plan(journal: Journal) -> dict[str, Any]:
    """What `record_space` measures: per kept transaction (newest first) its btrfs
    snapshots and the bytes of its archives and database copies (with the base of an
    increment whose own transaction's snapshots were pruned, counted once, with the
    oldest kept transaction that needs it); and the journal's identity, so a figure is
    never cached for another journal."""
    kept = journal.committed_with_snapshots([])
    own = {p.snapshot for info in kept for p in info.paths + info.points if p.snapshot}
    counted: set[str] = set()
    files: dict[int, int] = {}
    for info in reversed(kept):
        paths = info.paths + info.points
        files[info.id] = sum(p.size or 0 for p in paths if p.backend != "btrfs")
        for p in paths:
            base = base_of(Path(p.snapshot)) if p.backend == "tar" and p.snapshot else None
            if base is not None and base not in own and base not in counted:
                counted.add(base)
                files[info.id] += _size(Path(base))
    return {
        "journal": journal.uuid,
        "transactions": [
            {
                "id": info.id,
                "snapshots": sorted(str(s) for s in _btrfs_snapshots(info)),
                "files": files[info.id],
            }
            for info in kept
        ],
    }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def record_space(config: Config, plan: dict[str, Any]) -> dict[str, Any] | None:
    """Measure what `plan` (see space_plan) names and cache it in the state dir for
    `hs-tx status`; return what was cached, or None when the state dir no longer holds
    the journal the plan was made from (moved aside, replaced).

    btrfs snapshots count their exclusive bytes (qgroups when quotas are enabled,
    else one `btrfs filesystem du` over all of them), archives and database copies
    their size.
    """
    txs = plan["transactions"]
    present = sorted({Path(s) for t in txs for s in t["snapshots"] if Path(s).is_dir()})
    exclusive, method = _exclusive(present)
    per_tx = [
        {
            "id": t["id"],
            "bytes": t["files"] + sum(exclusive.get(Path(s), 0) for s in t["snapshots"]),
            "method": method if t["snapshots"] else "files",
        }
        for t in txs
    ]
    report = {"at": now_iso(), "bytes": sum(t["bytes"] for t in per_tx), "transactions": per_tx}
    if identity_of(config.journal_path) != plan["journal"]:
        return None
    durable_write(config.state_dir / SPACE_CACHE, (json.dumps(report) + "\n").encode(), 0o600)
    return report


def _btrfs_snapshots(info: TxInfo) -> set[Path]:
    """The btrfs snapshot subvolumes transaction `info` keeps."""
    found = set()
    for path in info.paths + info.points:
        where = (
            _btrfs_snapshot(path.snapshot) if path.backend == "btrfs" and path.snapshot else None
        )
        if where is not None and where.is_dir():
            found.add(where)
    return found


def cached_space(config: Config) -> dict[str, Any] | None:
    """What `record_space` cached after the last run, or None (never measured here)."""
    try:
        data: dict[str, Any] = json.loads((config.state_dir / SPACE_CACHE).read_text())
    except (OSError, ValueError):
        return None
    return data


def _exclusive(snapshots: list[Path]) -> tuple[dict[Path, int], str]:
    """The bytes only each snapshot holds, and how they were counted."""
    if not snapshots:
        return {}, "files"
    for where in {os.stat(s).st_dev: s for s in snapshots}.values():
        # both count what committed transactions hold: a snapshot deleted a moment ago
        # (a commit's change-list probe) still shares its blocks until it is cleaned
        _wait_for_cleaner(where)
    qgroups = run(["btrfs", "qgroup", "show", "--raw", "-e", str(snapshots[0])], check=False)
    if qgroups.returncode == 0:
        by_id = {
            f[0]: int(f[2])
            for f in (line.split() for line in qgroups.stdout.splitlines())
            if len(f) >= 3 and f[0].startswith("0/") and f[2].isdigit()
        }
        ids = {
            s: run(["btrfs", "inspect-internal", "rootid", str(s)]).stdout.strip()
            for s in snapshots
        }
        return {s: by_id.get(f"0/{i}", 0) for s, i in ids.items()}, "qgroup"
    du = run(["btrfs", "filesystem", "du", "-s", "--raw", *map(str, snapshots)], timeout=None)
    sizes = {}
    for line in du.stdout.splitlines()[1:]:  # Total Exclusive Set-shared Filename
        fields = line.split(None, 3)
        if len(fields) == 4 and fields[1].isdigit():
            sizes[Path(fields[3])] = int(fields[1])
    return sizes, "du"


def _btrfs_snapshot(ref: str) -> Path | None:
    try:
        return Path(json.loads(ref)["snapshot"])
    except (ValueError, KeyError, TypeError):
        return None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def main(argv: list[str]) -> int:
    """`python -m hs_txupdate.core.space STATE_DIR PLAN`: what `measure_later` runs."""
    try:
        record_space(Config(state_dir=Path(argv[0])), json.loads(argv[1]))
    except (OSError, CommandError):
        return 1  # the figure stays as it was; `status` shows when it was measured
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
