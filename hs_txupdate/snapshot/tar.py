"""The tar backend: one standard (POSIX) tar archive per path, in the state dir.

An operator can inspect or extract the archives by hand in an emergency.
Restores extract into a fresh root-owned staging dir beside the path and put
back only what changed from there.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..base import activity
from ..base.errors import DamagedError
from ..base.fsio import fsync_dir, publish, start_writeback
from ..base.proc import CommandError, run_watched
from .base import Base, Captured, SnapshotTarget
from .entries import STAGE_PREFIX, remove_entry
from .files import recorded_file, remove_file_snapshot, verified_file
from .tardiff import MAX_SHARE, changed_since, member
from .tarindex import (
    PREFIX,
    BadChunk,
    ChunkSums,
    Index,
    base_of,
    index_matches,
    index_path,
    read_index,
    subset,
    whole_ok,
    write_index,
)

# Everything GNU tar can keep: xattrs of every namespace (capabilities, ACLs), sparse files.
_TAR_META = ("--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner")
_WRITEBACK = 8 << 20  # an archive's bytes go to disk while tar goes on, in steps of this


def _tar(
    argv: list[str],
    what: str,
    stdout_to: Callable[[bytes], None] | None = None,
    stdin_from: Iterable[bytes] | None = None,
) -> None:
    """Run tar with `argv`, showing `what` as the activity while it runs (base.activity),
    handing `stdout_to` what it writes to its stdout and writing `stdin_from` to its
    stdin. Raises CommandError when it fails, and what `stdout_to` or `stdin_from`
    raise."""

    def still_going() -> None:
        activity.tick(what)

    try:
        run_watched(
            argv, timeout=math.inf, watch=still_going, stdout_to=stdout_to, stdin_from=stdin_from
        )
    finally:
        activity.end()


def _extract(argv: list[str], target: SnapshotTarget, stdin_from: Iterable[bytes] | None) -> None:
    """Run the tar extraction `argv` of a checksum-verified archive of `target` (given
    `stdin_from`: what tar reads from its input).

    Raises DamagedError when tar fails: the archive is not what hs-tx wrote; what
    `stdin_from` raises.
    """
    try:
        _tar(argv, f"extracting the snapshot of {target.path}", stdin_from=stdin_from)
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
        self._indexes: dict[tuple[Path, str], Index] = {}  # checked, by archive and checksum

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
        the archive durably. With a usable `target.base` (see snapshot.tardiff) only
        what changed since it is archived, unless that is most of it (then the whole
        path is); `Captured.base` says which it was. The walk that lists an increment
        writes the manifest to `target.manifest` (when given), which `Captured.manifest`
        returns when tar read every member as that walk saw it."""
        final = self.archive_path(target)
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fsync_dir(final.parent.parent)
        partial = final.with_name(final.name + ".partial")
        listing_file = final.with_name(final.name + ".list")
        base = self._usable_base(target)
        listing = written = None
        if base is not None:
            listing, written = changed_since(
                target.path, base.manifest, time.time_ns(), target.manifest
            )
            if listing.size > MAX_SHARE * (base.captured.size or 0):
                base = listing = written = None
        try:
            with tempfile.TemporaryFile(dir=final.parent) as sums:
                names = listing.names if listing is not None else None
                self._archive(target.path, partial, listing_file, names, ChunkSums(sums))
                base_line = (base.captured.checksum or "", str(base.captured.ref)) if base else None
                checksum = write_index(sums, listing_file, index_path(final), base_line)
        finally:
            listing_file.unlink(missing_ok=True)
        size = partial.stat().st_size
        publish(partial, final)
        if written is not None and listing is not None and not listing.unchanged():
            written = None  # a member moved while tar ran: the caller walks and checks
        ref = base.captured.ref if base else None
        return Captured(str(final), size, checksum, ref, written)

    def _archive(
        self, path: Path, partial: Path, listing: Path, names: list[str] | None, sums: ChunkSums
    ) -> None:
        """Write the archive of `path` (of only the members `names`, when given) to
        `partial` and tar's list of it to `listing`, its chunk digests to `sums`."""
        members = partial.with_name(partial.name + ".members")
        select = ["--", path.name]
        if names is not None:
            select = _only(names, members)
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
                        start_writeback(out.fileno(), written[1], written[0] - written[1])
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
                        *select,
                    ],
                    f"archiving {path}",
                    keep,
                )
        finally:
            members.unlink(missing_ok=True)
        sums.finish()

    def _usable_base(self, target: SnapshotTarget) -> Base | None:
        """`target.base` when its archive is there, in this journal's snapshots, with a
        checked index that names no base of its own; else None (a full capture)."""
        base = target.base
        if base is None or "\n" in base.captured.ref:
            return None
        try:
            archive = recorded_file(
                base.captured.ref, target, self.archive_path(target), self.snapshots_dir
            )
            usable = archive.is_file() and index_matches(archive, base.captured.checksum or "")
        except (DamagedError, OSError):
            return None
        return base if usable and base_of(archive) is None else None

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
        An incremental archive is extracted over what its base holds of the rest.
        Raises DamagedError when an archive or its index is missing or fails its check."""
        stage = target.path.parent / f"{STAGE_PREFIX}{target.name}"
        if os.path.lexists(stage):
            remove_entry(stage)
        times = os.stat(stage.parent)  # the stage is ours: the parent keeps its times
        os.mkdir(stage, 0o700)
        wanted = None if entries is None else [member(target.path, e) for e in entries]
        try:
            for part in self._parts(target, captured, wanted):
                if part.over is not None:
                    _make_way(stage, part.over)
                self._extract_into(stage, target, part)
            yield stage / target.path.name
        finally:
            remove_entry(stage)
            os.utime(stage.parent, ns=(times.st_atime_ns, times.st_mtime_ns))
            fsync_dir(stage.parent)

    def _parts(
        self, target: SnapshotTarget, captured: Captured, wanted: list[str] | None
    ) -> list[_Part]:
        """What to extract, in order. An incremental archive's base comes first (the
        members wanted that it alone holds, or all); the archive then goes over them,
        setting every directory's times last. Raises DamagedError."""
        if not (captured.checksum or "").startswith(PREFIX):
            return [_Part(captured, wanted)]
        archive = self._recorded(target, captured)
        index = self._index(target, archive, captured, [] if wanted is None else wanted)
        if index.base is None:
            return [_Part(captured, wanted)]
        base = Captured(ref=index.base[1], checksum=index.base[0])
        base_index = self._index(target, self._recorded(target, base), base, [])
        if base_index.base is not None:
            raise _failed(Path(base.ref), target)  # hs-tx never bases on an incremental one
        if wanted is None:  # the whole base, then what changed, over what it replaces
            every = self._index(target, archive, captured, None)
            return [_Part(base, None), _Part(captured, None, every)]
        rest = [n for n in wanted if n not in index.places]
        mine = [n for n in wanted if n in index.places]
        return [p for p in (_Part(base, rest), _Part(captured, mine)) if p.names]

    def _extract_into(self, stage: Path, target: SnapshotTarget, part: _Part) -> None:
        """Check and extract one part into `stage`. Raises DamagedError."""
        captured, names = part.captured, part.names
        archive, spans = self._wanted(target, captured, names)
        members = archive.with_name(f"{archive.name}.members")
        source, select, pieces = f"--file={archive}", [], None
        if spans is not None:  # the checked bytes of those members alone, through a pipe
            source, pieces = "--file=-", subset(archive, *spans)
        elif names is not None:
            select = _only(names, members)
        argv = ["tar", "--extract", source, *_TAR_META, "--same-owner", "--same-permissions"]
        try:
            _extract([*argv, f"--directory={stage}", *select], target, pieces)
        except BadChunk as exc:
            raise _failed(archive, target) from exc
        finally:
            members.unlink(missing_ok=True)

    def _wanted(
        self, target: SnapshotTarget, captured: Captured, names: list[str] | None
    ) -> tuple[Path, tuple[Index, list[tuple[int, int]]] | None]:
        """(the archive, its index and the byte ranges of the members `names`, when the
        index has them all and they do not lie in most of it); else the whole archive
        is checked.
        Raises DamagedError."""
        if names is None or not (captured.checksum or "").startswith(PREFIX):
            return self._check_one(target, captured), None
        archive = self._recorded(target, captured)
        index = self._index(target, archive, captured, names)
        spans = index.spans(names, archive.stat().st_size)
        if spans is None or index.sums is None:
            return self._check_one(target, captured), None  # then tar picks them out
        return archive, (index, spans)

    def check(self, target: SnapshotTarget, captured: Captured) -> Path:
        """The archive, after checking it is there with the recorded checksum (with an
        index: the index, then every chunk of the archive; and so its base's, for an
        incremental one).

        Raises DamagedError otherwise: hs-tx never extracts what it did not write.
        """
        for part in self._parts(target, captured, None):
            self._check_one(target, part.captured)
        return self._recorded(target, captured)

    def _check_one(self, target: SnapshotTarget, captured: Captured) -> Path:
        """One archive, checked as `check` says (its base aside). Raises DamagedError."""
        archive = self._recorded(target, captured)
        if not (captured.checksum or "").startswith(PREFIX):
            return verified_file(archive, captured.checksum, "snapshot archive", target)
        if not whole_ok(archive, self._index(target, archive, captured, [])):
            raise _failed(archive, target)
        return archive

    def _recorded(self, target: SnapshotTarget, captured: Captured) -> Path:
        """The archive the journal recorded, there. Raises DamagedError."""
        archive = recorded_file(captured.ref, target, self.archive_path(target), self.snapshots_dir)
        return verified_file(archive, None, "snapshot archive", target)

    def _index(
        self, target: SnapshotTarget, archive: Path, captured: Captured, names: list[str] | None
    ) -> Index:
        """The archive's index, checked, read for the members `names` (see read_index;
        once for this backend object while it serves them: a restore asks more than
        once). Raises DamagedError when it is missing or fails."""
        key = (archive, captured.checksum or "")
        held = self._indexes.get(key)
        if held is None or not held.answers(names):
            held = read_index(*key, names)
            if held is None:
                raise DamagedError(
                    f"the index {index_path(archive)} of snapshot archive {archive} of"
                    f" {target.path} is missing or fails its checksum",
                    "do not use the archive; restore that path by hand from a backup",
                )
            self._indexes[key] = held
        return held

    def delete(self, target: SnapshotTarget, ref: str | None) -> None:
        """Remove the archive (and a partial one); the per-transaction dir when empty.

        Raises DamagedError when `ref` is not a file of the snapshots dir.
        """
        archive = recorded_file(ref, target, self.archive_path(target), self.snapshots_dir)
        index_path(archive).unlink(missing_ok=True)
        remove_file_snapshot(archive)


@dataclass(frozen=True)
class _Part:
    """One archive to extract: which, its members wanted (None: all), and for an
    increment extracted over its whole base, its index (what it replaces)."""

    captured: Captured
    names: list[str] | None
    over: Index | None = None


def _only(names: list[str], members: Path) -> list[str]:
    """tar's options to take exactly the members `names` (no more below a directory),
    listed in the file `members`, which this writes."""
    members.write_bytes(b"".join(os.fsencode(n) + b"\0" for n in names))
    return ["--no-recursion", "--null", "--verbatim-files-from", f"--files-from={members}"]


def _make_way(stage: Path, index: Index) -> None:
    """Before an increment goes over its whole base in `stage`: remove every entry of
    the base that the increment holds as another kind (a directory become a file, or
    the reverse), which tar would not replace."""
    for name in index.places:
        where = stage / name
        if os.path.lexists(where):
            is_dir = where.is_dir() and not where.is_symlink()
            if is_dir != (name in index.dirs):
                remove_entry(where)


def _failed(archive: Path, target: SnapshotTarget) -> DamagedError:
    return DamagedError(
        f"snapshot archive {archive} of {target.path} fails its checksum",
        "do not use it; restore it by hand from a backup",
    )
