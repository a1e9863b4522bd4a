"""What an increment of a tree lists against its base, and the check that it missed
nothing the tree did while tar ran."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hs_txupdate.snapshot import tar as tar_module
from hs_txupdate.snapshot import tarindex
from hs_txupdate.snapshot.base import Base, SnapshotTarget
from hs_txupdate.snapshot.manifest import (
    build_manifest,
    manifest_fingerprint,
    tree_fingerprint,
    write_manifest,
)
from hs_txupdate.snapshot.tar import TarBackend
from hs_txupdate.snapshot.tardiff import changed_since, holds_changes, member

LATER = 10**9  # a base taken a second after the tree was last touched: no entry is too close


def _tree(root: Path) -> None:
    (root / "d" / "e").mkdir(parents=True)
    for name in ("a", "d/b", "d/e/c"):
        (root / name).write_text(name)
    os.link(root / "a", root / "d" / "a-link")
    (root / "s").symlink_to("a")


def test_an_increment_lists_every_dir_and_each_entry_touched_since_its_base(
    tmp_path: Path,
) -> None:
    root = tmp_path / "app"
    _tree(root)
    base = build_manifest(root, time.time_ns() + LATER)
    listing, _ = changed_since(root, base, time.time_ns(), None)
    assert listing.names == [member(root, r) for r in ("", "d", "d/e")], "dirs only"
    (root / "d" / "b").write_text("rewritten")
    os.chmod(root / "d" / "e" / "c", 0o600)
    os.unlink(root / "d" / "a-link")  # a's link count changes: a itself is listed
    (root / "new").write_text("new")

    listing, _ = changed_since(root, base, time.time_ns(), None)

    changed = {"d/b", "d/e/c", "a", "new"}
    assert set(listing.names) == {member(root, r) for r in ("", "d", "d/e", *changed)}
    assert listing.size == len("rewritten") + len("d/e/c") + len("a") + len("new")


def test_an_entry_changed_while_tar_ran_is_caught(tmp_path: Path) -> None:
    root = tmp_path / "app"
    _tree(root)
    base = build_manifest(root, time.time_ns() + LATER)
    listing, _ = changed_since(root, base, time.time_ns(), None)
    (root / "d" / "b").write_text("written after the listing")  # while tar ran
    taken = build_manifest(root, time.time_ns())

    assert not holds_changes(root, base, taken, set(listing.names))
    assert holds_changes(root, base, taken, {*listing.names, member(root, "d/b")})


def test_the_listing_walk_writes_the_manifest_a_walk_after_it_writes_of_an_unchanged_tree(
    tmp_path: Path,
) -> None:
    """The walk that lists an increment writes the manifest too: byte for byte what
    write_manifest writes of the tree as that walk saw it; the members it listed stay
    `unchanged` until one of them moves (a file of the base does not count: the base
    holds it as the walk saw it)."""
    root = tmp_path / "app"
    _tree(root)
    base = build_manifest(root, time.time_ns() + LATER)
    (root / "d" / "b").write_text("changed before the listing")
    taken = time.time_ns()
    listing, written = changed_since(root, base, taken, tmp_path / "listed")
    _, sha256, fingerprint = write_manifest(root, taken, tmp_path / "walked")

    assert written is not None and written[1:] == (sha256, fingerprint)
    assert (tmp_path / "listed").read_bytes() == (tmp_path / "walked").read_bytes()
    assert fingerprint == manifest_fingerprint(written[0]) == tree_fingerprint(root)
    assert listing.unchanged()
    (root / "a").write_text("a file the increment leaves to its base")
    assert listing.unchanged()
    for change in (
        lambda: os.chmod(root / "d" / "b", 0o600),  # a member: only its ctime moves
        lambda: (root / "d" / "added").write_text(""),  # its directory's ctime moves
        lambda: os.unlink(root / "d" / "e" / "c"),
    ):
        listing, _ = changed_since(root, base, time.time_ns(), None)
        change()
        assert not listing.unchanged()


def test_an_entry_changed_close_to_its_base_is_always_listed(tmp_path: Path) -> None:
    root = tmp_path / "app"
    _tree(root)
    base = build_manifest(root, time.time_ns())  # everything within the ctime margin
    listing, _ = changed_since(root, base, time.time_ns(), None)
    assert member(root, "a") in listing.names and member(root, "s") in listing.names


def test_a_capture_whose_members_moved_while_tar_ran_is_checked_entry_by_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real increment (GNU tar): when no member moved while tar ran, the manifest its
    listing walk wrote is the snapshot's; a member rewritten while tar ran makes the
    capture return none (the caller walks again), and a file of the base rewritten
    then does not (the snapshot holds it as the walk saw it, from the base)."""
    root, snapshots = tmp_path / "app", tmp_path / "snapshots"
    _tree(root)
    os.utime(root / "a", ns=(1, 1))
    backend = TarBackend(snapshots)
    key = "00000000-0000-4000-8000-000000000000"
    first = SnapshotTarget(f"{key}-1", 0, root)
    full = backend.capture(first)
    assert full.manifest is None, "a whole archive's manifest is walked after tar"
    (snapshots / f"{key}-1").mkdir(exist_ok=True)
    manifest, _, _ = write_manifest(root, time.time_ns() + LATER, snapshots / f"{key}-1" / "m")
    base = Base(full, manifest)
    (root / "d" / "b").write_text("a member of every increment from now on")

    def capture(n: int) -> tuple[bool, set[str]]:
        """(whether the listing walk's manifest is the snapshot's, the members)"""
        place = tmp_path / f"m{n}"
        target = SnapshotTarget(f"{key}-{n}", 0, root, base=base, manifest=place)
        captured = backend.capture(target)
        assert captured.base == full.ref, "an increment of the full archive"
        index = tarindex.read_index(Path(captured.ref), captured.checksum or "")
        written = captured.manifest
        kept = written is not None and written[0].file == (place, written[1])
        return kept, {m for m in index.places if m != root.name}

    listed = {member(root, r) for r in ("d", "d/e", "d/b")}
    assert capture(2) == (True, listed)
    real_tar = tar_module._tar

    def rewriting(name: str) -> None:
        def tar(*args: object, **kwargs: object) -> None:
            (root / name).write_text("written while tar ran")
            real_tar(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(tar_module, "_tar", tar)

    rewriting("a")  # left to the base: the snapshot holds it as the walk saw it
    assert capture(3) == (True, listed)
    rewriting("d/b")  # a member
    assert capture(4) == (False, {*listed, member(root, "a"), member(root, "d/a-link")})
