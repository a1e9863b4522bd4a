"""btrfs's own change list (snapshot/changelist.py) against the truth: after any mix of
writes, renames, deletions, links, metadata changes and reads on a real btrfs, the list
names every entry that differs from the snapshot, and restoring just those entries
makes the tree equal to the snapshot again."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hs_txupdate.core.snapshots import LAZY_PREFIX
from hs_txupdate.snapshot.changelist import PROBE_SUFFIX, ChangeLists, changes_since
from hs_txupdate.snapshot.restore import restore
from tests.conftest import LoopFs
from tests.helpers import Sandbox, sh, tree_state

EXAMPLES = int(os.environ.get("HS_TX_FUZZ_EXAMPLES", "40"))
NAMES = ["a", "b", "sp ace", "new\nline", "é€", "d", "d/x", "d/e", "d/e/y", "f/g", "back\\slash"]
NAMES += ["not utf-8 \udcff"]  # the byte 0xff, as Python names it
OPS = st.sampled_from(
    ["write", "append", "delete", "mkdir", "rename", "chmod", "xattr", "link", "symlink",
     "touch", "read", "fifo", "socket"]
)  # fmt: skip
STEPS = st.lists(st.tuples(OPS, st.sampled_from(NAMES), st.sampled_from(NAMES)), max_size=14)
_counter = itertools.count()
_FS: dict[int, LoopFs] = {}


def _apply(root: Path, op: str, name: str, other: str) -> None:
    """Do one operation below `root`; one that cannot be done here is skipped."""
    path, dest = root / name, root / other
    try:
        if op in ("write", "append"):
            if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
                return  # a fifo (or a link to one) would wait for a reader
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab" if op == "append" else "wb") as f:
                f.write(os.fsencode(f"{op} {name}\n"))
        elif op == "delete":
            sh("rm", "-rf", path)
        elif op == "mkdir":
            path.mkdir(parents=True)
        elif op == "rename":
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, dest)
        elif op == "chmod":
            if not path.is_symlink():
                os.chmod(path, 0o700)
        elif op == "xattr":
            os.setxattr(path, "user.t", os.fsencode(name), follow_symlinks=False)
        elif op == "link":
            os.link(path, dest, follow_symlinks=False)
        elif op == "symlink":
            os.symlink(other, path)
        elif op == "touch":
            os.utime(path, ns=(1_000_000_000, 1_000_000_000), follow_symlinks=False)
        elif op == "read" and path.is_file():  # not a fifo: that would wait for a writer
            path.read_bytes()
        elif op == "fifo":
            os.mkfifo(path)
        elif op == "socket":
            os.mknod(path, stat.S_IFSOCK | 0o600)
    except OSError:
        pass


def _differing(before: dict, after: dict) -> set[str]:
    """The entries (relative paths, '' for the top) whose state differs."""
    names = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
    return {"" if n in (".", "<absent>") else n for n in names}


def _comparable(state: dict, inside: str) -> dict:
    """`state` without link counts when the tree is a part of the subvolume: a link to a
    file outside it is out of the restore's reach (it restores the tree, not the rest)."""
    if not inside:
        return state
    return {
        rel: {k: v for k, v in entry.items() if k != "nlink"} if isinstance(entry, dict) else entry
        for rel, entry in state.items()
    }


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(setup=STEPS, run=STEPS, inside=st.sampled_from(["", "d"]))
@example(setup=[], run=[("delete", "d", "a")], inside="d")  # the tree itself deleted
def test_the_change_list_names_every_change_and_restoring_it_is_exact(
    make_loopfs: Callable[..., LoopFs], setup: list, run: list, inside: str
) -> None:
    if id(make_loopfs) not in _FS:  # one filesystem for every example of this run
        _FS[id(make_loopfs)] = make_loopfs("btrfs", 256)
        (_FS[id(make_loopfs)].mount / "store").mkdir()
    fs = _FS[id(make_loopfs)]
    n = next(_counter)
    subvolume, snapshot = fs.mount / f"sub{n}", fs.mount / "store" / f"snap{n}"
    sh("btrfs", "subvolume", "create", subvolume)
    try:
        (subvolume / "d").mkdir()
        for step in setup:
            _apply(subvolume, *step)
        sh("btrfs", "subvolume", "snapshot", "-r", subvolume, snapshot)
        for step in run:
            _apply(subvolume, *step)
        live, reference = subvolume / inside, snapshot / inside
        truth = _differing(tree_state(reference), tree_state(live))

        changes = changes_since(snapshot, inside, live, subvolume)

        listed = {*changes.changed, *changes.extra, *changes.missing}
        assert truth <= listed, f"not listed: {sorted(truth - listed)}"
        assert not (fs.mount / "store" / f"snap{n}{PROBE_SUFFIX}").exists()
        restore(live, reference, changes)
        assert _comparable(tree_state(live), inside) == _comparable(tree_state(reference), inside)
    finally:
        for sub in (snapshot, subvolume):
            sh("btrfs", "subvolume", "delete", sub, check=False)


# --- through whole runs -------------------------------------------------------------

FAIL_AFTER = """
import os, socket
def main(args):
    root = {data!r}
    open(os.path.join(root, "conf"), "w").write("changed")
    os.unlink(os.path.join(root, "s.sock"))
    os.rename(os.path.join(root, "dir"), os.path.join(root, "moved"))
    raise RuntimeError("deliberate failure")
"""


def _btrfs_sandbox(make_loopfs: Callable[..., LoopFs]) -> tuple[LoopFs, Sandbox]:
    fs = make_loopfs("btrfs", 320)
    return fs, Sandbox(fs.mount / "sbx").create()


def test_a_rollback_from_the_change_list_is_exact_sockets_included(
    make_loopfs: Callable[..., LoopFs],
) -> None:
    """A socket no longer refuses a btrfs path (the snapshot keeps it), and the rollback
    from btrfs's change list is exact: a rewrite, a deleted socket, a moved tree."""
    _fs, sbx = _btrfs_sandbox(make_loopfs)
    (sbx.data / "conf").write_text("v1")
    (sbx.data / "dir" / "sub").mkdir(parents=True)
    (sbx.data / "dir" / "sub" / "f").write_text("deep")
    os.mknod(sbx.data / "s.sock", stat.S_IFSOCK | 0o600)
    sbx.module("m", FAIL_AFTER.format(data=str(sbx.data)), backup_paths=[sbx.data])
    before = tree_state(sbx.data)

    result = sbx.hs_tx("update")

    assert result.returncode == 1, result.stderr
    assert tree_state(sbx.data) == before
    store = sbx.root.parent / ".hs-tx-snapshots"
    assert not list(store.glob(f"*{PROBE_SUFFIX}")), "a probe snapshot was left behind"


def test_snapshots_are_lazy_and_a_probe_left_by_a_crash_goes_with_its_snapshot(
    make_loopfs: Callable[..., LoopFs],
) -> None:
    _fs, sbx = _btrfs_sandbox(make_loopfs)
    sbx.keep = 1
    sbx.write_config()
    sbx.writer_module()
    assert sbx.hs_tx("update").returncode == 0
    paths = sbx.journal_json(1)["paths"]
    assert len(paths) == 2  # the module dir and the data: nothing was walked
    assert not sbx.tx_dir(1).exists(), "a lazy manifest needs no file beside its snapshot"
    with sqlite3.connect(sbx.state / "journal.db") as db:
        rows = db.execute("SELECT manifest FROM paths WHERE tx_id = 1").fetchall()
    manifests = [json.loads(m.removeprefix(LAZY_PREFIX)) for (m,) in rows]
    assert all(m["lazy"] is True and m["entries"] == [] for m in manifests)
    store = sbx.root.parent / ".hs-tx-snapshots"
    (snapshot,) = store.glob(f"{sbx.tx_key(1)}-*")
    probe = snapshot.with_name(snapshot.name + PROBE_SUFFIX)
    crash = ["btrfs", "subvolume", "snapshot", "-r", sbx.root.parent, probe]  # as a crash leaves it
    sh(*crash)

    pruned = sbx.hs_tx("prune", "--orphans")

    assert pruned.returncode == 0, pruned.stderr
    assert not probe.exists() and snapshot.exists()
    sh(*crash)
    assert sbx.hs_tx("update").returncode == 0  # keep = 1: transaction 1 is pruned
    assert not probe.exists() and not snapshot.exists()


def _subvolumes_made(fs: LoopFs, action: Callable[[], object]) -> int:
    """How many subvolumes (snapshots, probes) `action` made on `fs`: btrfs gives each
    new one the next id, so two markers around it tell."""
    ids = []
    for marker in ("marker-before", "marker-after"):
        if ids:
            action()
        sh("btrfs", "subvolume", "create", fs.mount / marker)
        shown = sh("btrfs", "subvolume", "show", fs.mount / marker).stdout
        ids.append(int(shown.split("Subvolume ID:")[1].split()[0]))
        sh("btrfs", "subvolume", "delete", fs.mount / marker)
    return ids[1] - ids[0] - 1


def test_the_paths_of_one_snapshot_share_one_probe_at_commit_and_at_rollback(
    make_loopfs: Callable[..., LoopFs],
) -> None:
    """The module dir and the data lie in one subvolume, so one snapshot holds both: a
    commit's diffs and a rollback's restores read its change list once."""
    fs, sbx = _btrfs_sandbox(make_loopfs)
    sbx.writer_module()
    assert sbx.hs_tx("update").returncode == 0  # the first makes the state dir's subvolume
    runs = []

    made = _subvolumes_made(fs, lambda: runs.append(sbx.hs_tx("update")))

    assert runs[0].returncode == 0, runs[0].stderr
    assert len(sbx.journal_json(2)["paths"]) == 2
    assert made == 2, "the run's snapshot and one probe"
    (sbx.data / "dir").mkdir()
    os.mknod(sbx.data / "s.sock", stat.S_IFSOCK | 0o600)
    sbx.module("m", FAIL_AFTER.format(data=str(sbx.data)), backup_paths=[sbx.data])
    before = tree_state(sbx.data)

    made = _subvolumes_made(fs, lambda: runs.append(sbx.hs_tx("update")))

    assert runs[1].returncode == 1, runs[1].stderr
    assert tree_state(sbx.data) == before
    assert made == 2, "the run's snapshot and one probe for both paths"
    assert not list(fs.mount.rglob(f"*{PROBE_SUFFIX}")), "each pass deleted its probe"


def test_a_pass_keeps_its_probe_until_it_ends_and_deletes_it_however_it_ends(
    make_loopfs: Callable[..., LoopFs],
) -> None:
    """The probe outlives the read of its change list (btrfs drops a deleted subvolume
    in the background, which a rollback's restores would wait for) and goes when the
    pass does, also when the pass fails."""
    fs = make_loopfs("btrfs", 256)
    subvolume, store = fs.mount / "sub", fs.mount / "store"
    sh("btrfs", "subvolume", "create", subvolume)
    store.mkdir()
    (subvolume / "f").write_text("before")
    snapshot = store / "snap"
    sh("btrfs", "subvolume", "snapshot", "-r", subvolume, snapshot)
    probe = store / f"snap{PROBE_SUFFIX}"
    (subvolume / "f").write_text("after")

    with ChangeLists() as lists:
        assert lists.changes_since(snapshot, "", subvolume, subvolume).changed == ["f"]
        assert probe.exists(), "kept while the pass restores"
    assert not probe.exists()
    with pytest.raises(RuntimeError), ChangeLists() as lists:
        lists.changes_since(snapshot, "", subvolume, subvolume)
        raise RuntimeError("a pass cut off")
    assert not probe.exists()
