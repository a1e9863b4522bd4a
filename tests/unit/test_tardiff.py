"""What an increment of a tree lists against its base, and the check that it missed
nothing the tree did while tar ran."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hs_txupdate.snapshot.manifest import build_manifest
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
    names, size = changed_since(root, base)
    assert names == [member(root, r) for r in ("", "d", "d/e")], "dirs only: nothing changed"
    (root / "d" / "b").write_text("rewritten")
    os.chmod(root / "d" / "e" / "c", 0o600)
    os.unlink(root / "d" / "a-link")  # a's link count changes: a itself is listed
    (root / "new").write_text("new")

    names, size = changed_since(root, base)

    changed = {"d/b", "d/e/c", "a", "new"}
    assert set(names) == {member(root, r) for r in ("", "d", "d/e", *changed)}
    assert size == len("rewritten") + len("d/e/c") + len("a") + len("new")


def test_an_entry_changed_while_tar_ran_is_caught(tmp_path: Path) -> None:
    root = tmp_path / "app"
    _tree(root)
    base = build_manifest(root, time.time_ns() + LATER)
    names, _ = changed_since(root, base)
    (root / "d" / "b").write_text("written after the listing")  # while tar ran
    taken = build_manifest(root, time.time_ns())

    assert not holds_changes(root, base, taken, set(names))
    assert holds_changes(root, base, taken, {*names, member(root, "d/b")})


def test_an_entry_changed_close_to_its_base_is_always_listed(tmp_path: Path) -> None:
    root = tmp_path / "app"
    _tree(root)
    base = build_manifest(root, time.time_ns())  # everything within the ctime margin
    names, _ = changed_since(root, base)
    assert member(root, "a") in names and member(root, "s") in names
