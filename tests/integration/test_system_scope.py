"""Whole-system scope on btrfs: a fake root on a loop-mounted btrfs (etc/, opt/ and
usr/local/ among several subvolumes, one nested in another, a tmpfs at boot/) is the
watched root. Modules that declare nothing write all over it; a rollback and an undo put
back exactly what they wrote, never what another process wrote meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import LoopFs, Sandbox, sh, tree_state

# what a module in the style of the published ones does: no backup_paths, writes to
# /etc, /opt, /usr/local, /var/www, and into a subvolume nested in another one
WRITER = """
import os, shutil
def main(args):
    root = {root!r}
    with open(os.path.join(root, "etc/app.conf"), "a") as f:
        f.write("port = 8080\\n")
    os.makedirs(os.path.join(root, "opt/app/lib"), exist_ok=True)
    open(os.path.join(root, "opt/app/lib/new.so"), "w").write("new")
    os.unlink(os.path.join(root, "usr/local/bin/tool"))
    os.chmod(os.path.join(root, "usr/local/bin/keep"), 0o700)
    open(os.path.join(root, "opt/data/db/state"), "w").write("migrated")
    shutil.rmtree(os.path.join(root, "var/www/site"))
    os.makedirs(os.path.join(root, "var/www/new/static"))
    open(os.path.join(root, "var/www/new/static/a.css"), "w").write("css")
    os.rename(os.path.join(root, "etc/old.d"), os.path.join(root, "etc/new.d"))
    open({stop!r}, "w").close()
    {end}
"""
FAIL = 'raise RuntimeError("deliberate failure")'
SUCCEED = 'return {"success": True}'
# another process on the box: a database that keeps writing its own file meanwhile
DATABASE = """
import os, sys, time
live, stop, log = sys.argv[1:4]
n = 0
while not os.path.exists(stop):
    n += 1
    with open(live, "w") as f:
        f.write(str(n))
    with open(log, "w") as f:
        f.write(str(n))
    time.sleep(0.005)
"""


class FakeRoot:
    """A loop-mounted btrfs laid out like a small Debian root, with a sandbox inside."""

    def __init__(self, fs: LoopFs) -> None:
        self.fs = fs
        self.root = fs.mount
        self.sbx = Sandbox(self.root / "var/lib/hs-tx-test")
        self.boot = self.root / "boot"

    def build(self) -> FakeRoot:
        r = self.root
        for sub in ("opt", "usr/local", "opt/data"):
            (r / sub).parent.mkdir(parents=True, exist_ok=True)
            sh("btrfs", "subvolume", "create", r / sub)
        for d in ("etc/old.d", "usr/local/bin", "opt/data/db", "var/www/site/img", "var/db"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "etc/app.conf").write_text("port = 80\n")
        (r / "etc/old.d/a.conf").write_text("a")
        (r / "usr/local/bin/tool").write_text("#!/bin/sh\n")
        (r / "usr/local/bin/keep").write_text("#!/bin/sh\n")
        os.chmod(r / "usr/local/bin/keep", 0o755)
        (r / "opt/data/db/state").write_text("v1")
        (r / "var/www/site/index.html").write_text("<p>")
        (r / "var/www/site/img/a.png").write_bytes(b"\x89PNG" * 1000)
        (r / "var/db/live").write_text("0")
        self.boot.mkdir()
        sh("mount", "-t", "tmpfs", "tmpfs", self.boot)
        self.sbx.watch = [str(r)]
        self.sbx.system = "auto"
        self.sbx.create()
        return self

    def teardown(self) -> None:
        for point in (self.boot, self.root / "mnt/pool"):
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)

    def state(self) -> dict:
        """The tree's state, without what hs-tx and the database own and without the
        times of directories (a rollback restores entries, not the dirs holding them)."""
        state = tree_state(self.root)
        skip = ("var/lib", "var/db", "boot")
        return {
            rel: {k: v for k, v in e.items() if not (k == "mtime_ns" and e["mode"][0] == "d")}
            for rel, e in state.items()
            if not any(rel == s or rel.startswith(s + "/") for s in skip)
        }


@pytest.fixture
def fake_root(make_loopfs: Callable[..., LoopFs]) -> Iterator[FakeRoot]:
    fake = FakeRoot(make_loopfs("btrfs", 400))
    try:
        yield fake.build()
    finally:
        fake.teardown()


def _module(fake: FakeRoot, end: str, name: str = "writer") -> None:
    fake.sbx.module(
        name, WRITER.format(root=str(fake.root), stop=str(fake.root.parent / "db-stop"), end=end)
    )


def _with_database(
    fake: FakeRoot, run: Callable[[], subprocess.CompletedProcess], live: str = "var/db/live"
):
    """Run `run` while another process keeps writing `live`; return its result and the
    last number that process wrote."""
    log = fake.root.parent / "db.log"
    stop = fake.root.parent / "db-stop"  # outside the watched root
    args = [str(fake.root / live), str(stop), str(log)]
    database = subprocess.Popen([sys.executable, "-c", DATABASE, *args])
    try:
        while not log.exists():
            time.sleep(0.01)
        result = run()
        stop.touch()
        database.wait(timeout=10)
    finally:
        if database.poll() is None:
            database.send_signal(signal.SIGKILL)
            database.wait()
    stop.unlink(missing_ok=True)
    return result, log.read_text()


def test_a_failed_run_puts_back_exactly_what_it_wrote_anywhere(fake_root: FakeRoot) -> None:
    fake = fake_root
    _module(fake, FAIL)
    before = fake.state()

    result, last = _with_database(fake, lambda: fake.sbx.hs_tx("update"))

    assert result.returncode == 1, result.stderr
    assert "every path in scope is as before" in result.stderr
    assert fake.state() == before
    assert (fake.root / "var/db/live").read_text() == last != "0"  # never restored
    tx = fake.sbx.journal_json(1)
    system = sorted(p["path"] for p in tx["paths"] if p["origin"] == "system")
    r = str(fake.root)
    assert system == [r, f"{r}/opt", f"{r}/opt/data", f"{r}/usr/local"]
    assert tx["outside_scope"] == []
    changed = {c["path"] for c in tx["run_changes"]}
    assert f"{r}/etc/app.conf" in changed and f"{r}/var/db/live" not in changed
    assert not list(fake.root.glob(f".hs-tx-snapshots/{fake.sbx.tx_key(1)}-*")), "left behind"


def test_an_undo_puts_back_what_a_committed_run_wrote(fake_root: FakeRoot) -> None:
    fake = fake_root
    _module(fake, SUCCEED)
    before = fake.state()
    result, _ = _with_database(fake, lambda: fake.sbx.hs_tx("update"))
    assert result.returncode == 0, result.stderr
    assert (fake.root / "opt/data/db/state").read_text() == "migrated"

    undone, last = _with_database(fake, lambda: fake.sbx.hs_tx("undo", "1"))

    assert undone.returncode == 0, undone.stderr
    assert fake.state() == before
    assert (fake.root / "var/db/live").read_text() == last


def test_a_drift_since_the_commit_stops_the_undo(fake_root: FakeRoot) -> None:
    fake = fake_root
    _module(fake, SUCCEED)
    result, _ = _with_database(fake, lambda: fake.sbx.hs_tx("update"))
    assert result.returncode == 0, result.stderr
    (fake.root / "etc/app.conf").write_text("edited by hand\n")
    (fake.root / "etc/unrelated").write_text("not the run's")

    refused = fake.sbx.hs_tx("undo", "1")

    assert refused.returncode == 2, refused.stderr
    assert "changed outside hs-tx" in refused.stderr
    assert (fake.root / "etc/app.conf").read_text() == "edited by hand\n"


def test_when_the_audit_loses_events_btrfs_supplies_the_change_list(
    fake_root: FakeRoot,
) -> None:
    fake = fake_root
    _module(fake, FAIL)
    before = fake.state()

    result = fake.sbx.hs_tx("update", env={"HS_TX_LOSE_AUDIT_EVENTS": "1"})

    assert result.returncode == 1, result.stderr
    assert "could not attribute every write" in result.stderr
    assert fake.state() == before
    tx = fake.sbx.journal_json(1)
    decisions = [e for e in tx["events"] if e["step"] == "decision"]
    assert decisions[-1]["detail"]["attribution"] == "incomplete"
    assert (fake.sbx.state / "journal.db").exists()  # the state dir is never restored


def test_a_write_on_another_filesystem_is_reported_not_claimed(fake_root: FakeRoot) -> None:
    fake = fake_root
    boot = fake.boot / "vmlinuz"
    fake.sbx.module(
        "kernel",
        f"def main(args):\n    open({str(boot)!r}, 'w').write('new')\n"
        "    raise RuntimeError('deliberate failure')\n",
    )

    result = fake.sbx.hs_tx("update")

    assert result.returncode == 3, result.stderr
    assert str(boot) in result.stderr and "as before" not in result.stderr
    outside = fake.sbx.journal_json(1)["outside_scope"]
    assert [o["path"] for o in outside] == [str(boot)]


def test_system_on_refuses_a_root_that_is_not_btrfs(tar_sandbox: Sandbox) -> None:
    tar_sandbox.write_config(system="on")

    result = tar_sandbox.hs_tx("update")

    assert result.returncode == 2, result.stderr
    assert "is not on btrfs" in result.stderr


def test_a_check_over_the_system_scope_changes_nothing(fake_root: FakeRoot) -> None:
    fake = fake_root
    _module(fake, SUCCEED)
    before = fake.state()

    result = fake.sbx.hs_tx("update", "--check")

    assert result.returncode == 0, result.stderr
    assert fake.state() == before
    assert "etc/app.conf" in result.stdout, result.stdout
    assert not list(fake.root.glob(".hs-tx-snapshots/*-*-*")), "a check takes no snapshot"


def test_a_module_that_moves_a_nested_subvolume_loses_nothing(fake_root: FakeRoot) -> None:
    """A subvolume moved by a module is never deleted by the rollback: it ends at its
    old place as before, or the run says what it could not put back (exit 3)."""
    fake = fake_root
    data = fake.root / "opt/data"
    fake.sbx.module(
        "mover",
        f"import os\ndef main(args):\n    os.rename({str(data)!r}, {str(data) + '.old'!r})\n"
        "    raise RuntimeError('deliberate failure')\n",
    )

    result = fake.sbx.hs_tx("update")

    assert result.returncode in (1, 3), result.stderr
    assert "hs-tx: error: internal error" not in result.stderr, result.stderr
    where = [p for p in (data, fake.root / "opt/data.old") if (p / "db/state").exists()]
    assert where, "the subvolume's files are gone"
    assert (where[0] / "db/state").read_text() == "v1"
    tx = fake.sbx.journal_json(1)
    assert tx["state"] in ("rolled_back", "rollback_failed"), tx["state"]


def test_each_subvolume_once_and_never_another_tools_snapshot(fake_root: FakeRoot) -> None:
    """The whole filesystem mounted a second time (as snapper and btrbk users do) is the
    same subvolumes again, and a read-only snapshot of another tool is not the run's:
    neither becomes an entry, and the run goes through."""
    fake = fake_root
    pool = fake.root / "mnt/pool"
    pool.mkdir(parents=True)
    sh("mount", "-o", "subvolid=5", fake.fs.device, pool)
    (fake.root / "snaps").mkdir()
    sh("btrfs", "subvolume", "snapshot", "-r", fake.root / "opt", fake.root / "snaps/1")
    _module(fake, SUCCEED)

    result = fake.sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    paths = fake.sbx.journal_json(1)["paths"]
    system = sorted(p["path"] for p in paths if p["origin"] == "system")
    r = str(fake.root)
    assert system == [r, f"{r}/opt", f"{r}/opt/data", f"{r}/usr/local"]


def test_the_state_dir_is_a_subvolume_no_snapshot_holds(fake_root: FakeRoot) -> None:
    """hs-tx makes a missing state dir on btrfs a subvolume of its own (0700): the
    snapshot of the subvolume around it shows an empty directory there, never the
    journal."""
    fake = fake_root
    _module(fake, SUCCEED)

    result = fake.sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    st = os.lstat(fake.sbx.state)
    assert (st.st_ino, st.st_mode & 0o777) == (256, 0o700)
    assert (fake.sbx.state / "journal.db").is_file()
    snapshot = next(p for p in (fake.root / ".hs-tx-snapshots").iterdir() if p.is_dir())
    assert list((snapshot / fake.sbx.state.relative_to(fake.root)).iterdir()) == []


# a module rewriting many files directly in one directory (the audit folds them into it)
MANY = """
import os
def main(args):
    site = os.path.join({root!r}, "var/www/site")
    for i in range(40):
        open(os.path.join(site, f"page{{i}}.html"), "w").write("new")
    open(os.path.join(site, "index.html"), "w").write("<p>new")
    open({stop!r}, "w").close()
    {end}
"""


@pytest.mark.parametrize("how", ["rollback", "undo"])
def test_a_directory_with_many_changes_gets_back_only_the_runs_entries(
    fake_root: FakeRoot, how: str
) -> None:
    """More than 32 entries of one directory changed by a module fold into it; its
    rollback or undo still puts back only those, never the file another process wrote
    in the same directory meanwhile."""
    fake = fake_root
    site = fake.root / "var/www/site"
    (site / "live.log").write_text("0")
    stop = fake.root.parent / "db-stop"
    end = FAIL if how == "rollback" else SUCCEED
    fake.sbx.module("many", MANY.format(root=str(fake.root), stop=str(stop), end=end))
    live = "var/www/site/live.log"

    result, last = _with_database(fake, lambda: fake.sbx.hs_tx("update"), live)
    if how == "undo":
        assert result.returncode == 0, result.stderr
        result, last = _with_database(fake, lambda: fake.sbx.hs_tx("undo", "1"), live)

    assert result.returncode == (1 if how == "rollback" else 0), result.stderr
    assert sorted(p.name for p in site.iterdir()) == ["img", "index.html", "live.log"]
    assert (site / "index.html").read_text() == "<p>"
    assert (site / "live.log").read_text() == last != "0", "another process's file"
    folded = [c for c in fake.sbx.journal_json(1)["run_changes"] if c["path"] == str(site)]
    assert [c["count"] for c in folded] == [41], folded
