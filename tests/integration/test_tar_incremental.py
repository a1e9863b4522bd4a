"""Incremental tar captures: a capture of a path that a kept full archive holds takes
only what changed since, restores exactly (a rollback, an undo after the base's own
transaction was pruned), keeps its base for as long as it is needed and no longer, and
refuses a base that is not what was written."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hs_txupdate.core.space import space_plan
from hs_txupdate.journal import Journal
from hs_txupdate.snapshot.tarindex import base_of, index_path
from tests.helpers import Sandbox, tree_state

SCRAMBLE = """
import os, shutil
def main(args):
    app = {app!r}
    for name in sorted(os.listdir(app)):
        p = os.path.join(app, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)
    open(os.path.join(app, "junk"), "w").write("junk")
    return {{"success": {ok}}}
"""
TOUCH = """
def main(args):
    open({target!r}, "a").write("x")
    return {{"success": True}}
"""


def _tree(app: Path) -> None:
    """A tree with files in nested dirs, a symlink, hard links and an empty dir, old
    enough (past hs-tx's ctime margin) to be taken from a base as they are."""
    for d in range(3):
        sub = app / f"d{d}" / "deeper"
        sub.mkdir(parents=True)
        for f in range(20):
            (sub / f"f{f}").write_bytes(os.urandom(4096))
    (app / "big").write_bytes(os.urandom(1 << 20))
    (app / "link").symlink_to("big")
    (app / "d0" / "peer").write_text("peer")
    os.link(app / "d0" / "peer", app / "d1" / "peer")
    (app / "empty").mkdir()
    (app / "was-a-dir").mkdir()
    (app / "was-a-dir" / "inside").write_text("inside")
    time.sleep(0.3)


def _first_commit(sbx: Sandbox, keep: int | None = None) -> tuple[Path, Path]:
    """The tree in data/app, backed up by a module that appends to one file, committed
    once (with `keep`, when given); return the tree and its full archive."""
    if keep is not None:
        sbx.keep = keep
        sbx.write_config()
    app = sbx.data / "app"
    _tree(app)
    sbx.module("a", TOUCH.format(target=str(app / "d2" / "new")), backup_paths=[app])
    assert sbx.hs_tx("update").returncode == 0
    return app, _archive(sbx, 1)


def _archive(sbx: Sandbox, tx: int) -> Path:
    paths = [p for p in sbx.journal_json(tx)["paths"] if p["backend"] == "tar" and p["existed"]]
    found = [Path(p["snapshot"]) for p in paths if p["path"].endswith("/app")]
    assert len(found) == 1, paths
    return found[0]


def _needs(sbx: Sandbox, tx: int) -> set[Path]:
    """The files of other transactions that the increments of `tx` need: each base
    archive, its index and its manifest."""
    snapshots = [Path(p["snapshot"]) for p in sbx.journal_json(tx)["paths"] if p["existed"]]
    bases = [Path(b) for s in snapshots if (b := base_of(s)) is not None]
    return {f for b in bases for f in (b, index_path(b), b.with_suffix(".manifest"))}


def _drift(app: Path) -> None:
    """What the box changes between two runs: a file rewritten, one removed, one added,
    a directory become a file, a mode changed."""
    (app / "d1" / "deeper" / "f3").write_bytes(b"rewritten")
    (app / "d2" / "deeper" / "f4").unlink()
    (app / "d2" / "new").write_text("new")
    (app / "was-a-dir" / "inside").unlink()
    (app / "was-a-dir").rmdir()
    (app / "was-a-dir").write_text("now a file")
    (app / "d0" / "deeper" / "f0").chmod(0o600)


def test_a_second_capture_holds_only_what_changed_and_rolls_back_exactly(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    app = sbx.data / "app"
    _tree(app)
    sbx.module("a", TOUCH.format(target=str(app / "d0" / "peer")), backup_paths=[app])
    assert sbx.hs_tx("update").returncode == 0
    full = _archive(sbx, 1)
    assert base_of(full) is None
    _drift(app)
    before = tree_state(app)
    sbx.module("a", SCRAMBLE.format(app=str(app), ok=False), backup_paths=[app])

    result = sbx.hs_tx("update")

    assert result.returncode == 1, result.stderr
    assert tree_state(app) == before, "rolled back exactly from the base and the increment"
    (increment,) = [p for p in sbx.journal_json(2)["paths"] if p["path"] == str(app)]
    assert increment["size"] < full.stat().st_size // 10, "only what changed was archived"


def test_undo_reads_an_increment_whose_base_transaction_was_pruned(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    app, full = _first_commit(sbx, keep=1)
    _drift(app)
    before = tree_state(app)
    assert sbx.hs_tx("update").returncode == 0  # tx 1 loses its snapshots: not its base

    assert sbx.journal_json(1)["snapshots_pruned_at"]
    bases = {base_of(Path(p["snapshot"])) for p in sbx.journal_json(2)["paths"] if p["existed"]}
    assert str(full) in bases
    needed = {
        f
        for b in bases
        if b
        for f in (Path(b), index_path(Path(b)), Path(b).with_suffix(".manifest"))
    }
    assert set(full.parent.iterdir()) == needed, "of tx 1, only what tx 2's increments need stays"
    status = sbx.hs_tx("status")
    assert "orphan" not in status.stdout.lower(), status.stdout
    journal = Journal(sbx.state / "journal.db")
    try:
        (only,) = space_plan(journal)["transactions"]
    finally:
        journal.close()
    assert only["files"] >= full.stat().st_size, "the base it needs counts with it"

    result = sbx.hs_tx("undo", "2")

    assert result.returncode == 0, result.stderr
    assert tree_state(app) == before


def test_a_base_goes_with_the_last_snapshot_that_needs_it(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    app, full = _first_commit(sbx, keep=1)
    assert sbx.hs_tx("update").returncode == 0
    assert base_of(_archive(sbx, 2)) == str(full)
    (app / "big").write_bytes(os.urandom(2 << 20))  # most of the tree: captured whole

    assert sbx.hs_tx("update").returncode == 0

    assert base_of(_archive(sbx, 3)) is None
    assert not full.exists() and not index_path(full).exists(), "tx 2 took its last need along"
    needed = _needs(sbx, 3)  # the other scope paths' increments still need tx 1's bases
    left = set(full.parent.iterdir()) if full.parent.exists() else set()
    assert left == {f for f in needed if f.parent == full.parent}
    assert not _archive(sbx, 2).parent.exists()


def test_a_base_that_is_not_what_was_written_is_refused(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    app, full = _first_commit(sbx)
    with open(full, "r+b") as f:  # one byte of the base's data, nothing the increment holds
        f.seek(full.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    sbx.module("a", SCRAMBLE.format(app=str(app), ok=False), backup_paths=[app])

    result = sbx.hs_tx("update")

    assert result.returncode == 3, result.stderr
    assert "fails its checksum" in result.stderr
    assert (app / "junk").exists(), "nothing was restored from a damaged base"
