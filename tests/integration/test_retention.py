"""Retention: after a commit, only the newest `keep` committed transactions keep their
snapshots; older ones lose them (journaled), and nothing else is deleted."""

from __future__ import annotations

import json
from pathlib import Path

from hs_txupdate.snapshot.tarindex import base_of, index_path
from tests.helpers import Sandbox, journal_uuid, sh

WRITER = """
def main(args):
    with open({counter!r}, "a") as f:
        f.write("run\\n")
    return {{"success": True}}
"""


def snapshot_location(path: dict) -> Path:
    """Where a scope path's snapshot lives: the tar archive or the btrfs snapshot subvolume."""
    if path["backend"] == "tar":
        return Path(path["snapshot"])
    assert path["backend"] == "btrfs", path
    return Path(json.loads(path["snapshot"])["snapshot"])


def btrfs_subvolumes(mount: Path) -> set[Path]:
    """Every subvolume of the filesystem mounted at `mount`, as absolute paths."""
    listed = sh("btrfs", "subvolume", "list", mount).stdout
    return {mount / line.split(" path ", 1)[1] for line in listed.splitlines() if " path " in line}


def test_keep_two_prunes_the_oldest(fs_sandbox: Sandbox) -> None:
    sbx = fs_sandbox
    sbx.keep = 2
    sbx.write_config()
    app = sbx.data / "app"
    app.mkdir()
    counter = app / "counter"
    sbx.module("writer", WRITER.format(counter=str(counter)), backup_paths=[app])
    on_btrfs = "btrfs" in str(sbx.root)

    for run in (1, 2, 3):
        result = sbx.hs_tx("update")
        assert result.returncode == 0, result.stderr
        if run == 2:
            # nothing is pruned while at most `keep` committed transactions exist
            tx = sbx.journal_json(1)
            assert tx["snapshots_pruned_at"] is None
            assert all(snapshot_location(p).exists() for p in tx["paths"] if p["existed"])

    assert counter.read_text() == "run\n" * 3, "retention must never touch live data"
    txs = {i: sbx.journal_json(i) for i in (1, 2, 3)}
    assert all(tx["state"] == "committed" for tx in txs.values())

    hist = sbx.hs_tx("history", "--json")
    assert hist.returncode == 0, hist.stderr
    rows = {r["id"]: r for r in json.loads(hist.stdout)}
    assert set(rows) == {1, 2, 3}, "retention deletes snapshots, not history"
    assert rows[1]["snapshots_pruned_at"], rows[1]
    assert rows[2]["snapshots_pruned_at"] is None
    assert rows[3]["snapshots_pruned_at"] is None

    old = txs[1]
    assert old["paths"]
    # on tar, the kept transactions' archives are increments of tx 1's: those archives
    # (with their indexes and manifests) stay as their bases, and nothing else of tx 1
    bases = {
        Path(b)
        for i in (2, 3)
        for p in txs[i]["paths"]
        if p["backend"] == "tar" and p["existed"] and (b := base_of(Path(p["snapshot"])))
    }
    assert on_btrfs or bases, "the tar captures after the first hold what changed"
    for path in old["paths"]:
        assert path["pruned_at"], path
        if path["existed"]:
            assert snapshot_location(path).exists() == (snapshot_location(path) in bases), path
    kept = {f for b in bases for f in (b, index_path(b), b.with_suffix(".manifest"))}
    left = set(sbx.tx_dir(1).iterdir()) if sbx.tx_dir(1).exists() else set()
    assert left == kept, "the rest of tx 1, manifests included, must go"

    for tx_id in (2, 3):
        paths = txs[tx_id]["paths"]
        assert paths
        for path in paths:
            assert path["pruned_at"] is None, path
            assert path["snapshot"], path
            assert snapshot_location(path).exists(), path
            assert path["backend"] == ("btrfs" if on_btrfs else "tar")
        # manifests beside tar archives; a btrfs snapshot's lazy one is in the journal
        assert sbx.tx_dir(tx_id).is_dir() == (not on_btrfs)

    if on_btrfs:
        subvolumes = btrfs_subvolumes(sbx.root.parent)
        pruned = {snapshot_location(p) for p in old["paths"]}
        kept = {snapshot_location(p) for i in (2, 3) for p in txs[i]["paths"]}
        assert pruned and not pruned & subvolumes, subvolumes
        assert kept <= subvolumes, subvolumes
        # the snapshot stores hold exactly the kept snapshots, and who owns them
        stores = {p.parent for p in kept}
        children = {child for store in stores for child in store.iterdir()}
        assert {c for c in children if c.is_dir()} == kept
        owner = f"{journal_uuid(sbx.state / 'journal.db')}.owner"
        assert {c.name for c in children if not c.is_dir()} == {owner}
    else:
        archives = sorted(
            p.relative_to(sbx.state / "snapshots") for p in (sbx.state / "snapshots").rglob("*.tar")
        )
        expected = sorted({snapshot_location(p) for i in (2, 3) for p in txs[i]["paths"]} | bases)
        assert archives == [p.relative_to(sbx.state / "snapshots") for p in expected]


def test_rolled_back_runs_do_not_count_towards_keep(fs_sandbox: Sandbox) -> None:
    """keep counts committed transactions: a failed run in between prunes nothing."""
    sbx = fs_sandbox
    sbx.keep = 1
    sbx.write_config()
    app = sbx.data / "app"
    app.mkdir()
    fail = sbx.root / "fail"
    sbx.module(
        "writer",
        f"""
        import os
        def main(args):
            open({str(app / "f")!r}, "a").write("x")
            return {{"success": not os.path.exists({str(fail)!r})}}
        """,
        backup_paths=[app],
    )
    assert sbx.hs_tx("update").returncode == 0
    fail.write_text("")
    assert sbx.hs_tx("update").returncode == 1

    first = sbx.journal_json(1)
    assert first["snapshots_pruned_at"] is None, "the only committed run keeps its snapshots"
    assert all(snapshot_location(p).exists() for p in first["paths"] if p["existed"])
    assert (app / "f").read_text() == "x"

    fail.unlink()
    assert sbx.hs_tx("update").returncode == 0
    assert sbx.journal_json(1)["snapshots_pruned_at"]
    third = sbx.journal_json(3)
    assert third["snapshots_pruned_at"] is None
    assert all(snapshot_location(p).exists() for p in third["paths"] if p["existed"])
