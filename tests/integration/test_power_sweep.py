"""Power-cut sweep (issue 4, item 5): cut the power after every journal event and recover.

A SIGKILL leaves the page cache intact, so the kill sweep cannot catch a missing
fsync. Here the whole sandbox (state dir, modules dir, data) lives on an inner
filesystem (btrfs, then ext4) in an image attached to a loop device with direct
I/O: what the inner filesystem has written to its "disk" is in the image file,
what it only holds in its page cache is not. The image lives on an outer btrfs,
so `cp --reflink=always` copies it in one atomic step.

For each N the harness starts the operation with HS_TX_PAUSE_AT=N (hs-tx stops
itself right after its N-th durable journal event), reflinks the image while
hs-tx is stopped -- that copy is what a power cut at that moment could leave --
kills hs-tx (and any process it started), unmounts and detaches the original,
attaches the copy with direct I/O and mounts it at the same place, runs
`hs-tx recover` (exit 0) and checks the atomicity invariant:
every scope path is exactly as before or exactly as after, and the journal says
which, and nothing is left over (staging or temp entries; the snapshots of a
transaction that did not commit; a committed one keeps intact snapshots for
undo). The harness proves itself: after copying it writes and fsyncs a marker on
the original, which must be absent from the copy. Power cuts fall only right
after a durable event (where hs-tx pauses), not between two of its syscalls.

The inner filesystems are mounted with a long commit interval, so that nothing
reaches the disk by a periodic commit that hs-tx did not ask for: a power cut
can always come just before such a commit, this only makes it deterministic.

By default one scenario per backend is swept at every N -- the rollback on
btrfs (whose fsync does not commit the whole filesystem, so a missing fsync in a
restore shows there), the commit on ext4 -- and the other at a fixed sample of N
(first, last and six spread between); HS_TX_SWEEP_ALL=1 sweeps every N of all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hs_txupdate.audit.link import READER_NAME
from hs_txupdate.core.snapshots import LAZY_PREFIX
from hs_txupdate.journal import Journal, TxInfo
from hs_txupdate.modules.forkserver import SERVER_NAME
from tests.helpers import LoopFs, Sandbox, need, sh, tree_state, wait_gone
from tests.sweep import SWEEP_ALL, points

pytestmark = [pytest.mark.root, pytest.mark.btrfs]

# (backend, scenario) swept at every N by default; the rest at a sample (tests.sweep.points).
FULL_BY_DEFAULT = {("btrfs", "rollback")}
INNER_MB = {"btrfs": 256, "ext4": 128}
# A long commit interval: only what hs-tx makes durable reaches the disk in time.
MOUNT_OPTS = {"btrfs": "commit=300", "ext4": "user_xattr,acl,commit=300"}
STOP_WITHIN_S = 60.0
MARKER = "power-cut-marker"
TX = 1  # the sandbox starts without a journal: the update is transaction 1
SCOPE = ("modules", "data/app", "data/db")  # the modules dir is one scope path
FIXED_NS = 1_700_000_000_123_456_789

ALPHA = """
import os, shutil
D = {path!r}
T = {t}

def main(args):
    with open(D + "/conf.ini", "a") as f:              # modified in place
        f.write("alpha = 2\\n")
    with open(D + "/settings.json.new", "w") as f:     # replaced by rename
        f.write('{{"version": 2}}\\n')
    os.replace(D + "/settings.json.new", D + "/settings.json")
    with open(D + "/new.txt", "w") as f:               # created
        f.write("created by alpha\\n")
    os.makedirs(D + "/newdir/sub")
    with open(D + "/newdir/sub/f", "w") as f:
        f.write("deep\\n")
    os.unlink(D + "/old.txt")                           # deleted
    shutil.rmtree(D + "/olddir")
    # fixed times, so that every committed run ends in the same state
    for rel in ("conf.ini", "settings.json", "new.txt", "newdir/sub/f", "newdir/sub",
                "newdir", "."):
        os.utime(os.path.join(D, rel), ns=(T, T))
    print("alpha changed its files")
    return {{"success": True}}
"""

BETA = """
import os
D = {path!r}
T = {t}

def main(args):
    with open(D + "/data.bin", "r+b") as f:            # overwritten in place
        f.seek(4096)
        f.write(b"B" * 8192)
    os.chmod(D + "/data.bin", 0o600)
    with open(D + "/journal.log", "w") as f:           # created
        f.write("beta ran\\n")
    os.unlink(D + "/index")                             # deleted
    for rel in ("data.bin", "journal.log", "."):
        os.utime(os.path.join(D, rel), ns=(T, T))
    print("beta changed its files")
    if {fail!r}:
        return {{"success": False, "error": "deliberate failure"}}
    return {{"success": True}}
"""


# --- the inner disk ---------------------------------------------------------------------
def _unmount(mount: Path) -> None:
    """Unmount `mount`, retrying while processes that were just killed let go of it."""
    for _ in range(100):
        if not mount.is_mount():
            return
        if sh("umount", mount, check=False).returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"cannot unmount {mount}: {sh('umount', mount, check=False).stderr}")


@dataclass
class Disk:
    """An inner filesystem image on the outer btrfs, attached with direct I/O."""

    fstype: str
    image: Path
    mount: Path
    device: str = ""

    def attach(self) -> Disk:
        """Attach the image to a loop device with direct I/O (checked) and mount it."""
        self.device = sh("losetup", "--find", "--show", "--direct-io=on", self.image).stdout
        self.device = self.device.strip()
        dio = Path(f"/sys/block/{Path(self.device).name}/loop/dio").read_text().strip()
        assert dio == "1", f"{self.device} does not use direct I/O (dio={dio})"
        self.mount.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", self.fstype, "-o", MOUNT_OPTS[self.fstype], self.device, self.mount)
        return self

    def detach(self) -> None:
        """Unmount, make btrfs forget the device (a copy has the same fs UUID), detach."""
        if not self.device:
            return
        try:
            _unmount(self.mount)
        finally:
            if self.fstype == "btrfs":
                sh("btrfs", "device", "scan", "--forget", self.device, check=False)
            sh("losetup", "-d", self.device, check=False)
            self.device = ""

    def discard(self) -> None:
        """Detach and delete the image."""
        self.detach()
        self.image.unlink(missing_ok=True)


@dataclass
class Rig:
    """The outer btrfs, the inner mount point, and every inner disk made (for cleanup)."""

    fstype: str
    outer: Path
    mount: Path
    logs: Path
    disks: list[Disk] = field(default_factory=list)

    @property
    def sbx(self) -> Sandbox:
        return Sandbox(self.mount / "sbx")

    def disk(self, name: str) -> Disk:
        made = Disk(self.fstype, self.outer / f"{name}.img", self.mount)
        self.disks.append(made)
        return made

    def clone(self, source: Path, name: str) -> Disk:
        """A reflink copy of an image: atomic, since the outer filesystem is btrfs."""
        made = self.disk(name)
        sh("cp", "--reflink=always", source, made.image)
        return made

    def cleanup(self) -> None:
        for made in reversed(self.disks):
            with contextlib.suppress(Exception):
                if made.device and made.mount.is_mount():
                    sh("umount", "-l", made.mount, check=False)
                made.discard()


@pytest.fixture(params=["btrfs", "ext4"])
def rig(
    request: pytest.FixtureRequest, make_loopfs: Callable[..., LoopFs], tmp_path: Path
) -> Iterator[Rig]:
    """An outer btrfs for the images and a mount point for the inner filesystem."""
    fstype = request.param
    need(os.geteuid() == 0, "needs root for loop devices and mounts")
    need(shutil.which("cp") is not None, "needs cp (coreutils)")
    need(shutil.which(f"mkfs.{fstype}") is not None, f"needs mkfs.{fstype}")
    outer = make_loopfs("btrfs", 2048, name="outer")
    made = Rig(fstype, outer.mount, tmp_path / "inner", tmp_path / "logs")
    made.logs.mkdir()
    try:
        yield made
    finally:
        made.cleanup()


# --- the sandbox --------------------------------------------------------------------------
def _populate(sbx: Sandbox, scenario: str) -> None:
    app, db = sbx.data / "app", sbx.data / "db"
    (app / "olddir/b").mkdir(parents=True)
    db.mkdir()
    for rel, text in {
        "conf.ini": "[main]\nalpha = 1\n",
        "settings.json": '{"version": 1}\n',
        "old.txt": "to be deleted\n",
        "olddir/a": "a\n",
        "olddir/b/c": "c\n",
        "keep.txt": "untouched\n",
    }.items():
        (app / rel).write_text(text)
    os.link(app / "keep.txt", app / "keep-hard.txt")
    os.symlink("keep.txt", app / "keep-link")
    os.setxattr(app / "keep.txt", "user.origin", b"base")
    (db / "data.bin").write_bytes(hashlib.sha256(b"seed").digest() * 1024)
    (db / "index").write_text("index\n")
    sbx.module(
        "alpha",
        ALPHA.format(path=str(app), t=FIXED_NS),
        backup_paths=[app],
        extra_meta={"service_name": "alphad", "priority": 10},
    )
    sbx.module(
        "beta",
        BETA.format(path=str(db), t=FIXED_NS, fail=scenario == "rollback"),
        backup_paths=[db],
        extra_meta={"service_name": "betad", "priority": 20},
    )


def scope_state(sbx: Sandbox) -> dict[str, Any]:
    """The exact state (content and metadata) of every path in scope."""
    return {rel: tree_state(sbx.root / rel) for rel in SCOPE}


def read_tx(sbx: Sandbox) -> TxInfo:
    """Transaction TX as journaled (read in-process, through the journal API)."""
    path = sbx.state / "journal.db"
    assert path.is_file(), "the journal is gone"
    journal = Journal(path)
    try:
        info = journal.transaction(TX)
        unfinished = [t.id for t in journal.unfinished()]
    finally:
        journal.close()
    assert info is not None, f"transaction {TX} is missing from the journal"
    assert not unfinished, f"transactions {unfinished} are still unfinished"
    return info


@dataclass
class Reference:
    """What a full, uninterrupted run does: the states to compare with, its events."""

    before: dict[str, Any]
    after: dict[str, Any]
    events: list[str]


def build_base(rig: Rig, scenario: str) -> Path:
    """A fresh inner filesystem with the sandbox on it (no journal yet), unmounted cleanly."""
    base = rig.disk("base")
    with open(base.image, "wb") as f:
        f.truncate(INNER_MB[rig.fstype] << 20)
    if rig.fstype == "btrfs":
        sh("mkfs.btrfs", "-q", "-f", base.image)
    else:
        sh("mkfs.ext4", "-q", "-F", base.image)
    base.attach()
    try:
        sbx = rig.sbx
        sbx.create()
        _populate(sbx, scenario)
    finally:
        base.detach()
    return base.image


def reference_run(rig: Rig, base: Path, scenario: str) -> Reference:
    """Run the update uninterrupted on a copy of the base: count events, record states."""
    disk = rig.clone(base, "reference").attach()
    try:
        sbx = rig.sbx
        before = scope_state(sbx)
        result = sbx.hs_tx("update")
        expected = (0, "committed") if scenario == "commit" else (1, "rolled_back")
        info = read_tx(sbx)
        assert (result.returncode, info.state) == expected, result.stderr
        assert sorted(p.path for p in info.paths) == sorted(str(sbx.root / r) for r in SCOPE)
        after = scope_state(sbx)
        if scenario == "commit":
            assert after != before
            assert after["data/app"]["new.txt"]["mtime_ns"] == FIXED_NS
        else:
            assert after == before
        events = [f"{e.phase}/{e.step}/{e.status}" for e in info.events]
        assert [e.seq for e in info.events] == list(range(1, len(events) + 1))
        return Reference(before, after, events)
    finally:
        disk.discard()


# --- one power cut ------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (module workers run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def start_paused(sbx: Sandbox, n: int, log: Path) -> subprocess.Popen:
    """Start `hs-tx update` with HS_TX_PAUSE_AT=n; return once it has stopped itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HS_TX_")}
    env["HS_TX_PAUSE_AT"] = str(n)
    argv = [sys.executable, "-m", "hs_txupdate.cli", "--config", str(sbx.config), "update"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + STOP_WITHIN_S
    while True:
        fields = _stat_fields(proc.pid)
        if fields is not None and fields[0] == "T":
            return proc
        if proc.poll() is not None:
            raise AssertionError(
                f"hs-tx exited {proc.returncode} without pausing at event {n}:\n"
                + log.read_text(errors="replace")[-2000:]
            )
        if time.monotonic() > deadline:
            kill_all(proc)
            raise AssertionError(f"hs-tx did not stop at event {n} within {STOP_WITHIN_S} s")
        time.sleep(0.005)


def _is_helper(pid: int) -> bool:
    """The write audit's reader or the fork server of module workers (a new interpreter,
    or hs-tx forked): each runs beside hs-tx and writes no file (the server forks a
    worker when hs-tx asks it, and before that a spare, which waits for the request)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/comm", "rb") as f:
            comm = f.read().strip()
    except OSError:
        return False
    forks = comm == SERVER_NAME.encode() or b"hs_txupdate.modules.forkserver" in cmdline
    return comm == READER_NAME.encode() or forks


# the cgroup a module's worker joins first thing (see core.phase2)
_MODULE_CGROUP = re.compile(r"/hs-tx-[0-9a-f]{8}-[0-9]+-[^/\n]+-(main|maintenance)$", re.M)


def _is_waiting(pid: int) -> bool:
    """The fork server, or a spare it forked ahead of a request (perhaps after hs-tx
    paused, or named only then: a forked server names itself once it runs): a helper
    in no module's cgroup, which a worker joins first thing."""
    try:
        return _is_helper(pid) and not _MODULE_CGROUP.search(_cgroup(pid))
    except OSError:
        return False


def _described(pid: int) -> str:
    """What a failure says of process `pid`: its command line, name, state, cgroup."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
            comm = f.read().strip()
        fields = _stat_fields(pid) or ["?"]
        return f"{pid} {comm!r} [{cmdline[:120]}] state {fields[0]} cgroup {_cgroup(pid).strip()}"
    except OSError as exc:
        return f"{pid} ({exc.strerror})"


def _cgroup(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
        return f.read()


def kill_all(proc: subprocess.Popen) -> list[int]:
    """SIGKILL hs-tx and everything it started (module workers run in sessions of
    their own, so not in its process group); return the pids of those it started."""
    kids = descendants(proc.pid)
    for pid in [proc.pid, *kids]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for pid in kids:
        assert wait_gone(pid, 10), f"process {pid} that hs-tx started survived SIGKILL"
    return kids


def power_cut(rig: Rig, disk: Disk, proc: subprocess.Popen, n: int) -> Disk:
    """Copy the stopped system's disk, kill hs-tx, and boot the copy in its place."""
    helpers = [pid for pid in descendants(proc.pid) if _is_helper(pid)]
    cut = rig.clone(disk.image, f"cut-{n}")  # what a power cut now would leave
    marker = rig.mount / MARKER
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"written after the copy\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(rig.mount, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    # the audit's reader and the fork server run beside a paused hs-tx, writing no file;
    # so does a spare the server forks meanwhile, waiting for a request: stopped now (it
    # can fork no more), each is told from a worker by its cgroup
    for pid in descendants(proc.pid):
        if _is_helper(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
    stopped = descendants(proc.pid)
    helpers += [pid for pid in stopped if _is_waiting(pid)]
    seen = {pid: _described(pid) for pid in stopped if pid not in helpers}
    running = [pid for pid in kill_all(proc) if pid not in helpers]
    assert not running, (
        f"processes {running} that hs-tx started ran while it was paused: "
        + "; ".join(seen.get(pid, "?") for pid in running)
    )
    disk.discard()
    cut.attach()
    assert not (rig.mount / MARKER).exists(), "the copy holds a write made after it was taken"
    return cut


# --- the invariant ------------------------------------------------------------------------
def _leftovers(sbx: Sandbox) -> list[str]:
    """Staging and temp entries an interrupted run may leave, wherever they are."""
    found = []
    for dirpath, dirnames, filenames in os.walk(sbx.root):
        dirnames[:] = [d for d in dirnames if d != ".hs-tx-snapshots"]
        for name in dirnames + filenames:
            if name.startswith((".hs-tx-stage-", ".hs-tx-tmp-")) or name.endswith(".partial"):
                found.append(os.path.join(dirpath, name))
    return found


def _snapshots_left(rig: Rig, sbx: Sandbox) -> list[str]:
    """Snapshots of transaction TX still on disk (tar archives, manifests, btrfs)."""
    left = []
    tx_dir = sbx.tx_dir(TX)
    if tx_dir.exists():
        left += [str(p) for p in tx_dir.iterdir()] or [str(tx_dir)]
    store = rig.mount / ".hs-tx-snapshots"
    if store.is_dir():
        left += [str(p) for p in store.glob(f"{sbx.tx_key(TX)}-*")]
    return left


def _archive_checksum(archive: Path, recorded: str | None) -> str:
    """The checksum of `archive` as hs-tx records it: the SHA-256 of its bytes, or, with
    an index (`index:`), of the index, when every chunk (of the size its first line
    names) has the digest it lists."""
    if not (recorded or "").startswith("index:"):
        return hashlib.sha256(archive.read_bytes()).hexdigest()
    index = archive.with_name(archive.name + ".index").read_bytes()
    head, *sums = index.split(b"\nmembers\n")[0].decode().split("\n")
    size = int(head.split()[-1])
    data = archive.read_bytes()
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    assert [hashlib.sha256(c).hexdigest() for c in chunks] == sums, f"{archive}: a chunk differs"
    return "index:" + hashlib.sha256(index).hexdigest()


def _check_snapshots_intact(info: TxInfo) -> None:
    """A committed transaction keeps complete snapshots (undo needs them)."""
    for path in info.paths:
        if not path.existed:
            continue
        assert path.manifest, f"no manifest for {path.path}"
        if path.manifest.startswith(LAZY_PREFIX):  # kept in the journal itself
            data = path.manifest[len(LAZY_PREFIX) :].encode()
        else:
            assert Path(path.manifest).is_file(), f"no manifest file for {path.path}"
            data = Path(path.manifest).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        assert digest == path.manifest_sha256, f"manifest of {path.path} fails its checksum"
        assert path.snapshot, f"no snapshot recorded for {path.path}"
        if path.backend == "tar":
            archive = Path(path.snapshot)
            assert archive.is_file(), f"archive {archive} of {path.path} is missing"
            assert _archive_checksum(archive, path.checksum) == path.checksum, (
                f"archive {archive} fails its checksum"
            )
        else:
            snapshot = Path(json.loads(path.snapshot)["snapshot"])
            assert snapshot.is_dir(), f"btrfs snapshot {snapshot} of {path.path} is missing"


def check_recovered(rig: Rig, ref: Reference, scenario: str) -> str:
    """After recovery: before-or-after exactly, as the journal says, nothing left over."""
    sbx = rig.sbx
    info = read_tx(sbx)
    live = scope_state(sbx)
    if info.state == "committed":
        assert scenario == "commit", "a failing update committed"
        problems = [rel for rel in SCOPE if live[rel] != ref.after[rel]]
        assert not problems, f"committed, but {problems} differ from after: {_diff(live, ref)}"
        _check_snapshots_intact(info)
    elif info.state in ("rolled_back", "aborted"):
        problems = [rel for rel in SCOPE if live[rel] != ref.before[rel]]
        assert not problems, f"{info.state}, but {problems} differ from before: {_diff(live, ref)}"
        left = _snapshots_left(rig, sbx)
        assert not left, f"{info.state}, but its snapshots are left: {left}"
    else:
        raise AssertionError(f"transaction {TX} ended {info.state}: {info.error}")
    left = _leftovers(sbx)
    assert not left, f"left over after recovery: {left}"
    return info.state


def _diff(live: dict[str, Any], ref: Reference) -> str:
    """Which entries of the live scope match neither the before nor the after state."""
    out = []
    for rel in SCOPE:
        for name in sorted(set(live[rel]) | set(ref.before[rel]) | set(ref.after[rel])):
            now = live[rel].get(name)
            if now != ref.before[rel].get(name) or now != ref.after[rel].get(name):
                tag = "before" if now == ref.before[rel].get(name) else "?"
                tag = "after" if now == ref.after[rel].get(name) else tag
                out.append(f"{rel}/{name}={tag}")
    return ", ".join(out)


def sweep_point(rig: Rig, base: Path, ref: Reference, scenario: str, n: int) -> str:
    """Power cut right after event N, recover, check; return the final journal state."""
    disk = rig.clone(base, f"run-{n}").attach()
    proc: subprocess.Popen | None = None
    cut: Disk | None = None
    try:
        proc = start_paused(rig.sbx, n, rig.logs / f"update-{n}.log")
        cut = power_cut(rig, disk, proc, n)
        result = rig.sbx.hs_tx("recover")
        assert result.returncode == 0, f"recover exited {result.returncode}: {result.stderr}"
        return check_recovered(rig, ref, scenario)
    finally:
        if proc is not None and proc.poll() is None:
            kill_all(proc)
        if cut is not None:
            cut.discard()
        disk.discard()


@pytest.mark.parametrize("scenario", ["commit", "rollback"])
def test_power_cut_after_every_event(rig: Rig, scenario: str) -> None:
    """A committing update and one that rolls back (its second module fails), cut off
    after event N and recovered: before or after exactly, as the journal says."""
    started = time.monotonic()
    base = build_base(rig, scenario)
    ref = reference_run(rig, base, scenario)
    full = SWEEP_ALL or (rig.fstype, scenario) in FULL_BY_DEFAULT
    chosen = points(len(ref.events), full)
    failures: list[str] = []
    outcomes: dict[int, str] = {}
    for n in chosen:
        try:
            outcomes[n] = sweep_point(rig, base, ref, scenario, n)
        except AssertionError as exc:
            failures.append(f"N={n} (after {ref.events[n - 1]}): {exc}")
    elapsed = time.monotonic() - started
    print(
        f"\npower sweep {rig.fstype}/{scenario}: {len(ref.events)} events, "
        f"swept {len(chosen)} ({'every N' if full else 'sample'}) in {elapsed:.1f} s; "
        f"outcomes {outcomes}"
    )
    assert not failures, "power-cut sweep failed:\n" + "\n".join(failures)
    assert set(outcomes.values()) <= {"committed", "rolled_back", "aborted"}
