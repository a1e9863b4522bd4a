"""The write audit on a real kernel: fanotify on loop-mounted ext4 and btrfs,
modules as real child processes in the run's pid namespace, writers outside it,
the scan fallback (forced, and a real refusal without CAP_SYS_ADMIN), and the
reader's end when hs-tx goes away. Needs root."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hs_txupdate.audit import Audit, AuditResult
from hs_txupdate.audit.link import READER_NAME
from hs_txupdate.audit.paths import read_mounts
from hs_txupdate.audit.scan import changed_since
from tests.helpers import LoopFs, need, sh, wait_gone

PY = sys.executable
StartAudit = Callable[..., Audit]


@pytest.fixture
def audits() -> Iterator[StartAudit]:
    """Factory: start an Audit (watch, ignore); every one is abandoned at the end."""
    started: list[Audit] = []

    def start(watch: list[Path], ignore: list[Path] | None = None) -> Audit:
        audit = Audit.start(watch, ignore or [])
        started.append(audit)
        return audit

    yield start
    for audit in started:
        audit.abandon()


@pytest.fixture
def tree(make_loopfs: Callable[..., LoopFs]) -> Path:
    """A directory `w` on a fresh loop-mounted ext4."""
    root = make_loopfs("ext4", 64).mount / "w"
    root.mkdir()
    return root


def module(script: str, cwd: Path) -> None:
    """Run a "module": a real shell child of this process (in the run's namespace)."""
    subprocess.run(["sh", "-ec", textwrap.dedent(script)], cwd=cwd, check=True)


def changes(result: AuditResult, top: Path) -> set[tuple[str, str, str | None, int]]:
    """The result's changes as (path relative to `top`, change, module, count)."""
    return {(os.path.relpath(c.path, top), c.change, c.module, c.count) for c in result.changes}


def fanotify_result(audit: Audit) -> AuditResult:
    """Finish `audit`, asserting that fanotify saw everything."""
    result = audit.finish()
    assert (result.method, result.reason) == ("fanotify", None)
    return result


def test_a_modules_writes_are_its_own_and_others_only_counted(
    tree: Path, audits: StartAudit
) -> None:
    (tree / "etc").mkdir()
    for name in ("a", "b", "c", "old"):
        (tree / "etc" / name).write_text("x\n")
    audit = audits([tree])
    assert audit.method == "fanotify", audit.reason
    (tree / "by-hs-tx").write_text("outside the namespace")
    audit.window("m1")
    module(
        """
        cp etc/a etc/a.copy
        sed -i s/x/y/ etc/b
        chmod 600 etc/c
        rm etc/old
        echo more >> etc/a
        mkdir d; echo 1 > d/one; mkdir d/sub; echo 2 > d/sub/two
        """,
        tree,
    )
    (tree / "by-hs-tx-during-m1").write_text("still outside")
    audit.window(None)
    module("touch between", tree)
    result = fanotify_result(audit)
    assert changes(result, tree) == {
        ("etc/a", "modified", "m1", 1),
        ("etc/a.copy", "created", "m1", 1),
        ("etc/b", "modified", "m1", 1),
        ("etc/c", "metadata", "m1", 1),
        ("etc/old", "deleted", "m1", 1),
        ("d", "created", "m1", 4),  # itself, one, sub, sub/two
        ("between", "created", None, 1),
    }
    assert result.others >= 2


def test_a_process_started_before_the_audit_is_an_outsider(tree: Path, audits: StartAudit) -> None:
    outsider = subprocess.Popen(
        [PY, "-c", "import sys; sys.stdin.readline(); open('by-outsider', 'w').write('o')"],
        stdin=subprocess.PIPE,
        cwd=tree,
    )
    audit = audits([tree])
    audit.window("m1")
    outsider.communicate(b"go\n", timeout=30)
    module("echo m > by-module", tree)
    result = fanotify_result(audit)
    assert changes(result, tree) == {("by-module", "created", "m1", 1)}
    assert (tree / "by-outsider").exists()
    assert result.others >= 1


def test_short_lived_children_and_orphans_are_attributed(tree: Path, audits: StartAudit) -> None:
    audit = audits([tree])
    audit.window("m1")
    module(
        """
        for i in $(seq 1 20); do sh -c "echo $i > short-$i" & done
        wait
        ( setsid sh -c 'sleep 0.05; echo o > orphan' & )
        while [ ! -s orphan ]; do sleep 0.01; done
        """,
        tree,
    )
    time.sleep(0.2)  # the orphan exits; the reader (its PID 1) reaps it
    reader = audit.reader_pid
    assert reader is not None and not zombie_children(reader)
    result = fanotify_result(audit)
    expected = {(f"short-{i}", "created", "m1", 1) for i in range(1, 21)}
    assert changes(result, tree) == expected | {("orphan", "created", "m1", 1)}


def zombie_children(pid: int) -> list[int]:
    """The pids of exited, unreaped children of `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def test_a_deleted_tree_folds_into_its_top(tree: Path, audits: StartAudit) -> None:
    for d in range(3):
        (tree / "big" / f"d{d}").mkdir(parents=True)
        for i in range(10):
            (tree / "big" / f"d{d}" / f"f{i}").write_text("x")
    audit = audits([tree])
    audit.window("m1")
    module("rm -rf big", tree)
    assert changes(fanotify_result(audit), tree) == {("big", "deleted", "m1", 34)}


def test_directory_renames_are_reported_with_their_new_paths(
    tree: Path, audits: StartAudit
) -> None:
    (tree / "old").mkdir()
    (tree / "old" / "f").write_text("f")
    (tree / "old" / "untouched").write_text("u")
    audit = audits([tree])
    audit.window("m1")
    module(
        """
        echo g > old/g
        sleep 0.1  # the reader names old/ (and caches it) before the rename
        mv old new
        echo h > new/h
        echo more >> new/f
        mkdir tmp; echo a > tmp/a; mv tmp final; echo b > final/b
        mkdir gone; mkdir gone/sub; echo x > gone/sub/x; rm -rf gone
        """,
        tree,
    )
    result = fanotify_result(audit)
    assert changes(result, tree) == {
        ("old", "deleted", "m1", 1),
        ("new", "created", "m1", 1),
        ("new/g", "created", "m1", 1),
        ("new/h", "created", "m1", 1),
        ("new/f", "modified", "m1", 1),
        ("final", "created", "m1", 3),
    }


def test_100k_files_fold_into_their_new_directory(
    make_loopfs: Callable[..., LoopFs], audits: StartAudit
) -> None:
    www = make_loopfs("ext4", 2048).mount / "www" / "x"  # 2 GiB: enough inodes
    www.mkdir(parents=True)
    (www / "package.json").write_text("{}")
    audit = audits([www.parent])
    audit.window("npm")
    started = time.monotonic()
    create = (
        "import os, sys\n"
        "top = os.path.join(sys.argv[1], 'node_modules')\n"
        "for d in range(100):\n"
        "    os.makedirs(f'{top}/p{d}')\n"
        "    for i in range(1000):\n"
        "        open(f'{top}/p{d}/f{i}', 'w').close()\n"
    )
    subprocess.run([PY, "-c", create, str(www)], check=True)
    assert audit.reader_pid is not None
    own_kb = _private_kb(audit.reader_pid)  # it holds the aggregate until the finish
    result = fanotify_result(audit)
    elapsed = time.monotonic() - started
    assert changes(result, www.parent) == {("x/node_modules", "created", "npm", 100_101)}
    assert elapsed < 30, elapsed
    assert own_kb < 100_000, own_kb
    print(f"\n100k files: {elapsed:.2f} s, reader's own memory {own_kb} kB")


def _private_kb(pid: int) -> int:
    """The memory process `pid` holds alone (the reader is forked from the test: what
    it shares with it is not its own)."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    return sum(int(line.split()[1]) for line in rollup if line.startswith("Private_"))


def test_ignores_and_own_names_are_dropped(tree: Path, audits: StartAudit) -> None:
    # an ignore outside the root (its parent dir) does not cut into it
    audit = audits([tree], [tree / "cache", tree.parent])
    audit.window("m1")
    module(
        """
        mkdir -p cache/x; echo c > cache/x/f
        mkdir -p .hs-tx-snapshots/1; echo s > .hs-tx-snapshots/1/f
        echo t > .hs-tx-stage-3
        mkdir .hs-tx-tmp-9; echo t > .hs-tx-tmp-9/f
        echo k > kept
        """,
        tree,
    )
    assert changes(fanotify_result(audit), tree) == {("kept", "created", "m1", 1)}


def test_threads_need_the_own_namespace(tree: Path, audits: StartAudit) -> None:
    audit = audits([tree])
    with pytest.raises(RuntimeError):
        threading.Thread(target=lambda: None).start()
    with audit.outside():
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()
        module("echo o > started-outside", tree)
    audit.window("m1")
    module("echo i > inside", tree)
    result = fanotify_result(audit)
    assert changes(result, tree) == {("inside", "created", "m1", 1)}
    assert result.others >= 1


def test_btrfs_subvolume_mounts_are_watched_through_the_top_level(
    make_loopfs: Callable[..., LoopFs], audits: StartAudit, tmp_path: Path
) -> None:
    fs = make_loopfs("btrfs", 256)
    sh("btrfs", "subvolume", "create", fs.mount / "sub")
    (fs.mount / "w").mkdir()
    view = tmp_path / "subview"
    view.mkdir()
    sh("mount", "-o", "subvol=sub", fs.device, view)
    try:
        audit = audits([fs.mount / "w", view])
        audit.window("m1")
        module("echo a > a; mkdir d; echo b > d/b", view)
        module("echo c > c", fs.mount / "w")
        result = fanotify_result(audit)
        assert {(c.path, c.change, c.module, c.count) for c in result.changes} == {
            (str(view / "a"), "created", "m1", 1),
            (str(view / "d"), "created", "m1", 2),
            (str(fs.mount / "w" / "c"), "created", "m1", 1),
        }
        # watching the subvolume alone: writes elsewhere on the filesystem are not its
        audit = audits([view])
        audit.window("m2")
        module("echo e > e", view)
        module("echo o > outside; mkdir od; rmdir od", fs.mount / "w")
        assert {(c.path, c.module) for c in fanotify_result(audit).changes} == {
            (str(view / "e"), "m2")
        }
    finally:
        sh("umount", "-l", view, check=False)


def test_a_btrfs_root_mounted_as_a_subvolume_is_watched_through_a_private_top_level(
    make_loopfs: Callable[..., LoopFs], audits: StartAudit
) -> None:
    """A Debian root on btrfs is mounted `subvol=@` and nothing mounts the top
    level: the audit reaches it through a mount no other process can see."""
    fs = make_loopfs("btrfs", 256)
    sh("btrfs", "subvolume", "create", fs.mount / "@")
    sh("btrfs", "subvolume", "create", fs.mount / "other")
    (fs.mount / "@" / "etc" / "old").mkdir(parents=True)
    (fs.mount / "@" / "etc" / "old" / "f").write_text("x")
    (fs.mount / "@" / "gone").mkdir()
    (fs.mount / "@" / "gone" / "g").write_text("x")
    sh("umount", fs.mount)
    sh("mount", "-o", "subvol=@", fs.device, fs.mount)
    mounts_before = Path("/proc/self/mountinfo").read_text()

    audit = audits([fs.mount])
    assert audit.method == "fanotify", audit.reason
    assert Path("/proc/self/mountinfo").read_text() == mounts_before
    audit.window("m1")
    module("echo a > etc/a; mv etc/old etc/new; echo y > etc/new/f; rm -r gone", fs.mount)
    result = fanotify_result(audit)

    assert changes(result, fs.mount) == {
        ("etc/a", "created", "m1", 1),
        ("etc/old", "deleted", "m1", 1),
        ("etc/new", "created", "m1", 1),
        ("etc/new/f", "modified", "m1", 1),
        ("gone", "deleted", "m1", 2),
    }


def test_the_scan_sees_changes_since_the_start_but_no_deletions(tree: Path) -> None:
    for name in ("edit", "mode", "gone"):
        (tree / name).write_text("x")
    (tree / "many").mkdir()
    time.sleep(0.03)  # file times come from the coarse clock
    since = time.clock_gettime_ns(5)  # CLOCK_REALTIME_COARSE
    module(
        """
        echo y >> edit; chmod 600 mode; rm gone; echo n > new
        mkdir ign; echo i > ign/f; echo t > .hs-tx-tmp-1
        for i in $(seq 1 40); do echo $i > many/f$i; done
        """,
        tree,
    )
    found = changed_since([str(tree)], [str(tree / "ign")], since, read_mounts())
    assert {(os.path.relpath(c.path, tree), c.change, c.module, c.count) for c in found} == {
        (".", "modified", None, 1),  # entries came and went: a scan only sees that
        ("edit", "modified", None, 1),
        ("mode", "metadata", None, 1),
        ("new", "modified", None, 1),
        ("many", "modified", None, 41),  # 40 files folded, plus the directory itself
    }


def test_without_cap_sys_admin_the_audit_scans(tree: Path) -> None:
    need(shutil.which("capsh") is not None, "needs capsh (libcap2-bin)")
    code = f"""
import json, subprocess, time
from pathlib import Path
from hs_txupdate.audit import Audit
audit = Audit.start([Path({str(tree)!r})], [])
audit.window("m1")
time.sleep(0.03)
subprocess.run(["sh", "-c", "echo x > {tree}/from-module"], check=True)
r = audit.finish()
print(json.dumps({{"method": r.method, "reason": r.reason,
                  "changes": [[c.path, c.module] for c in r.changes]}}))
"""
    done = subprocess.run(
        ["capsh", "--drop=cap_sys_admin", "--", "-c", 'exec "$0" -c "$1"', PY, code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["method"] == "scan"
    assert "fanotify_init" in result["reason"] and "EPERM" in result["reason"]
    assert "deletions" in result["reason"]
    assert [str(tree / "from-module"), None] in result["changes"]


def test_the_forked_reader_holds_none_of_the_parents_files(tree: Path, audits: StartAudit) -> None:
    held = tree / "like-the-lock-file"
    with open(held, "w") as f:
        audit = audits([tree])
        reader = audit.reader_pid
        assert reader is not None
        fds = {
            int(fd): os.readlink(f"/proc/{reader}/fd/{fd}")
            for fd in os.listdir(f"/proc/{reader}/fd")
        }
        assert str(held) not in fds.values() and f.fileno() not in fds
    assert Path(f"/proc/{reader}/comm").read_text().strip() == READER_NAME
    assert os.getsid(reader) == reader, "a session of its own"
    assert Path(f"/proc/{reader}/cwd").resolve() == Path("/")
    assert all(fds[n].startswith("pipe:") for n in (0, 1, 2))
    audit.window("m1")
    module("echo x > written", tree)
    assert changes(fanotify_result(audit), tree) == {("written", "created", "m1", 1)}


def _fanotify_fds() -> int:
    fds = [os.path.join("/proc/self/fd", fd) for fd in os.listdir("/proc/self/fd")]
    return sum("fanotify" in os.readlink(fd) for fd in fds if os.path.exists(fd))


def test_the_group_is_held_until_the_finish_and_not_after(tree: Path, audits: StartAudit) -> None:
    """hs-tx holds the reader's fanotify group too (so the reader's exit, which a run
    waits for, is not the last close), and gives it up at the finish."""
    before = _fanotify_fds()
    audit = audits([tree])
    assert _fanotify_fds() == before + 1
    audit.window("m1")
    module("echo x > written", tree)
    assert changes(fanotify_result(audit), tree) == {("written", "created", "m1", 1)}
    assert _fanotify_fds() == before


def test_the_reader_ends_at_eof_and_takes_the_run_with_it(tree: Path, audits: StartAudit) -> None:
    audit = audits([tree])
    audit.window("m1")
    sleeper = subprocess.Popen(["sleep", "600"])
    reader = audit.reader_pid
    assert reader is not None
    audit._link.proc.stdin.close()  # type: ignore[union-attr]  # as if hs-tx died
    try:
        assert wait_gone(sleeper.pid)  # killed with the namespace
    finally:
        sleeper.kill()
        sleeper.wait()
    # PID 1 of a namespace is gone only once every process in it was reaped
    assert wait_gone(reader)
    result = audit.finish()
    assert result.method == "scan" and "reader" in (result.reason or "")
    subprocess.run(["true"], check=True)  # children can be started again


def test_killing_hs_tx_kills_the_reader_and_the_module(tree: Path) -> None:
    code = f"""
import json, subprocess, time
from pathlib import Path
from hs_txupdate.audit import Audit
audit = Audit.start([Path({str(tree)!r})], [])
audit.window("m1")
child = subprocess.Popen(["sleep", "600"])
print(json.dumps({{"method": audit.method, "reader": audit.reader_pid, "child": child.pid}}),
      flush=True)
time.sleep(600)
"""
    hs_tx = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert hs_tx.stdout is not None
        assert select.select([hs_tx.stdout], [], [], 60)[0], "the helper did not start"
        started = json.loads(hs_tx.stdout.readline())
        assert started["method"] == "fanotify"
    finally:
        os.kill(hs_tx.pid, signal.SIGKILL)
        hs_tx.wait()
    assert wait_gone(started["reader"])
    assert wait_gone(started["child"])
