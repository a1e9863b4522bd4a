"""A snapshot belongs to one transaction of one journal: checked before every restore
and delete, never touched by another journal, and an orphan only by explicit prune."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import LoopFs, Sandbox, sh


def _btrfs_sandbox(make_loopfs: Callable[..., LoopFs], *names: str) -> list[Sandbox]:
    """Sandboxes sharing one loop-mounted btrfs (one subvolume, one snapshot store)."""
    fs = make_loopfs("btrfs", 320)
    return [Sandbox(fs.mount / name).create() for name in names]


def _failing_writer(sbx: Sandbox, text: str) -> None:
    """Module `w` writes `text` into data/f, then fails (the run rolls back)."""
    sbx.module(
        "w",
        f"""
        def main(args):
            open({str(sbx.data / "f")!r}, "w").write({text!r})
            return {{"success": False}}
        """,
        backup_paths=[sbx.data],
    )


def _snapshot_of(sbx: Sandbox, tx_id: int) -> Path:
    """The btrfs snapshot subvolume holding data/ of `tx_id`."""
    paths = sbx.journal_json(tx_id)["paths"]
    ref = next(p for p in paths if p["path"] == str(sbx.data))
    return Path(json.loads(ref["snapshot"])["snapshot"])


def _tamper(snapshot: Path, how: str) -> None:
    if how == "replaced":  # same name, another subvolume in its place
        sh("btrfs", "subvolume", "delete", snapshot)
        sh("btrfs", "subvolume", "create", snapshot)
        return
    sh("btrfs", "property", "set", snapshot, "ro", "false")
    if how == "edited":
        f = next(snapshot.rglob("data/f"))
        f.write_text("planted")
        sh("btrfs", "property", "set", snapshot, "ro", "true")
    sh("btrfs", "filesystem", "sync", snapshot)


@pytest.mark.parametrize("how", ["edited", "writable", "replaced"])
def test_a_changed_btrfs_snapshot_is_neither_restored_nor_deleted(
    make_loopfs: Callable[..., LoopFs], how: str
) -> None:
    (sbx,) = _btrfs_sandbox(make_loopfs, "sbx")
    sbx.writer_module()
    assert sbx.hs_tx("update").returncode == 0
    snapshot = _snapshot_of(sbx, 1)
    assert snapshot.name == f"{sbx.tx_key(1)}-0"
    _tamper(snapshot, how)

    undo = sbx.hs_tx("undo", "1")

    assert undo.returncode == 3, undo.stderr
    assert "is not the one recorded" in undo.stderr
    want = {"edited": "last changed", "writable": "read-only", "replaced": "UUID"}[how]
    assert want in undo.stderr
    assert (sbx.data / "f").read_text() == "after", "nothing may change"
    assert [t["id"] for t in json.loads(sbx.hs_tx("history", "--json").stdout)] == [1]

    # retention refuses to delete it too, and says so; the next run still commits
    sbx.keep = 1
    sbx.write_config()
    (sbx.data / "f").write_text("before")
    again = sbx.hs_tx("update")
    assert again.returncode == 0, again.stderr
    assert "is not the one recorded" in again.stderr
    assert snapshot.exists()
    assert sbx.journal_json(1)["paths"][0]["pruned_at"] is None


def test_a_balance_does_not_make_a_snapshot_look_changed(
    make_loopfs: Callable[..., LoopFs],
) -> None:
    """A balance rewrites where a snapshot's metadata lies (its generation moves);
    the snapshot is still the one recorded, and undo uses it."""
    (sbx,) = _btrfs_sandbox(make_loopfs, "sbx")
    sbx.writer_module()
    assert sbx.hs_tx("update").returncode == 0
    snapshot = _snapshot_of(sbx, 1)
    before = sh("btrfs", "subvolume", "show", snapshot).stdout
    sh("btrfs", "balance", "start", "--full-balance", sbx.root.parent)
    after = sh("btrfs", "subvolume", "show", snapshot).stdout
    generation = [line for line in before.splitlines() if "Generation:" in line]
    assert generation != [line for line in after.splitlines() if "Generation:" in line]

    undo = sbx.hs_tx("undo", "1")

    assert undo.returncode == 0, undo.stderr
    assert (sbx.data / "f").read_text() == "before"


def test_a_journal_moved_aside_never_meets_its_old_snapshots(
    make_loopfs: Callable[..., LoopFs],
) -> None:
    (sbx,) = _btrfs_sandbox(make_loopfs, "sbx")
    sbx.writer_module()
    assert sbx.hs_tx("update").returncode == 0
    old_key, old_snapshot = sbx.tx_key(1), _snapshot_of(sbx, 1)
    for path in sbx.state.glob("journal.db*"):  # as the hint for an unreadable journal says
        path.rename(path.with_name(path.name + ".broken"))
    (sbx.data / "f").write_text("operator's edit")
    _failing_writer(sbx, "half an update")

    failed = sbx.hs_tx("update")

    assert failed.returncode == 1, failed.stderr
    assert sbx.tx_key(1) != old_key
    assert (sbx.data / "f").read_text() == "operator's edit", "restored from its own snapshot"
    assert old_snapshot.is_dir() and (old_snapshot / "sbx/data/f").read_text() == "before"

    status = sbx.hs_tx("status", "--json")
    orphans = {o["path"]: o for o in json.loads(status.stdout)["orphan_snapshots"]}
    assert set(orphans) == {str(old_snapshot)}  # its manifest was in the old journal
    assert "was replaced by another" in orphans[str(old_snapshot)]["why"]
    assert "ORPHANED SNAPSHOT" in sbx.hs_tx("status").stdout

    pruned = sbx.hs_tx("prune", "--orphans")

    assert pruned.returncode == 0, pruned.stderr
    assert not old_snapshot.exists() and not (sbx.state / "snapshots" / old_key).exists()
    assert json.loads(sbx.hs_tx("status", "--json").stdout)["orphan_snapshots"] == []
    history = json.loads(sbx.hs_tx("history", "--json").stdout)
    assert history[0]["kind"] == "prune" and history[0]["state"] == "committed"
    again = sbx.hs_tx("prune", "--orphans")
    assert again.returncode == 0 and "no orphaned snapshots" in again.stderr
    assert sbx.hs_tx("prune").returncode == 2


def test_two_state_dirs_on_one_subvolume_keep_to_their_own_snapshots(
    make_loopfs: Callable[..., LoopFs],
) -> None:
    a, b = _btrfs_sandbox(make_loopfs, "a", "b")
    a.writer_module()
    b.writer_module()
    assert a.hs_tx("update").returncode == 0
    a_snapshot = _snapshot_of(a, 1)
    (b.data / "f").write_text("b's own")
    _failing_writer(b, "half of b")
    b.keep = 1
    b.write_config()

    assert b.hs_tx("update").returncode == 1  # rolls back, deletes its own snapshots
    b.writer_module()
    for _ in range(2):  # commits, and retention prunes b's older snapshots
        (b.data / "f").write_text("before")
        assert b.hs_tx("update").returncode == 0

    assert (b.data / "f").read_text() == "after"
    assert a_snapshot.is_dir(), "b never deletes a's snapshots"
    for sbx in (a, b):
        assert json.loads(sbx.hs_tx("status", "--json").stdout)["orphan_snapshots"] == []
    assert "no orphaned snapshots" in b.hs_tx("prune", "--orphans").stderr
    assert a_snapshot.is_dir()
    undo = a.hs_tx("undo", "1")
    assert undo.returncode == 0, undo.stderr
    assert (a.data / "f").read_text() == "before"
