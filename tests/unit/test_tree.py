"""Manifests and diffs of trees (snapshot/manifest.py), folding of scope paths (core/scope.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hs_txupdate.base.errors import DamagedError, ScopeError
from hs_txupdate.core.scope import fold
from hs_txupdate.snapshot import restore as restore_module
from hs_txupdate.snapshot.entries import TMP_PREFIX, walk
from hs_txupdate.snapshot.manifest import (
    CTIME_MARGIN_NS,
    Manifest,
    build_manifest,
    check_reference,
    write_manifest,
)
from hs_txupdate.snapshot.treediff import diff


def populate(root: Path) -> None:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "same.txt").write_bytes(b"original content\n")
    (root / "other.txt").write_text("other\n")
    (root / "sub" / "deep" / "f").write_text("deep\n")
    os.symlink("same.txt", root / "link")
    os.utime(root / "same.txt", ns=(1_000_000_000, 1_500_000_000_123_456_789))


def wait_past_margin(root: Path) -> None:
    """Wait (bounded) until every entry's ctime is older than the manifest's fingerprint margin,
    so the manifest relies on inode and ctime alone."""
    newest = max(os.lstat(p).st_ctime_ns for p in [root, *root.rglob("*")])
    deadline = time.monotonic() + 5
    while time.time_ns() < newest + CTIME_MARGIN_NS + 50_000_000:
        assert time.monotonic() < deadline, "the clock does not advance"
        time.sleep(0.02)


def rewrite_keeping_size_and_mtime(path: Path) -> None:
    st = os.stat(path)
    data = path.read_bytes()
    with open(path, "r+b") as f:
        f.write(bytes(b ^ 0x20 for b in data[:4]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert path.read_bytes() != data


@pytest.fixture(params=["fresh", "settled"])
def manifest_age(request: pytest.FixtureRequest) -> str:
    """fresh: the tree changed just before the manifest (fingerprints); settled: long before."""
    return request.param


def take(root: Path, age: str) -> Manifest:
    if age == "settled":
        wait_past_margin(root)
    # what a snapshot keeps is a manifest file, read as it is compared
    manifest, _sha256, _fingerprint = write_manifest(
        root, time.time_ns(), root.parent / f"{root.name}.manifest"
    )
    return manifest


def test_untouched_tree_has_no_changes(tmp_path: Path, manifest_age: str) -> None:
    populate(tmp_path)
    manifest = take(tmp_path, manifest_age)
    (tmp_path / "same.txt").read_bytes()  # reading is not changing
    os.listdir(tmp_path / "sub")
    changes = diff(tmp_path, manifest)
    assert not changes, changes
    assert changes.count == 0


def test_rewrite_keeping_size_and_mtime_is_detected(tmp_path: Path, manifest_age: str) -> None:
    populate(tmp_path)
    manifest = take(tmp_path, manifest_age)
    rewrite_keeping_size_and_mtime(tmp_path / "same.txt")

    changes = diff(tmp_path, manifest)

    assert changes.changed == ["same.txt"]
    assert changes.extra == [] and changes.missing == []


def test_replace_by_rename_keeping_size_and_mtime_is_detected(
    tmp_path: Path, manifest_age: str
) -> None:
    populate(tmp_path)
    manifest = take(tmp_path, manifest_age)
    st = os.stat(tmp_path / "same.txt")
    tmp = tmp_path / "sub" / "new"
    tmp.write_bytes(b"ORIGINAL content\n")
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, tmp_path / "same.txt")

    changes = diff(tmp_path, manifest)

    assert "same.txt" in changes.changed


def test_metadata_only_changes_are_detected(tmp_path: Path, manifest_age: str) -> None:
    populate(tmp_path)
    manifest = take(tmp_path, manifest_age)
    st = os.stat(tmp_path / "other.txt")
    os.chmod(tmp_path / "other.txt", 0o600 if st.st_mode & 0o777 != 0o600 else 0o644)
    os.setxattr(tmp_path / "sub" / "deep" / "f", "user.note", b"x")

    changes = diff(tmp_path, manifest)

    assert sorted(changes.changed) == ["other.txt", "sub/deep/f"]


def test_created_deleted_and_retyped_entries(tmp_path: Path, manifest_age: str) -> None:
    populate(tmp_path)
    manifest = take(tmp_path, manifest_age)
    (tmp_path / "new.txt").write_text("new")
    (tmp_path / "sub" / "deep" / "f").unlink()
    (tmp_path / "link").unlink()
    (tmp_path / "link").mkdir()

    changes = diff(tmp_path, manifest)

    assert "new.txt" in changes.extra
    assert "sub/deep/f" in changes.missing
    assert "link" in changes.changed
    assert "same.txt" not in changes.changed


def test_absent_and_vanished_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert not diff(root, None)
    root.mkdir()
    assert diff(root, None).extra == [""]
    manifest = build_manifest(root)
    root.rmdir()
    assert diff(root, manifest).missing == [""]


def test_socket_is_refused(tmp_path: Path) -> None:
    import socket

    populate(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sub" / "s"))
        with pytest.raises(ScopeError, match="socket"):
            build_manifest(tmp_path)
    finally:
        sock.close()


# --- fold ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "folded"),
    [
        (["/a/b", "/a"], ["/a"]),
        (["/a/b/c", "/a/b", "/a/b/c/d"], ["/a/b"]),
        (["/a/b", "/a/b/", "/a//b", "/a/./b"], ["/a/b"]),
        (["/a/b", "/a/bc", "/a/b-c"], ["/a/b", "/a/b-c", "/a/bc"]),
        (["/srv/x/y", "/etc/z", "/srv/x"], ["/etc/z", "/srv/x"]),
        (["/a/b/../c", "/a/c/d"], ["/a/c"]),
        ([], []),
    ],
)
def test_fold(given: list[str], folded: list[str]) -> None:
    assert fold(Path(p) for p in given) == [Path(p) for p in folded]


def test_fold_keeps_siblings_with_common_prefix() -> None:
    result = fold([Path("/var/lib/app"), Path("/var/lib/app2"), Path("/var/lib/app/db")])
    assert result == [Path("/var/lib/app"), Path("/var/lib/app2")]


def test_a_snapshot_tree_unlike_its_manifest_is_never_read(tmp_path: Path) -> None:
    """check_reference: a link where the manifest recorded a directory, or another
    type of entry, is damage named before a restore reads anything."""
    live = tmp_path / "live"
    (live / "conf").mkdir(parents=True)
    (live / "conf/app.conf").write_text("v1")
    manifest = build_manifest(live)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "app.conf").write_text("not ours")
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "conf").symlink_to(outside)
    with pytest.raises(DamagedError, match=r"at 'conf' .* found 'l'"):
        check_reference(snap, manifest, {"": "d", "conf": "d", "conf/app.conf": "f"})
    with pytest.raises(DamagedError, match="through a link"):
        check_reference(snap, manifest, {"conf/app.conf": "f"})
    check_reference(live, manifest, None)


def test_a_restore_cut_off_before_its_renames_leaves_no_temp_files_once_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after a batch was built and before it was renamed into place leaves its
    temp files; running the restore again (as recovery does) replaces them."""
    reference, live = tmp_path / "ref", tmp_path / "live"
    for tree in (reference, live):
        populate(tree)
    for rel in ("same.txt", "other.txt", "sub/deep/f"):
        (live / rel).write_text("changed by the run")
    changes = diff(live, build_manifest(reference))

    def crash(*_: object) -> None:
        raise KeyboardInterrupt("cut off")

    monkeypatch.setattr(restore_module, "_put_in_place", crash)
    with pytest.raises(KeyboardInterrupt):
        restore_module.restore(live, reference, changes)
    temps = [p for p in live.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert len(temps) == 4, "the batch was built (every file and the link: other inodes)"
    monkeypatch.undo()
    restore_module.restore(live, reference, diff(live, build_manifest(reference)))

    assert not [p for p in live.rglob("*") if p.name.startswith(TMP_PREFIX)]
    for rel in ("same.txt", "other.txt", "sub/deep/f"):
        assert (live / rel).read_bytes() == (reference / rel).read_bytes()


def test_the_walk_never_follows_a_directory_swapped_for_a_link_meanwhile(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "inner").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "b" / "f").write_text("x")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "secret").mkdir(parents=True)
    seen = []
    walking = walk(root)
    with pytest.raises(OSError):
        for rel, _st in walking:
            seen.append(rel)
            if rel == "a":  # listed as a directory, then replaced before it is entered
                os.rename(root / "a", tmp_path / "old-a")
                os.symlink(elsewhere, root / "a")
    assert "a/secret" not in seen and seen == ["", "a"]
    assert [rel for rel, _ in walk(root)] == ["", "a", "b", "b/f"]
