"""The check after a restore (snapshot/restored.py): every entry put back is read again
and compared with the snapshot's, so a restore that returns was seen to be exact, and
one that something disturbed is refused, naming the entry and what differs."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hs_txupdate.base.errors import DamagedError
from hs_txupdate.snapshot import restore as restore_module
from hs_txupdate.snapshot import sqlite as sqlite_module
from hs_txupdate.snapshot.base import SnapshotTarget
from hs_txupdate.snapshot.manifest import Manifest, build_manifest
from hs_txupdate.snapshot.restored import Seen
from hs_txupdate.snapshot.sqlite import SqliteBackend
from hs_txupdate.snapshot.treediff import diff
from tests.helpers import LoopFs


def populate(root: Path) -> None:
    """A tree with each kind of entry a module leaves in /etc or /opt."""
    (root / "conf.d").mkdir(parents=True)
    (root / "app.conf").write_text("port = 80\n")
    os.setxattr(root / "app.conf", "user.origin", b"package")
    (root / "conf.d" / "10-site.conf").write_text("site\n")
    os.chmod(root / "conf.d", 0o750)
    os.symlink("app.conf", root / "current")
    os.link(root / "app.conf", root / "conf.d" / "app-link.conf")
    os.mkfifo(root / "ctl")
    os.utime(root / "app.conf", ns=(1_000_000_000, 1_600_000_000_123_456_789))


def run_changes(live: Path) -> None:
    """What a failing module run did: rewrote, retyped, removed, added."""
    (live / "app.conf").write_text("port = 8080\n")
    (live / "current").unlink()
    (live / "current").write_text("now a file\n")
    shutil.rmtree(live / "conf.d")
    (live / "new.conf").write_text("added by the run\n")
    os.chmod(live / "ctl", 0o600)


@pytest.fixture(params=[False, True], ids=["kept-reference", "disposable-reference"])
def disposable(request: pytest.FixtureRequest) -> bool:
    """A btrfs snapshot is read and kept; a tar extraction is moved into place."""
    return bool(request.param)


def trees(tmp_path: Path) -> tuple[Path, Path, Manifest]:
    """(reference, live, manifest): the live tree as snapshotted, a copy of it keeping
    everything (`cp -a`, as a snapshot does), then the run's changes to the live tree."""
    reference, live = tmp_path / "ref", tmp_path / "live"
    populate(live)
    subprocess.run(["cp", "-a", live, reference], check=True)
    manifest = build_manifest(live)
    run_changes(live)
    return reference, live, manifest


def test_an_exact_restore_is_checked_and_says_how_many_entries(
    tmp_path: Path, disposable: bool
) -> None:
    reference, live, manifest = trees(tmp_path)
    expected = {rel: Seen.of(reference / rel) for rel in ("app.conf", "current", "ctl", "conf.d")}
    changes = diff(live, manifest)

    checked = restore_module.restore(live, reference, changes, disposable=disposable)

    assert checked == changes.count == 8  # '', app.conf, conf.d, its 2 files, current, ctl, new
    for rel, seen in expected.items():
        assert Seen.of(live / rel) == seen
    assert not (live / "new.conf").exists()
    assert (live / "conf.d" / "app-link.conf").stat().st_ino == (live / "app.conf").stat().st_ino


Disturb = Callable[[Path], object]


def _rewrite_keeping_size_and_mtime(path: Path) -> None:
    st = os.stat(path)
    with open(path, "r+b") as f:
        head = f.read(4)
        f.seek(0)
        f.write(bytes(b ^ 0x20 for b in head))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


DISTURBANCES: dict[str, tuple[str, Disturb]] = {
    "chmod": ("its mode is 0o600, the snapshot's 0o644", lambda p: p.chmod(0o600)),
    "chown": ("its uid is 4242, the snapshot's 0", lambda p: os.chown(p, 4242, -1)),
    "rewritten": ("its mtime", lambda p: p.write_text("port = 9090\n")),
    "xattr set": (
        r"its extended attributes is \[user.extra, user.origin\]",
        lambda p: os.setxattr(p, "user.extra", b"1"),
    ),
    "deleted": ("it is missing", lambda p: p.unlink()),
}


@pytest.mark.parametrize("how", sorted(DISTURBANCES))
def test_an_entry_changed_once_in_place_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disposable: bool, how: str
) -> None:
    """Something writes the file right after the restore renamed it into place."""
    reference, live, manifest = trees(tmp_path)
    message, disturb = DISTURBANCES[how]
    put_in_place = restore_module._put_in_place

    def then_disturbed(at: Path, state: restore_module._RestoreState) -> None:
        put_in_place(at, state)
        disturb(live / "app.conf")

    monkeypatch.setattr(restore_module, "_put_in_place", then_disturbed)
    changes = diff(live, manifest)
    with pytest.raises(DamagedError) as caught:
        restore_module.restore(live, reference, changes, disposable=disposable)
    assert f"{live / 'app.conf'} is not what its snapshot holds: " in str(caught.value)
    assert re.search(message, str(caught.value)), str(caught.value)


def test_bytes_changed_keeping_size_and_mtime_are_found_in_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy (or reflink) of a kept reference is compared byte for byte."""
    reference, live, manifest = trees(tmp_path)
    put_in_place = restore_module._put_in_place

    def then_disturbed(at: Path, state: restore_module._RestoreState) -> None:
        put_in_place(at, state)
        _rewrite_keeping_size_and_mtime(live / "app.conf")

    monkeypatch.setattr(restore_module, "_put_in_place", then_disturbed)
    with pytest.raises(DamagedError, match="its bytes are not the snapshot's"):
        restore_module.restore(live, reference, diff(live, manifest))


def test_an_entry_the_restore_failed_to_remove_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, live, manifest = trees(tmp_path)
    remove = restore_module.remove_entry
    monkeypatch.setattr(
        restore_module, "remove_entry", lambda p: None if p.name == "new.conf" else remove(p)
    )
    with pytest.raises(DamagedError, match=r"new.conf is not what .* still there"):
        restore_module.restore(live, reference, diff(live, manifest))


def test_a_directory_whose_times_were_not_put_back_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, live, manifest = trees(tmp_path)
    os.utime(reference, ns=(1, 1_500_000_000_000_000_000))
    apply_metadata = restore_module.apply_metadata

    def files_only(source: Path, dest: Path, *given: Any) -> None:
        if dest != live:
            apply_metadata(source, dest, *given)

    monkeypatch.setattr(restore_module, "apply_metadata", files_only)
    with pytest.raises(DamagedError, match=rf"{live} is not .*: its mtime \(ns\) is"):
        restore_module.restore(live, reference, diff(live, manifest))


def test_a_path_that_was_absent_is_checked_gone(tmp_path: Path) -> None:
    live = tmp_path / "created-by-the-run"
    (live / "sub").mkdir(parents=True)
    assert restore_module.restore(live, None, diff(live, None)) == 1
    assert not live.exists()
    assert restore_module.restore(live, None, diff(live, None)) == 0


def _database(path: Path, rows: int, journal_mode: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA journal_mode={journal_mode}")
        db.execute("CREATE TABLE IF NOT EXISTS t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    db.close()


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_a_restored_database_is_read_back_and_compared_with_its_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal_mode: str
) -> None:
    live = tmp_path / "app.db"
    _database(live, 1000, journal_mode)
    backend = SqliteBackend(tmp_path / "snapshots")
    target = SnapshotTarget("j-1", 1, live)
    captured = backend.capture(target)
    _database(live, 500, journal_mode)  # the run's writes

    backend.restore(target, captured)
    with sqlite3.connect(live) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone() == (1000,)
    db.close()
    assert sorted(p.name for p in (tmp_path / "snapshots" / "j-1").iterdir()) == ["1.sqlite"]

    copy_database = sqlite_module.copy_database

    def restored_then_written(source: Path, dest: Path, immutable: bool = False) -> None:
        copy_database(source, dest, immutable)
        if Path(dest) == live:
            _database(live, 1, journal_mode)

    monkeypatch.setattr(sqlite_module, "copy_database", restored_then_written)
    with pytest.raises(DamagedError, match=f"the database {live} is not its copy"):
        backend.restore(target, captured)
    assert sorted(p.name for p in (tmp_path / "snapshots" / "j-1").iterdir()) == ["1.sqlite"]


def test_on_btrfs_a_reflinked_file_is_checked_by_where_its_blocks_lie(
    make_loopfs: Callable[..., LoopFs], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file put back as a reflink of its snapshot's maps the same blocks, so the check
    reads neither (no data from disk); one rewritten meanwhile maps new ones and is read."""
    base = make_loopfs("btrfs", 256).mount
    subprocess.run(["btrfs", "-q", "subvolume", "create", base / "live"], check=True)
    live = base / "live"
    for n in range(3):
        (live / f"f{n}").write_bytes(bytes([n]) * 200_000)
    manifest = build_manifest(live)
    subprocess.run(["btrfs", "-q", "subvolume", "snapshot", "-r", live, base / "snap"], check=True)
    for n in range(3):
        (live / f"f{n}").write_bytes(b"run" * 66_667)
    changes = diff(live, manifest)  # (what changed within the manifest's margin is read)
    reads = []
    real_read = os.read

    def counted(fd: int, n: int) -> bytes:
        reads.append(fd)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counted)
    restore_module.restore(live, base / "snap", changes)
    assert reads == [], "each file maps its snapshot's blocks: nothing was read"

    put_in_place = restore_module._put_in_place

    def then_disturbed(at: Path, state: restore_module._RestoreState) -> None:
        put_in_place(at, state)
        _rewrite_keeping_size_and_mtime(live / "f1")

    monkeypatch.setattr(restore_module, "_put_in_place", then_disturbed)
    (live / "f1").write_bytes(b"again")
    changes = diff(live, manifest)
    with pytest.raises(DamagedError, match=r"f1 is not .*: its bytes are not the snapshot's"):
        restore_module.restore(live, base / "snap", changes)
    assert reads, "the rewritten file was read"


def test_a_restore_in_small_batches_is_exact_and_says_each_batch_done_once_synced(
    tmp_path: Path, disposable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, live, manifest = trees(tmp_path)
    expected = {rel: Seen.of(reference / rel) for rel in ("app.conf", "current", "ctl", "conf.d")}
    said: list[tuple[str, list[str]]] = []
    syncs = []
    sync = restore_module._sync
    monkeypatch.setattr(restore_module, "_sync", lambda live: (syncs.append(len(said)), sync(live)))

    restore_module.restore(
        live,
        reference,
        diff(live, manifest),
        lambda status, rels: said.append((status, rels)),
        batch_size=2,
        disposable=disposable,
    )

    for rel, seen in expected.items():
        assert Seen.of(live / rel) == seen
    intents = [rels for status, rels in said if status == "intent"]
    assert sorted(rels for status, rels in said if status == "done") == sorted(intents)
    assert len(intents) > 3
    for n, (status, rels) in enumerate(said):  # done only after a sync that follows its intent
        if status == "done":
            began = said.index(("intent", rels))
            assert any(began < at <= n for at in syncs), (rels, said, syncs)


def test_a_failed_check_waits_for_the_sync_it_ran_beside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = []
    monkeypatch.setattr(restore_module, "_sync", lambda live: (time.sleep(0.2), synced.append(1)))

    def damaged() -> None:
        raise DamagedError("after the restore, x is not what its snapshot holds", "")

    with pytest.raises(DamagedError):
        restore_module._sync_checking(tmp_path, [lambda: None, damaged])
    assert synced == [1]  # the sync had ended when the check's failure came out


def test_a_failed_sync_is_raised_once_the_checks_pass(tmp_path: Path) -> None:
    checked = []
    gone = tmp_path / "no" / "such" / "dir"  # nothing to open: syncfs fails
    with pytest.raises(FileNotFoundError):
        restore_module._sync_checking(gone, [lambda: checked.append(1)])
    assert checked == [1]


def test_where_no_thread_can_start_the_sync_and_checks_run_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in a StateManager restore while the write audit's pid namespace takes the
    children (tests/integration/test_coverage.py restores there for real)."""
    reference, live, manifest = trees(tmp_path)

    def refused(self: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(restore_module.threading.Thread, "start", refused)
    assert restore_module.restore(live, reference, diff(live, manifest)) == 8
    assert Seen.of(live / "app.conf") == Seen.of(reference / "app.conf")
