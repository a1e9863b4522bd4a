"""A manifest file is written and compared with the tree a piece at a time, in the
walk's order, and checked against its recorded checksum as it is read."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from hs_txupdate.base.errors import DamagedError
from hs_txupdate.snapshot import manifest as manifest_module
from hs_txupdate.snapshot.manifest import (
    Changes,
    Manifest,
    aligned,
    build_manifest,
    manifest_fingerprint,
    needed_entries,
    read_manifest,
    tree_fingerprint,
    write_manifest,
)
from hs_txupdate.snapshot.treediff import diff

# names a line-based file must keep exact, and names that sort differently part by
# part than as whole paths ("a" < "a b" < "a.c" < "a/b" by parts, not as strings)
NAMES = ["a", "a b", "a.c", " lead", "new\nline", "back\\slash", "\\n", "ünï", "x-"]


def _tree(root: Path) -> None:
    for name in NAMES:
        (root / name).mkdir(parents=True)
        (root / name / "f").write_text(name)
        (root / name / "a").mkdir()
        (root / name / "a" / "g").write_text("g")
    (root / os.fsdecode(b"bad\xff")).write_text("not UTF-8")
    os.symlink("a", root / "link")


def _file(root: Path, taken: int | None = None) -> tuple[Manifest, str, str]:
    return write_manifest(root, taken or time.time_ns(), root.parent / f"{root.name}.manifest")


def test_a_manifest_file_holds_what_a_walk_records(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _tree(root)
    taken = time.time_ns() + 10**9  # nothing within the ctime margin: no fingerprints
    manifest, sha256, fingerprint = _file(root, taken)
    in_memory = build_manifest(root, taken)
    assert list(manifest.items()) == list(in_memory.entries.items())
    assert fingerprint == manifest_fingerprint(in_memory) == tree_fingerprint(root)
    path = root.parent / "t.manifest"
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    again = read_manifest(path, sha256)
    assert again.taken_ns == taken and list(again.items()) == list(in_memory.entries.items())
    assert path.read_bytes().startswith(b"hs-tx manifest 2 %d\nd " % taken)


def test_a_diff_against_a_file_finds_what_one_in_memory_finds(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _tree(root)
    manifest, _, _ = _file(root)
    in_memory = build_manifest(root, manifest.taken_ns)
    rng = random.Random(7)
    for name in rng.sample(NAMES, 4):
        (root / name / "f").write_text("changed")
    for name in rng.sample(NAMES, 3):
        (root / name / "a" / "g").unlink()
    for name in rng.sample(NAMES, 3):
        (root / name / "a" / "new").write_text("new")
    (root / "a.c" / "a").rename(root / "a.c" / "a b")
    (root / "zz").mkdir()

    changes = diff(root, manifest)

    expected = diff(root, in_memory)
    assert changes == expected and changes.extra and changes.missing and changes.changed
    assert needed_entries(changes) == _needed_from(changes, manifest)


def _needed_from(changes: Changes, manifest: Manifest) -> dict[str, str] | None:
    """What a restore of `changes` reads, worked out the long way: every changed or
    missing entry, its ancestors and the ancestors of every differing entry's parent,
    with the type the manifest file records, where it records them."""
    touched = {*changes.changed, *changes.missing}
    wanted = {""}
    for rel in (*touched, *changes.extra):
        parts = rel.split("/")
        wanted.update("/".join(parts[:n]) for n in range(1, len(parts) + (rel in touched)))
    found = {rel: entry for rel, entry in manifest.items() if rel in wanted}
    if any(found[rel][0] == "f" and found[rel][4] > 1 for rel in touched):
        return None
    return {rel: found[rel][0] for rel in sorted(found, key=lambda r: (r.count("/"), r))}


@pytest.mark.parametrize("narrow", ["", "a b", "new dir", "inside"])
def test_what_a_restore_reads_is_what_the_manifest_records_of_it(
    tmp_path: Path, narrow: str
) -> None:
    root = tmp_path / "t"
    _tree(root)
    os.link(root / "a" / "a" / "g", root / "a" / "linked")
    manifest, _, _ = _file(root)
    (root / "new dir" / "deeper").mkdir(parents=True)  # new dirs in new dirs
    (root / "new dir" / "deeper" / "f").write_text("new")
    (root / "a b" / "f").unlink()  # a file that became a directory holding a new file
    (root / "a b" / "f").mkdir()
    (root / "a b" / "f" / "inside").write_text("new")
    (root / "a.c" / "a" / "g").unlink()  # a directory gone with what it held
    (root / "a.c" / "a").rmdir()
    (root / "ünï" / "a" / "g").write_text("changed")
    changes = diff(root, manifest)
    if narrow:  # a part of the scope, as an undo of one path or a system scope narrows it
        changes = changes.where(lambda r: narrow in r and r != narrow)
    assert needed_entries(changes) == _needed_from(changes, manifest)
    (root / "a" / "a" / "g").write_text("changed through one of two links")
    changes = diff(root, manifest)
    assert needed_entries(changes) is None is _needed_from(changes, manifest)


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_a_manifest_file_that_fails_its_checksum_fails_whatever_reads_it(
    tmp_path: Path, damage: str
) -> None:
    root = tmp_path / "t"
    _tree(root)
    manifest, _, _ = _file(root)
    path = root.parent / "t.manifest"
    data = bytearray(path.read_bytes())
    if damage == "flip":  # an inode number one digit off: still a well-formed file
        at = data.index(b"\n") + 3
        data[at] = ord("0") if data[at] != ord("0") else ord("1")
    elif damage == "truncate":
        del data[len(data) // 2 :]
    else:
        data += b"f 1 1 1 - planted\n"
    path.write_bytes(bytes(data))
    for read in (
        lambda: diff(root, manifest),
        lambda: list(manifest.items()),
    ):
        with pytest.raises(DamagedError, match=r"manifest .* (fails its checksum|is not)"):
            read()


def test_a_manifest_of_an_earlier_version_is_still_read(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _tree(root)
    old = build_manifest(root)
    path = tmp_path / "old.manifest"
    path.write_bytes(old.to_bytes())
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_manifest(path, sha256).entries == old.entries
    with pytest.raises(DamagedError, match="fails its checksum"):
        read_manifest(path, "0" * 64)
    (root / "a" / "f").write_text("changed")
    assert diff(root, read_manifest(path, sha256)).changed == ["a/f"]


def test_aligned_pairs_two_walk_ordered_lists_in_order() -> None:
    rng = random.Random(3)
    parts = ["a", "a b", "a.c", "b", "a-"]
    every = sorted(
        {"/".join(rng.choice(parts) for _ in range(rng.randint(1, 3))) for _ in range(200)},
        key=lambda r: r.split("/"),
    )
    for _ in range(50):
        mine = [r for r in every if rng.random() < 0.7]
        theirs = [r for r in every if rng.random() < 0.7]
        got = list(aligned(((r, r) for r in mine), ((r, (r,)) for r in theirs)))  # type: ignore[misc]
        assert [r for r, _, _ in got] == sorted(set(mine) | set(theirs), key=lambda r: r.split("/"))
        assert all(
            (a is not None) == (r in mine) and (b is not None) == (r in theirs) for r, a, b in got
        )


def test_a_manifest_file_read_in_small_pieces_reads_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "t"
    _tree(root)
    manifest, _, _ = _file(root)
    whole = list(manifest.items())
    monkeypatch.setattr(manifest_module, "_PIECE", 7)  # every line spans pieces
    assert list(manifest.items()) == whole and len(whole) > 30
