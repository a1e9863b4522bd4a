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
    names, size, _ = changed_since(root, base)
    assert names == [member(root, r) for r in ("", "d", "d/e")], "dirs only: nothing changed"
    (root / "d" / "b").write_text("rewritten")
    os.chmod(root / "d" / "e" / "c", 0o600)
    os.unlink(root / "d" / "a-link")  # a's link count changes: a itself is listed
    (root / "new").write_text("new")

    names, size, _ = changed_since(root, base)

    changed = {"d/b", "d/e/c", "a", "new"}
    assert set(names) == {member(root, r) for r in ("", "d", "d/e", *changed)}
    assert size == len("rewritten") + len("d/e/c") + len("a") + len("new")


def test_an_entry_changed_while_tar_ran_is_caught(tmp_path: Path) -> None:
    root = tmp_path / "app"
    _tree(root)
    base = build_manifest(root, time.time_ns() + LATER)
    names, _, _ = changed_since(root, base)
    (root / "d" / "b").write_text("written after the listing")  # while tar ran
    taken = build_manifest(root, time.time_ns())

    assert not holds_changes(root, base, taken, set(names))
    assert holds_changes(root, base, taken, {*names, member(root, "d/b")})


def test_the_listing_walk_matches_a_manifest_taken_after_it_only_if_nothing_changed(
    tmp_path: Path,
) -> None:
    """The fingerprint of the listing walk lets a capture skip holds_changes: it must
    equal the one of a manifest taken after tar ran exactly when no entry changed."""
    root = tmp_path / "app"
    _tree(root)
    base = build_manifest(root, time.time_ns() + LATER)
    (root / "d" / "b").write_text("changed before the listing")
    _, _, walked = changed_since(root, base)
    assert (
        walked
        == manifest_fingerprint(build_manifest(root, time.time_ns()))
        == tree_fingerprint(root)
    )
    for change in (
        lambda: os.chmod(root / "a", 0o600),  # only its ctime moves
        lambda: (root / "d" / "added").write_text(""),
        lambda: os.unlink(root / "d" / "e" / "c"),
    ):
        change()
        assert manifest_fingerprint(build_manifest(root, time.time_ns())) != walked
        _, _, walked = changed_since(root, base)


def test_an_entry_changed_close_to_its_base_is_always_listed(tmp_path: Path) -> None:
    root = tmp_path / "app"
    _tree(root)
    base = build_manifest(root, time.time_ns())  # everything within the ctime margin
    names, _, _ = changed_since(root, base)
    assert member(root, "a") in names and member(root, "s") in names


def test_a_capture_whose_tree_changed_while_tar_ran_is_checked_entry_by_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real increment (GNU tar): when nothing moved while tar ran, the listing walk's
    fingerprint is the manifest's and the entry-by-entry check is skipped; a file
    rewritten while tar ran (one the increment leaves to its base) makes them differ,
    and the check finds the increment misses it."""
    root, snapshots = tmp_path / "app", tmp_path / "snapshots"
    _tree(root)
    os.utime(root / "a", ns=(1, 1))
    backend = TarBackend(snapshots)
    key = "00000000-0000-4000-8000-000000000000"
    first = SnapshotTarget(f"{key}-1", 0, root)
    full = backend.capture(first)
    (snapshots / f"{key}-1").mkdir(exist_ok=True)
    manifest, _, _ = write_manifest(root, time.time_ns() + LATER, snapshots / f"{key}-1" / "m")
    base = Base(full, manifest)

    def capture(n: int) -> tuple[bool, bool]:
        target = SnapshotTarget(f"{key}-{n}", 0, root, base=base)
        captured = backend.capture(target)
        assert captured.base == full.ref, "an increment of the full archive"
        taken, _, fingerprint = write_manifest(root, time.time_ns(), tmp_path / f"m{n}")
        holds = holds_changes(root, manifest, taken, set(tarindex.read_index(
            Path(captured.ref), captured.checksum or "").places))  # fmt: skip
        return captured.walked == fingerprint, holds

    assert capture(2) == (True, True)
    real_tar = tar_module._tar

    def rewriting_tar(*args: object, **kwargs: object) -> None:
        (root / "d" / "b").write_text("written while tar ran")
        real_tar(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tar_module, "_tar", rewriting_tar)
    assert capture(3) == (False, False)
