"""A large tree is compared with its manifest in two processes (snapshot/treediff.py):
the halves must find exactly what one walk finds, whatever was changed where the
walk is cut, and a child that fails must change nothing of the answer."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from hs_txupdate.base.forking import INTERRUPTS, fork_child, signals_deferred
from hs_txupdate.snapshot import treediff
from hs_txupdate.snapshot.entries import walk, walk_from
from hs_txupdate.snapshot.manifest import Changes, Manifest, _walks_before, write_manifest

# names that sort differently part by part than as whole paths, and hs-tx's own
NAMES = ["a", "a b", "a.c", "b", "new\nline", "ünï", ".hs-tx-tmp-x"]


def _tree(root: Path, rng: random.Random) -> None:
    for _ in range(120):
        parts = [rng.choice(NAMES) for _ in range(rng.randint(1, 4))]
        path = root.joinpath(*parts)
        try:
            if rng.random() < 0.3:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("/".join(parts))
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            pass


def _mutate(root: Path, rng: random.Random) -> None:
    """Change, remove, add and retype entries anywhere, the middle of the walk too."""
    entries = [rel for rel, _ in walk(root) if rel]
    for rel in rng.sample(entries, min(len(entries), 12)):
        path = root / rel
        if not os.path.lexists(path):
            continue
        action = rng.choice(["write", "remove", "retype", "chmod", "add"])
        if action == "write" and path.is_file():
            path.write_text("changed")
        elif action == "remove":
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        elif action == "retype":
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            os.symlink("elsewhere", path) if rng.random() < 0.5 else path.mkdir()
        elif action == "chmod":
            os.chmod(path, 0o700, follow_symlinks=False)
        elif path.is_dir() and not path.is_symlink():
            (path / "added").write_text("new")


def _manifest(root: Path) -> Manifest:
    # taken well after the tree was written: entries are compared by inode and ctime
    manifest, _, _ = write_manifest(root, time.time_ns() + 10**9, root.parent / "m")
    return manifest


def _serial(live: Path, manifest: Manifest) -> Changes:
    return treediff._compare(live, walk(live), manifest.items())


@pytest.mark.parametrize("seed", range(12))
def test_two_halves_find_what_one_walk_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(treediff, "SPLIT_FROM", 1)  # every tree is cut in two
    rng = random.Random(seed)
    root = tmp_path / "t"
    root.mkdir()
    _tree(root, rng)
    manifest = _manifest(root)
    _mutate(root, rng)
    middle = treediff._middle(root, manifest)
    assert middle is not None, "the tree is cut"

    changes = treediff.diff(root, manifest)

    assert changes == _serial(root, manifest)


def test_the_cut_falls_where_the_manifest_line_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(treediff, "SPLIT_FROM", 1)
    root = tmp_path / "t"
    root.mkdir()
    _tree(root, random.Random(3))
    manifest = _manifest(root)
    middle, at = treediff._middle(root, manifest) or ("", 0)
    before = [rel for rel, _ in manifest.items(stop=at)]
    after = [rel for rel, _ in manifest.items(start=at)]
    assert after[0] == middle and before + after == [rel for rel, _ in manifest.items()]
    assert all(_walks_before(rel, middle) for rel in before)
    assert [rel for rel, _ in walk_from(root, middle)] == after  # nothing changed yet


def test_a_child_that_fails_changes_nothing_of_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(treediff, "SPLIT_FROM", 1)
    rng = random.Random(5)
    root = tmp_path / "t"
    root.mkdir()
    _tree(root, rng)
    manifest = _manifest(root)
    _mutate(root, rng)
    expected = _serial(root, manifest)

    def fail(*_: object) -> int:
        raise OSError("the child cannot read the tree")

    monkeypatch.setattr(treediff, "_second_half", fail)  # the forked child runs it
    assert treediff.diff(root, manifest) == expected
    monkeypatch.setattr(treediff, "_second_half", lambda *_: os._exit(9))
    assert treediff.diff(root, manifest) == expected


class _Interrupted(Exception):
    pass


def test_an_interruption_as_the_child_forks_leaves_no_child_and_no_fd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM arriving right after the fork (as hs-tx's guard raises on it): the diff
    raises, the child is killed and reaped, and every fd it opened is closed."""
    monkeypatch.setattr(treediff, "SPLIT_FROM", 1)
    root = tmp_path / "t"
    root.mkdir()
    _tree(root, random.Random(7))
    manifest = _manifest(root)
    forked: list[int] = []

    def fork_then_signal(*args: object) -> object:
        child = real_fork(*args)
        forked.append(child.pid)
        os.kill(os.getpid(), signal.SIGTERM)  # pending until the fork is noted
        return child

    def interrupt(*_: object) -> None:
        raise _Interrupted()

    real_fork = treediff.fork_child
    monkeypatch.setattr(treediff, "fork_child", fork_then_signal)
    monkeypatch.setattr(treediff, "_second_half", lambda *_: time.sleep(30) or 0)
    fds = set(os.listdir("/proc/self/fd"))
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(_Interrupted):
            treediff.diff(root, manifest)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert forked
    with pytest.raises(ChildProcessError):  # reaped: no child left running or a zombie
        os.waitpid(forked[0], os.WNOHANG)
    assert set(os.listdir("/proc/self/fd")) <= fds


def test_a_forked_child_is_interruptible_though_forked_while_signals_wait(tmp_path: Path) -> None:
    out = tmp_path / "mask"

    def body() -> int:
        out.write_text(Path("/proc/self/status").read_text())
        return 0

    with signals_deferred():
        child = fork_child(body, "hs-tx-test", [])
    assert child.wait() == 0
    blocked = int(
        next(line for line in out.read_text().splitlines() if line.startswith("SigBlk")).split()[1],
        16,
    )
    assert not any(blocked & (1 << (sig - 1)) for sig in INTERRUPTS)


def test_a_large_tree_is_cut_and_a_small_one_is_not(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for d in range(80):  # 8,000 entries: a manifest over SPLIT_FROM
        (root / f"d{d:02d}").mkdir(parents=True)
        for f in range(100):
            (root / f"d{d:02d}" / f"f{f:03d}").write_text("x")
    manifest = _manifest(root)
    if len(os.sched_getaffinity(0)) > 1:
        assert treediff._middle(root, manifest) is not None
    (root / "d31" / "f050").write_text("changed")
    (root / "d02" / "f001").unlink()
    changes = treediff.diff(root, manifest)
    # the child's half comes after this process's, as one walk would list them
    assert changes.changed == ["d02", "d31/f050"] and changes.missing == ["d02/f001"]
    assert changes.recorded == {"d02": ("d", 2), "d02/f001": ("f", 1), "d31/f050": ("f", 1)}
    small = tmp_path / "s"
    (small / "d").mkdir(parents=True)
    assert treediff._middle(small, _manifest(small)) is None
