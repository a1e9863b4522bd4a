"""The tar backend: one standard (POSIX) tar archive per path, in the state dir.

An operator can inspect or extract the archives by hand in an emergency.
Restores extract into a fresh root-owned staging dir beside the path and put
back only what changed from there.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..base import activity
from ..base.errors import DamagedError
from ..base.fsio import fsync_dir, publish
from ..base.proc import CommandError, run_watched
from .base import Captured, SnapshotTarget
from .entries import STAGE_PREFIX, remove_entry
from .tarindex import (
    PREFIX,
    ChunkSums,
    Index,
    index_path,
    read_index,
    whole_ok,
    write_index,
    write_subset,
)

# Everything GNU tar can keep: xattrs of every namespace (capabilities, ACLs), sparse files.
_TAR_META = ("--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner")
_WRITEBACK = 8 << 20  # an archive's bytes go to disk while tar goes on, in steps of this


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing a range of the file `fd` to disk, without waiting
    (so the fsync that publishes the archive finds little left): POSIX_FADV_DONTNEED
    starts writeback of dirty pages and drops the pages already written."""
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def sha256_file(path: Path) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verified_file(path: Path, checksum: str | None, what: str, target: SnapshotTarget) -> Path:
    """`path` (a snapshot file of `target`, called `what` in messages), after checking
    it is there with the recorded checksum. Raises DamagedError otherwise."""
    if not path.is_file():
        raise DamagedError(
            f"{what} {path} of {target.path} is missing",
            "restore it by hand from a backup; the journal cannot repair it",
        )
    if checksum and sha256_file(path) != checksum:
        raise DamagedError(
            f"{what} {path} of {target.path} fails its checksum",
            "do not use it; restore it by hand from a backup",
        )
    return path


def recorded_file(
    ref: str | None, target: SnapshotTarget, fallback: Path, snapshots_dir: Path
) -> Path:
    """The snapshot file a journal row recorded (`fallback`, this run's own name, when
    none was recorded yet), checked to lie in a transaction dir of this journal
    (`snapshots_dir/<journal-uuid>-<txid>/`, or `<txid>/` from before identities)
    that is a real directory.

    Raises DamagedError otherwise: a damaged or crafted row never makes hs-tx read or
    delete a file it did not write.
    """
    path = fallback if ref is None else Path(ref)
    tx_dir = path.parent
    ok = path.is_absolute() and tx_dir.parent == snapshots_dir and ".." not in path.parts
    ok = ok and (tx_dir.name.isdigit() or tx_dir.name.startswith(f"{target.journal}-"))
    ok = ok and not tx_dir.is_symlink()
    if not ok:
        raise DamagedError(
            f"the journal records snapshot file {ref!r}, which is not in {snapshots_dir}",
            "the journal row was damaged or edited; hs-tx will not touch that file",
        )
    return path


def remove_file_snapshot(path: Path) -> None:
    """Remove a snapshot file (and its partial), and its transaction's dir once empty."""
    for each in (path, path.with_name(path.name + ".partial")):
        each.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()
    if path.parent.parent.is_dir():
        fsync_dir(path.parent.parent)


def _tar(argv: list[str], what: str, stdout_to: Callable[[bytes], None] | None = None) -> None:
    """Run tar with `argv`, showing `what` as the activity while it runs (base.activity),
    handing `stdout_to` what it writes to its stdout. Raises CommandError when it fails,
    and what `stdout_to` raises."""

    def still_going() -> None:
        activity.tick(what)

    try:
        run_watched(argv, timeout=math.inf, watch=still_going, stdout_to=stdout_to)
    finally:
        activity.end()


def _extract(argv: list[str], target: SnapshotTarget) -> None:
    """Run the tar extraction `argv` of a checksum-verified archive of `target`.

    Raises DamagedError when tar fails: the archive is not what hs-tx wrote.
    """
    try:
        _tar(argv, f"extracting the snapshot of {target.path}")
    except CommandError as exc:
        raise DamagedError(
            f"the snapshot archive of {target.path} cannot be extracted: {exc}",
            "the archive was replaced or damaged; restore that path by hand",
        ) from exc


class TarBackend:
    """Archives in `snapshots_dir/<journal-uuid>-<txid>/<n>.tar`."""

    name = "tar"
    disposable = True  # the reference is a staging dir extracted for the restore

    def __init__(self, snapshots_dir: Path) -> None:
        self.snapshots_dir = snapshots_dir

    def supports(self, path: Path) -> bool:
        """Tar works on any filesystem."""
        return True

    def required_space(self, path: Path, size: int) -> list[tuple[Path, int]]:
        """The archive in the state dir, and a staging copy beside the path at restore."""
        return [(self.snapshots_dir, size), (path.parent, size)]

    def archive_path(self, target: SnapshotTarget) -> Path:
        """Where the archive of `target` lives."""
        return self.snapshots_dir / target.tx / f"{target.n}.tar"

    def capture(self, target: SnapshotTarget) -> Captured:
        """Archive the path under a temp name, hashing each chunk as tar writes it, write
        its index (see snapshot.tarindex) and record the index's checksum, then publish
        the archive durably."""
        final = self.archive_path(target)
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fsync_dir(final.parent.parent)
        partial = final.with_name(final.name + ".partial")
        listing = final.with_name(final.name + ".list")
        path = target.path
        sums = ChunkSums()
        try:
            with open(partial, "wb", buffering=0) as out:
                written = [0, 0]  # bytes written, bytes handed to writeback

                def keep(data: bytes) -> None:
                    try:
                        out.write(data)
                    except OSError as exc:  # a full disk, most likely: tar is stopped
                        raise CommandError(
                            f"cannot write the snapshot archive {partial}: {exc.strerror}",
                            "free space on that filesystem, or set state_dir to another one",
                        ) from exc
                    sums.update(data)
                    written[0] += len(data)
                    if written[0] - written[1] >= _WRITEBACK:
                        _start_writeback(out.fileno(), written[1], written[0] - written[1])
                        written[1] = written[0]

                _tar(
                    [
                        "tar",
                        "--create",
                        "--file=-",
                        "--format=posix",
                        "--sparse",
                        *_TAR_META,
                        "--one-file-system",
                        "--verbose",
                        "--block-number",
                        f"--index-file={listing}",
                        "--quoting-style=escape",
                        f"--directory={path.parent}",
                        "--",
                        path.name,
                    ],
                    f"archiving {path}",
                    keep,
                )
            checksum = write_index(sums.digests(), listing, index_path(final))
        finally:
            listing.unlink(missing_ok=True)
        size = partial.stat().st_size
        publish(partial, final)
        return Captured(ref=str(final), size=size, checksum=checksum)

    def manifest_root(self, target: SnapshotTarget, captured: Captured) -> Path:
        """The live path: nothing has changed it since it was archived."""
        return target.path

    @contextmanager
    def reference(
        self, target: SnapshotTarget, captured: Captured, entries: list[str] | None = None
    ) -> Iterator[Path]:
        """Extract the archive, or only `entries` (paths relative to the path), into a
        fresh staging dir beside the path and yield the extracted copy of the path;
        what is extracted is checked first: with an index, only the members wanted.
        Raises DamagedError when the archive or its index is missing or fails its check."""
        archive, part = self._wanted(target, captured, entries)
        stage = target.path.parent / f"{STAGE_PREFIX}{target.name}"
        if os.path.lexists(stage):
            remove_entry(stage)
        times = os.stat(stage.parent)  # the stage is ours: the parent keeps its times
        os.mkdir(stage, 0o700)
        members = archive.with_name(f"{target.n}.members")
        subset = archive.with_name(f"{target.n}.subset.tar")
        try:
            source, select = archive, []
            if part is not None:
                if not write_subset(archive, *part, subset):
                    raise _failed(archive, target)
                source = subset
            elif entries is not None:
                names = _names(target, entries)
                members.write_bytes(b"".join(os.fsencode(n) + b"\0" for n in names))
                select = [
                    "--no-recursion",
                    "--null",
                    "--verbatim-files-from",
                    f"--files-from={members}",
                ]
            _extract(
                [
                    "tar",
                    "--extract",
                    f"--file={source}",
                    *_TAR_META,
                    "--same-owner",
                    "--same-permissions",
                    f"--directory={stage}",
                    *select,
                ],
                target,
            )
            yield stage / target.path.name
        finally:
            members.unlink(missing_ok=True)
            subset.unlink(missing_ok=True)
            remove_entry(stage)
            os.utime(stage.parent, ns=(times.st_atime_ns, times.st_mtime_ns))
            fsync_dir(stage.parent)

    def _wanted(
        self, target: SnapshotTarget, captured: Captured, entries: list[str] | None
    ) -> tuple[Path, tuple[Index, list[tuple[int, int]]] | None]:
        """(the archive, its index and the byte ranges of the members `entries` names,
        when the index has them all); the whole archive is checked when not.
        Raises DamagedError."""
        if entries is None or not (captured.checksum or "").startswith(PREFIX):
            return self.check(target, captured), None
        archive = self._recorded(target, captured)
        index = self._index(target, archive, captured)
        spans = index.spans(_names(target, entries), archive.stat().st_size)
        if spans is None:
            return self.check(target, captured), None
        return archive, (index, spans)

    def check(self, target: SnapshotTarget, captured: Captured) -> Path:
        """The archive, after checking it is there with the recorded checksum (with an
        index: the index, then every chunk of the archive).

        Raises DamagedError otherwise: hs-tx never extracts what it did not write.
        """
        archive = self._recorded(target, captured)
        if not (captured.checksum or "").startswith(PREFIX):
            return verified_file(archive, captured.checksum, "snapshot archive", target)
        if not whole_ok(archive, self._index(target, archive, captured)):
            raise _failed(archive, target)
        return archive

    def _recorded(self, target: SnapshotTarget, captured: Captured) -> Path:
        """The archive the journal recorded, there. Raises DamagedError."""
        archive = recorded_file(captured.ref, target, self.archive_path(target), self.snapshots_dir)
        return verified_file(archive, None, "snapshot archive", target)

    def _index(self, target: SnapshotTarget, archive: Path, captured: Captured) -> Index:
        """The archive's index, checked. Raises DamagedError when it is missing or fails."""
        index = read_index(archive, captured.checksum or "")
        if index is None:
            raise DamagedError(
                f"the index {index_path(archive)} of snapshot archive {archive} of"
                f" {target.path} is missing or fails its checksum",
                "do not use the archive; restore that path by hand from a backup",
            )
        return index

    def delete(self, target: SnapshotTarget, ref: str | None) -> None:
        """Remove the archive (and a partial one); the per-transaction dir when empty.

        Raises DamagedError when `ref` is not a file of the snapshots dir.
        """
        archive = recorded_file(ref, target, self.archive_path(target), self.snapshots_dir)
        index_path(archive).unlink(missing_ok=True)
        remove_file_snapshot(archive)


def _names(target: SnapshotTarget, entries: list[str]) -> list[str]:
    """The archive's member names of `entries` (paths relative to the path)."""
    return [os.path.join(target.path.name, rel) if rel else target.path.name for rel in entries]


def _failed(archive: Path, target: SnapshotTarget) -> DamagedError:
    return DamagedError(
        f"snapshot archive {archive} of {target.path} fails its checksum",
        "do not use it; restore it by hand from a backup",
    )
