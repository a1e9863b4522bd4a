"""`hs-tx undo`: reverse committed transactions, refusing whatever would lose work."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.helpers import Sandbox, tree_state

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


def test_drift_needs_force(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
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


def test_a_rolled_back_run_in_between_is_not_drift(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
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


def test_drift_before_a_rolled_back_run_is_still_drift(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
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
