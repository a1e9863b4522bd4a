"""`hs-tx undo`: reverse committed transactions, refusing whatever would lose work."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import LoopFs, Sandbox, tree_state

WRITE = """
import os, pathlib
def main(args):
    p = pathlib.Path({path!r})
    p.write_text(p.read_text() + os.environ.get("X", "") + {text!r} + "\\n")
    return {{"success": True}}
"""


def writer(sbx: Sandbox, name: str, path: os.PathLike, text: str, service: str = "") -> None:
    meta = {"service_name": service} if service else {}
    sbx.module(
        name,
        WRITE.format(path=str(path), text=text),
        backup_paths=[os.path.dirname(path)],
        extra_meta=meta,
    )


def history(sbx: Sandbox) -> dict[int, dict]:
    return {t["id"]: t for t in json.loads(sbx.hs_tx("history", "--json").stdout)}


def test_undo_of_the_newest_transaction(fs_sandbox: Sandbox) -> None:
    sbx = fs_sandbox
    (sbx.data / "a").mkdir()
    (sbx.data / "a/f").write_text("v0\n")
    before = tree_state(sbx.data / "a")
    writer(sbx, "w", sbx.data / "a/f", "v1", service="w.service")
    (sbx.root / "active-w.service").touch()  # running before: the undo restarts it
    assert sbx.hs_tx("update").returncode == 0
    after = tree_state(sbx.data / "a")

    result = sbx.hs_tx("undo", "1")

    assert result.returncode == 0, result.stderr
    assert tree_state(sbx.data / "a") == before
    rows = history(sbx)
    assert rows[2]["kind"] == "undo" and rows[2]["undoes"] == 1 and rows[2]["state"] == "committed"
    assert rows[1]["undone_by"] == 2
    assert "restart w.service" in sbx.service_log.read_text()
    again = sbx.hs_tx("undo", "1")
    assert again.returncode == 2 and "already undone by transaction 2" in again.stderr
    # an undo can be undone: the change of transaction 1 comes back
    redo = sbx.hs_tx("undo", "2")
    assert redo.returncode == 0, redo.stderr
    assert tree_state(sbx.data / "a") == after
    rows = history(sbx)
    assert rows[1]["undone_by"] is None and rows[2]["undone_by"] == 3


def test_a_later_overlapping_change_blocks_undo_unless_cascade(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    (sbx.data / "a").mkdir()
    (sbx.data / "a/f").write_text("v0\n")
    before = tree_state(sbx.data / "a")
    writer(sbx, "w", sbx.data / "a/f", "one")
    assert sbx.hs_tx("update").returncode == 0
    assert sbx.hs_tx("update").returncode == 0
    middle = tree_state(sbx.data / "a")

    refused = sbx.hs_tx("undo", "1")

    assert refused.returncode == 2
    assert "transaction 2 changed" in refused.stderr and "--cascade" in refused.stderr
    assert tree_state(sbx.data / "a") == middle
    assert sorted(history(sbx)) == [1, 2], "a refusal opens no transaction"
    cascaded = sbx.hs_tx("undo", "1", "--cascade")
    assert cascaded.returncode == 0, cascaded.stderr
    assert tree_state(sbx.data / "a") == before
    rows = history(sbx)
    assert rows[1]["undone_by"] == 3 and rows[2]["undone_by"] == 3


def test_pruned_snapshots_and_bad_ids_are_refused(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    sbx.keep = 1
    sbx.write_config()
    (sbx.data / "a").mkdir()
    (sbx.data / "a/f").write_text("v0\n")
    writer(sbx, "w", sbx.data / "a/f", "x")
    assert sbx.hs_tx("update").returncode == 0
    sbx.module("b", "def main(a):\n    return {'success': False, 'error': 'no'}\n")
    assert sbx.hs_tx("update").returncode == 1
    (sbx.modules / "b/index.json").unlink()
    subprocess.run(["rm", "-rf", str(sbx.modules / "b")], check=True)
    assert sbx.hs_tx("update").returncode == 0  # prunes 1's snapshots (keep = 1)

    for tx, expected in (
        (1, "deleted by retention"),
        (2, "did not commit"),
        (99, "no transaction 99"),
    ):
        result = sbx.hs_tx("undo", str(tx))
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr


def test_drift_needs_force(fs_sandbox: Sandbox) -> None:
    sbx = fs_sandbox
    (sbx.data / "a").mkdir()
    (sbx.data / "a/f").write_text("v0\n")
    before = tree_state(sbx.data / "a")
    writer(sbx, "w", sbx.data / "a/f", "v1")
    assert sbx.hs_tx("update").returncode == 0
    (sbx.data / "a/by-hand.txt").write_text("an operator's edit")
    drifted = tree_state(sbx.data / "a")

    refused = sbx.hs_tx("undo", "1")

    assert refused.returncode == 2
    assert f"changed outside hs-tx since its last transaction: {sbx.data / 'a'}" in refused.stderr
    assert tree_state(sbx.data / "a") == drifted
    forced = sbx.hs_tx("undo", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert tree_state(sbx.data / "a") == before


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_damaged_snapshot_is_exit_3_with_nothing_changed(
    tar_sandbox: Sandbox, damage: str
) -> None:
    sbx = tar_sandbox
    (sbx.data / "a").mkdir()
    (sbx.data / "a/f").write_text("v0\n")
    writer(sbx, "w", sbx.data / "a/f", "v1")
    assert sbx.hs_tx("update").returncode == 0
    after = tree_state(sbx.data / "a")
    paths = {p["path"]: p for p in sbx.journal_json(1)["paths"]}
    archive = paths[str(sbx.data / "a")]["snapshot"]
    if damage == "missing":
        os.unlink(archive)
    else:
        with open(archive, "r+b") as f:
            f.seek(600)
            f.write(b"tampered")

    result = sbx.hs_tx("undo", "1")

    assert result.returncode == 3, result.stderr
    assert ("is missing" if damage == "missing" else "fails its checksum") in result.stderr
    assert tree_state(sbx.data / "a") == after
    assert sorted(history(sbx)) == [1]


FAIL = "def main(args):\n    return {'success': False, 'error': 'later run fails'}\n"


def test_a_rolled_back_run_in_between_is_not_drift(fs_sandbox: Sandbox) -> None:
    sbx = fs_sandbox
    (sbx.data / "a").mkdir()
    (sbx.data / "a/f").write_text("v0\n")
    before = tree_state(sbx.data / "a")
    writer(sbx, "w", sbx.data / "a/f", "v1")
    assert sbx.hs_tx("update").returncode == 0
    sbx.module("zz_fail", FAIL)
    assert sbx.hs_tx("update").returncode == 1  # w wrote again, then all was rolled back

    result = sbx.hs_tx("undo", "1")

    assert result.returncode == 0, result.stderr
    assert tree_state(sbx.data / "a") == before


def test_drift_before_a_rolled_back_run_is_still_drift(fs_sandbox: Sandbox) -> None:
    sbx = fs_sandbox
    (sbx.data / "a").mkdir()
    (sbx.data / "a/f").write_text("v0\n")
    writer(sbx, "w", sbx.data / "a/f", "v1")
    assert sbx.hs_tx("update").returncode == 0
    (sbx.data / "a/by-hand.txt").write_text("an operator's edit")
    sbx.module("zz_fail", FAIL)
    assert sbx.hs_tx("update").returncode == 1

    result = sbx.hs_tx("undo", "1")

    assert result.returncode == 2
    assert "changed outside hs-tx" in result.stderr


def _fingerprints(sbx: Sandbox) -> dict[int, str]:
    with sqlite3.connect(sbx.state / "journal.db") as db:
        rows = db.execute(
            "SELECT tx_id, fingerprint FROM paths WHERE path = ?", (str(sbx.data / "a"),)
        )
        return {tx: fp for tx, fp in rows if fp is not None}


def _btrfs_box(make_loopfs: Callable[..., LoopFs]) -> Sandbox:
    """A btrfs sandbox whose `data/a` holds a file a module rewrites, others it never
    touches, and a subdirectory; its first update has committed."""
    sbx = Sandbox(make_loopfs("btrfs", 320).mount / "sbx").create()
    (sbx.data / "a/sub").mkdir(parents=True)
    for rel in ("f", "g", "sub/h"):
        (sbx.data / "a" / rel).write_text(f"{rel} v0\n")
    writer(sbx, "w", sbx.data / "a/f", "v1")
    assert sbx.hs_tx("update").returncode == 0
    return sbx


OUTSIDE_EDITS: dict[str, Callable[[Path], object]] = {
    "the file the run wrote": lambda a: (a / "f").write_text("by hand\n"),
    "a file the run never touched": lambda a: (a / "g").chmod(0o600),
    "an untouched file deleted": lambda a: (a / "sub/h").unlink(),
    "an untouched dir renamed": lambda a: (a / "sub").rename(a / "sub2"),
    "a hard link added": lambda a: os.link(a / "g", a / "sub/g-link"),
    "a file added": lambda a: (a / "new").write_text("x"),
}


@pytest.mark.parametrize("edit", sorted(OUTSIDE_EDITS))
def test_btrfs_drift_anywhere_in_the_path_is_noticed_without_a_walk(
    make_loopfs: Callable[..., LoopFs], edit: str
) -> None:
    sbx = _btrfs_box(make_loopfs)
    assert _fingerprints(sbx)[1].startswith("diff:1:"), "btrfs lists what changed: no walk"
    OUTSIDE_EDITS[edit](sbx.data / "a")
    drifted = tree_state(sbx.data / "a")

    refused = sbx.hs_tx("undo", "1")

    assert refused.returncode == 2, refused.stderr
    assert f"changed outside hs-tx since its last transaction: {sbx.data / 'a'}" in refused.stderr
    assert tree_state(sbx.data / "a") == drifted


def _read_all(top: Path) -> None:
    """Read every file: relatime sets the access time of one written since its last read."""
    files = [f for f in top.rglob("*") if f.is_file()]
    before = [f.stat().st_atime_ns for f in files]
    time.sleep(0.01)
    for f in files:
        f.read_bytes()
    assert [f.stat().st_atime_ns for f in files] != before, "no access time was set"


def test_btrfs_reading_files_and_a_rollback_in_between_are_not_drift(
    make_loopfs: Callable[..., LoopFs],
) -> None:
    sbx = _btrfs_box(make_loopfs)
    _read_all(sbx.data / "a")
    sbx.module("zz_fail", FAIL)
    (sbx.data / "a/sub/h").write_text("h by the failing run\n")  # its snapshot holds this
    assert sbx.hs_tx("update").returncode == 1
    fingerprints = _fingerprints(sbx)

    result = sbx.hs_tx("undo", "1")

    assert result.returncode == 2, "the edit before the failed run is still drift"
    assert fingerprints.keys() == {1}, "a rollback to a drifted state records nothing"
    (sbx.data / "a/sub/h").write_text("sub/h v0\n")  # not the same inode state: still drift
    assert sbx.hs_tx("undo", "1").returncode == 2
    assert sbx.hs_tx("undo", "1", "--force").returncode == 0
    before = tree_state(sbx.data / "a")
    assert sbx.hs_tx("update").returncode == 1  # tx 4: w writes f, zz_fail rolls it back
    assert _fingerprints(sbx)[4].startswith("diff:3:"), "taken against the undo's snapshot"
    _read_all(sbx.data / "a")

    result = sbx.hs_tx("undo", "3")

    assert result.returncode == 0, result.stderr
    assert tree_state(sbx.data / "a") != before
