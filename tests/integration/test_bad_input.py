"""Bad input met by a whole run: a clean refusal (exit 2) or a named damage (exit 3),
nothing changed, and a malformed journal row never blocks unrelated work."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tarfile
from contextlib import closing
from pathlib import Path

from tests.helpers import GitSource, Sandbox, module_files, tree_state

OK = """
def main(args):
    return {"success": True}
"""


def test_a_malformed_row_of_an_old_transaction_does_not_block_an_update(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    sbx.keep = 1
    sbx.write_config()
    sbx.writer_module()
    assert sbx.hs_tx("update").returncode == 0
    with closing(sqlite3.connect(sbx.state / "journal.db")) as db:
        row = db.execute("SELECT min(id) FROM paths WHERE tx_id = 1").fetchone()[0]
        db.execute("UPDATE paths SET path = 'not/absolute' WHERE id = ?", (row,))
        db.commit()
    (sbx.data / "f").write_text("before")

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert f"journal row paths #{row} is malformed" in result.stderr
    assert (sbx.data / "f").read_text() == "after"
    assert sbx.tx_dir(1).is_dir(), "its snapshots are left alone, not pruned"
    history = sbx.hs_tx("history")
    assert history.returncode == 0  # the row is a path's: history does not read it
    show = sbx.hs_tx("show", "1")
    assert show.returncode == 3 and f"paths #{row}" in show.stderr
    assert "Traceback" not in show.stderr + result.stderr


def test_a_transaction_time_without_its_utc_offset_is_named_not_compared(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    sbx.write_config()
    sbx.writer_module()
    assert sbx.hs_tx("update").returncode == 0
    assert sbx.hs_tx("update").returncode == 0
    with closing(sqlite3.connect(sbx.state / "journal.db")) as db:  # one naive, one aware
        db.execute("UPDATE transactions SET started_at = '2026-01-01T00:00:00' WHERE id = 1")
        db.commit()

    for verb in (["history"], ["show", "1"]):
        result = sbx.hs_tx(*verb)
        assert result.returncode == 3, (verb, result.stderr)
        assert "journal row transactions #1 is malformed" in result.stderr
        assert "started_at" in result.stderr and "Traceback" not in result.stderr
    status = sbx.hs_tx("status")  # reads only the newest transaction
    assert status.returncode == 0, status.stderr


def test_a_kernel_filesystem_as_a_backup_path_is_refused(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    sbx.module("m", OK, backup_paths=["/proc"])

    result = sbx.hs_tx("update")

    assert result.returncode == 2, result.stderr
    assert "lies on a proc filesystem" in result.stderr
    assert "internal error" not in result.stderr


def _crafted_commit(source: GitSource, entry: str) -> None:
    """Commit a module dir holding a tree entry named `entry`, built with git's plumbing
    (no checkout could hold it)."""
    source.publish({"m": module_files("m", OK, version="2.0.0")})
    git = source.git
    blob = git("hash-object", "-w", "--stdin", stdin="planted\n")
    module_tree = git("rev-parse", "HEAD:modules/m")
    listing = git("ls-tree", module_tree) + f"\n100644 blob {blob}\t{entry}\n"
    crafted = git("mktree", stdin=listing)
    modules = git("ls-tree", "HEAD:modules").replace(module_tree, crafted)
    root = git("ls-tree", "HEAD").replace(
        git("rev-parse", "HEAD:modules"), git("mktree", stdin=modules + "\n")
    )
    commit = git("commit-tree", git("mktree", stdin=root + "\n"), "-p", "HEAD", "-m", "crafted")
    git("push", "-q", "--force", "origin", f"{commit}:refs/heads/{source.branch}")


def test_a_crafted_tree_entry_is_refused_before_anything_changes(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    source = GitSource(sbx.root / "upstream").create()
    sbx.source_url = source.url
    sbx.write_config()
    source.publish({"m": module_files("m", OK)})
    assert sbx.hs_tx("update").returncode == 0
    _crafted_commit(source, "..")
    before = tree_state(sbx.modules), tree_state(sbx.data)

    result = sbx.hs_tx("update")

    assert result.returncode == 2, result.stderr
    assert "no checkout could hold" in result.stderr
    assert (tree_state(sbx.modules), tree_state(sbx.data)) == before
    assert json.loads(sbx.hs_tx("history", "--json").stdout)[0]["state"] == "aborted"


def test_a_snapshot_archive_that_is_not_what_was_taken_is_never_restored(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    (sbx.data / "conf").mkdir()
    (sbx.data / "conf/app.conf").write_text("v1")
    sbx.module(
        "m",
        f"""
        def main(args):
            open({str(sbx.data / "conf/app.conf")!r}, "w").write("v2")
            return {{"success": True}}
        """,
        backup_paths=[sbx.data],
    )
    assert sbx.hs_tx("update").returncode == 0
    path = next(p for p in sbx.journal_json(1)["paths"] if p["path"] == str(sbx.data))
    archive = Path(path["snapshot"])
    outside = sbx.root / "outside"
    outside.mkdir()
    crafted = archive.with_name("crafted.tar")
    with tarfile.open(crafted, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind in (("data", tarfile.DIRTYPE), ("data/conf", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, 0o755
            info.linkname = str(outside) if kind == tarfile.SYMTYPE else ""
            tar.addfile(info)
    crafted.replace(archive)
    checksum = subprocess.run(
        ["sha256sum", str(archive)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    with closing(sqlite3.connect(sbx.state / "journal.db")) as db:  # the row agrees with it
        db.execute("UPDATE paths SET checksum = ? WHERE snapshot = ?", (checksum, str(archive)))
        db.commit()
    before, outside_before = tree_state(sbx.data), tree_state(outside)

    result = sbx.hs_tx("undo", "1")

    assert result.returncode == 3, result.stderr
    assert "the snapshot archive of" in result.stderr and "cannot be extracted" in result.stderr
    assert tree_state(sbx.data) == before and tree_state(outside) == outside_before
    assert sbx.journal_json(2)["exit_code"] == 3
