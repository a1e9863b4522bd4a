"""A tar rollback checks and reads only the archive's chunks that hold what it puts back.

A module backs up a tree, rewrites one file, damages the archive hs-tx just took (a
chunk it will not need, one it will, or the index), then fails: hs-tx rolls back.
"""

from __future__ import annotations

import os
import tarfile

import pytest

from tests.helpers import Sandbox, tree_state

DAMAGE = """
import glob, os
D, HOW = {data!r}, {how!r}

def start_of(index, name):
    for line in open(index, encoding="utf-8", errors="surrogateescape"):
        if line.startswith("block ") and line.rstrip("\\n").endswith(": " + name):
            return int(line.split(":")[0][6:]) * 512
    raise AssertionError(name)

def main(args):
    with open(D + "/tree/f050", "wb") as f:
        f.write(b"rewritten by the run")
    for name in ("new\\nline", "back\\\\slash", "ünï", os.fsdecode(b"bad\\xff")):
        with open(D + "/tree/" + name, "wb") as f:  # names tar's list escapes
            f.write(b"rewritten by the run")
    index = next(i for i in glob.glob({state!r} + "/snapshots/*/*.tar.index")
                 if "tree/f050" in open(i, errors="replace").read())
    if HOW == "index":
        with open(index, "ab") as f:
            f.write(b"block 0: tree/f050\\n")
    else:
        victim = "tree/f010" if HOW == "unneeded" else "tree/f050"
        with open(index[: -len(".index")], "r+b") as f:
            # in the member's data (f010's 1 MB: deep in, a chunk no other member shares)
            f.seek(start_of(index, victim) + (500_000 if victim == "tree/f010" else 2048))
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
    return {{"success": False, "error": "deliberate failure"}}
"""


def _box(sbx: Sandbox, how: str) -> None:
    tree = sbx.data / "tree"
    tree.mkdir()
    for i in range(100):
        (tree / f"f{i:03d}").write_bytes(os.urandom(1_000_000 if i == 10 else 100_000))
    for name in ("new\nline", "back\\slash", "ünï", "a -> b", os.fsdecode(b"bad\xff")):
        (tree / name).write_bytes(os.urandom(3000))
    body = DAMAGE.format(data=str(sbx.data), how=how, state=str(sbx.state))
    sbx.module("w", body, backup_paths=[tree])


def test_damage_to_a_chunk_the_rollback_does_not_read_is_not_read(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    _box(sbx, "unneeded")
    before = tree_state(sbx.data / "tree")

    result = sbx.hs_tx("update")

    assert result.returncode == 1, result.stderr
    assert "every path in scope is as before" in result.stderr
    assert tree_state(sbx.data / "tree") == before


@pytest.mark.parametrize("how", ["needed", "index"])
def test_damage_to_what_the_rollback_reads_is_refused(tar_sandbox: Sandbox, how: str) -> None:
    sbx = tar_sandbox
    _box(sbx, how)

    result = sbx.hs_tx("update")

    assert result.returncode == 3, result.stderr
    what = "fails its checksum" if how == "needed" else "is missing or fails its checksum"
    assert what in result.stderr
    assert (sbx.data / "tree/f050").read_bytes() == b"rewritten by the run", "nothing restored"


def test_the_archive_and_its_index_are_what_an_operator_can_read(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    _box(sbx, "none")
    (sbx.modules / "w/index.py").write_text("def main(args):\n    return {'success': True}\n")
    assert sbx.hs_tx("update").returncode == 0
    [index] = [
        i for i in sbx.tx_dir(1).glob("*.tar.index") if "tree/f050" in i.read_text("latin-1")
    ]
    archive = index.with_suffix("")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "tree/f050" in names and "tree/new\nline" in names
    text = index.read_text(errors="surrogateescape")
    assert text.startswith("hs-tx tar index 1 32768\n") and "block 0: tree/\n" in text
    assert "tree/new\\nline" in text and "tree/back\\\\slash" in text
