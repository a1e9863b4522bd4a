"""Benchmark rows: a rollback of 230 changed files of a large tree, and a tar capture,
each taken from a whole `hs-tx update` process as a user runs it.

A module backs up the tree and rewrites 230 of its files, then fails: hs-tx rolls
back. The rollback's time is read from the run's journal (from the first event of
its rollback phase to its last), so it is the rollback alone, measured inside a
real run; the reference restores the same 230 files: `tar -x` of those members of a
GNU tar archive of the tree (tar backend), `snapper undochange` between a snapshot
before and one after the change, the one after taken untimed or timed, and against
the live tree (btrfs; skipped, saying why, without snapper).
The tar capture rows time whole runs of a module that changes nothing, the first
and a second one, against `tar -c` of the tree with the flags hs-tx uses followed by
a sync of the archive (hs-tx's archive is on disk before the run changes anything;
an archive left in the page cache is not the same job).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench_idle import Row

CHANGED = 230
TAR_FLAGS = ["--format=posix", "--sparse", "--xattrs", "--acls", "--numeric-owner"]
TAR_FLAGS += ["--one-file-system"]
HS_TX = str(Path(sys.executable).with_name("hs-tx"))
# rounds of each rollback row (medians shown): nine tar rollbacks in a row took from
# 0.23 to 0.39 s, too wide a spread for a median of three
ROLLBACK_ROUNDS = 7


def changed_files(tree: Path, files: int) -> list[str]:
    """The CHANGED files (relative to the tree's parent) the module rewrites, spread
    over the tree as make_tree laid it out."""
    step = max(1, files // CHANGED)
    names = [f"d{i // 100:04d}/f{i:06d}" for i in range(0, files, step)][:CHANGED]
    return [f"{tree.name}/{name}" for name in names]


def sandbox(base: Path, tree: Path, backend: str, files: int, fail: bool) -> Path:
    """A config under `base` whose one module backs up `tree`, rewrites its changed
    files (`fail`: then fails, so hs-tx rolls back) or changes nothing. Returns it."""
    label = "rollback" if fail else "capture"
    module = base / f"modules-{label}" / "rewrite"
    module.mkdir(parents=True, exist_ok=True)
    index = {
        "metadata": {"schema_version": "1.0.0", "name": "rewrite", "enabled": True},
        "configuration": {"backup_paths": [str(tree)]},
    }
    (module / "index.json").write_text(json.dumps(index))
    names = [str(base / n) for n in changed_files(tree, files)] if fail else []
    (module / "index.py").write_text(
        f"NAMES = {names!r}\n"
        "def main(args):\n"
        "    for name in NAMES:\n"
        "        with open(name, 'wb') as f:\n"
        "            f.write(b'rewritten by the run')\n"
        f"    return {{'success': {not fail}}}\n"
    )
    config = base / f"config-{label}.toml"
    config.write_text(
        f'state_dir = "{base / f"state-{label}"}"\nmodules_dir = "{module.parent}"\n'
        f'[snapshot]\nbackend = "{backend}"\nkeep = 1\n[scope]\nwatch = ["{base}"]\n'
        'system = "off"\n[net]\nguard = false\n'
        '[services]\nmanager = "command"\nrestart = ["/bin/true", "{unit}"]\n'
    )
    return config


def rollback_seconds(config: Path) -> float:
    """Run a failing update under `config`; return how long its rollback took, from
    the journal's events."""
    result = subprocess.run([HS_TX, "--config", str(config), "update"], capture_output=True)
    if result.returncode != 1:
        raise RuntimeError(f"the failing run ended {result.returncode}: {result.stderr!r}")
    times = [
        datetime.fromisoformat(e["at"])
        for e in _newest(config)["events"]
        if e["phase"] == "rollback"
    ]
    return (max(times) - min(times)).total_seconds()


def bench_tar_rollback(
    base: Path, tree: Path, files: int, timed: Callable[[Callable[[], object]], float]
) -> list[Row]:
    """The tar rows: rollback of CHANGED files against `tar -x` of those members, and
    a first and second capture (whole runs) against `tar -c` with hs-tx's flags."""
    archive = base / "ref.tar"

    # durable, as hs-tx's archive is before a run changes anything
    def tar_c() -> None:
        _sh("tar", "-c", *TAR_FLAGS, "-f", archive, "-C", base, tree.name)
        _sh("sync", "--data", archive)

    t_tar_c = timed(tar_c)
    archive.unlink()
    _sh("sync")
    t_plain = timed(lambda: _sh("tar", "-c", *TAR_FLAGS, "-f", archive, "-C", base, tree.name))
    _sh("sync")
    members = changed_files(tree, files)
    rollback, reference, synced = [], [], []
    failing = sandbox(base, tree, "tar", files, fail=True)

    def tar_x() -> None:
        _sh("tar", "-x", "-f", archive, "-C", base, *members)

    for _ in range(ROLLBACK_ROUNDS):
        rollback.append(rollback_seconds(failing))
        _rewrite(base, members)
        reference.append(timed(tar_x))
        _rewrite(base, members)
        synced.append(timed(partial(_then_sync, tar_x, base)))
    what = f"tar: roll back {len(members)} changed files of {files} (in a run)"
    of_those = f"tar -x of those {len(members)}"
    rows: list[Row] = [
        [what, statistics.median(rollback), f"{of_those}, then sync -f", statistics.median(synced)],
        [what, statistics.median(rollback), f"{of_those}, left in the page cache",
         statistics.median(reference)],
    ]  # fmt: skip
    capture = sandbox(base, tree, "tar", files, fail=False)
    argv = [HS_TX, "--config", str(capture), "update"]
    first = timed(lambda: _sh(*argv))
    step_first = capture_seconds(capture, tree)
    second = timed(lambda: _sh(*argv))
    step_second = capture_seconds(capture, tree)
    flags = "tar -c " + " ".join(TAR_FLAGS) + ", then sync of the archive"
    whole = f"tar: hs-tx update backing up {files} files"
    step = f"tar: the capture step of {files} files"
    rows += [
        [f"{whole}, first run", first, flags, t_tar_c],
        [f"{whole}, unchanged, second run", second, f"{whole}, first run", first],
        [f"{step}, first run", step_first, flags, t_tar_c],
        [f"{step}, first run", step_first, "the same tar -c, left in the page cache", t_plain],
        [f"{step}, unchanged, second run", step_second, f"{step}, first run", step_first],
    ]
    return rows


def capture_seconds(config: Path, tree: Path) -> float:
    """How long the newest run under `config` took to snapshot `tree`, from the
    journal's capture events of that path."""
    shown = _newest(config)
    times = [
        datetime.fromisoformat(e["at"])
        for e in shown["events"]
        if e["step"] == "capture" and (e["detail"] or {}).get("path") == str(tree)
    ]
    if len(times) != 2:
        raise RuntimeError(f"the run has no capture of {tree}: {shown['events']!r:.300}")
    return (max(times) - min(times)).total_seconds()


def _newest(config: Path) -> dict[str, Any]:
    """`hs-tx show --json` of the newest transaction under `config`."""
    history = subprocess.run(
        [HS_TX, "--config", str(config), "history", "--json"], capture_output=True, check=True
    )
    newest = max(tx["id"] for tx in json.loads(history.stdout))
    shown = subprocess.run(
        [HS_TX, "--config", str(config), "show", "--json", str(newest)],
        capture_output=True,
        check=True,
    )
    found: dict[str, Any] = json.loads(shown.stdout)
    return found


def _rewrite(base: Path, members: list[str]) -> None:
    for name in members:
        (base / name).write_bytes(b"rewritten by the reference")


def _sh(*argv: object) -> None:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} ended {result.returncode}: {result.stderr[-2000:]}")


def bench_btrfs_rollback(
    base: Path, tree: Path, files: int, timed: Callable[[Callable[[], object]], float]
) -> list[Row]:
    """The btrfs rows: rollback of CHANGED files against `snapper undochange` of the
    same change, snapper run against a config in a private dir (never /etc): given a
    snapshot after the change, taken untimed (so the change is on disk and listed
    before the clock starts); from hs-tx's own start (that snapshot timed too: hs-tx
    takes one to list the change); and against the live tree (`N..0`, no snapshot
    after, snapper compares the trees)."""
    why = _why_no_snapper()
    if why is not None:
        print(f"bench: btrfs rollback row skipped: {why}", file=sys.stderr)
        return []
    members = changed_files(tree, files)
    failing = sandbox(base, tree, "btrfs", files, fail=True)
    rollback, reference, synced, whole, live = [], [], [], [], []
    snapper = _Snapper(base)
    try:
        for _ in range(ROLLBACK_ROUNDS):
            rollback.append(rollback_seconds(failing))
            undo = partial(snapper.undochange, *_changed(snapper, base, members))
            reference.append(timed(undo))
            undo = partial(snapper.undochange, *_changed(snapper, base, members))
            synced.append(timed(partial(_then_sync, undo, base)))
            whole.append(timed(partial(_then_sync, _after_snapshot(snapper, base, members), base)))
            undo = partial(snapper.undochange, _before_change(snapper, base, members), 0)
            live.append(timed(partial(_then_sync, undo, base)))
    finally:
        snapper.close()
    what = f"btrfs: roll back {len(members)} changed files of {files} (in a run)"
    median = statistics.median
    return [
        [what, median(rollback), "snapper undochange of those, then sync -f", median(synced)],
        [what, median(rollback), "snapper undochange of those, left in the page cache",
         median(reference)],
        [what, median(rollback), "snapper create, undochange of those, then sync -f",
         median(whole)],
        [what, median(rollback), "snapper undochange against the live tree, then sync -f",
         median(live)],
    ]  # fmt: skip


def _before_change(snapper: _Snapper, base: Path, members: list[str]) -> int:
    """A snapshot, then members rewritten as a module would; returns the snapshot."""
    before = snapper.create()
    _rewrite(base, members)
    return before


def _after_snapshot(snapper: _Snapper, base: Path, members: list[str]) -> Callable[[], None]:
    """`_before_change`; returns the rest of snapper's rollback from where hs-tx's
    starts: the snapshot after the change, then the undo."""
    before = _before_change(snapper, base, members)
    return lambda: snapper.undochange(before, snapper.create())


def _changed(snapper: _Snapper, base: Path, members: list[str]) -> tuple[int, int]:
    """(a snapshot before, one after) members are rewritten, as a module would."""
    before = _before_change(snapper, base, members)
    return before, snapper.create()


def _then_sync(action: Callable[[], object], base: Path) -> None:
    """`action`, then `sync -f` of the filesystem of `base`: hs-tx's rollback is on disk
    before it says so; a restore left in the page cache is not the same job."""
    action()
    _sh("sync", "-f", base)


def _why_no_snapper() -> str | None:
    """Why snapper cannot run here without writing the host's /etc, or None."""
    if shutil.which("snapper") is None:
        return "snapper is not installed (apt-get install snapper)"
    probe = ["unshare", "--mount", "--propagation", "private", "true"]
    tried = subprocess.run(probe, capture_output=True, text=True)
    if tried.returncode != 0:  # in a chroot, for one: / is no mount point there
        return f"no private mount namespace for its config here: {tried.stderr.strip()}"
    return None


class _Snapper:
    """snapper on the benchmark's btrfs, run by a shell in a private mount namespace
    in which /etc/snapper is a tmpfs and /etc/default/snapper a private copy, so the
    host's /etc is never written (snapper's package made /etc/snapper)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.shell = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-s"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        copy = base / "snapper-default"
        self._do(
            "mount -t tmpfs tmpfs /etc/snapper && mkdir /etc/snapper/configs && "
            f"if [ -e /etc/default/snapper ]; then cp /etc/default/snapper {copy} && "
            f"mount --bind {copy} /etc/default/snapper; fi && "
            f"snapper --no-dbus -c bench create-config {base}"
        )

    def _do(self, command: str) -> str:
        assert self.shell.stdin is not None and self.shell.stdout is not None
        self.shell.stdin.write(f'{command} >/dev/null 2>&1; echo "rc=$?"\n')
        self.shell.stdin.flush()
        line = self.shell.stdout.readline().strip()
        if line != "rc=0":
            raise RuntimeError(f"snapper: {command!r} ended {line}")
        return line

    def create(self) -> int:
        assert self.shell.stdin is not None and self.shell.stdout is not None
        self.shell.stdin.write("snapper --no-dbus -c bench create --print-number\n")
        self.shell.stdin.flush()
        return int(self.shell.stdout.readline())

    def undochange(self, before: int, after: int) -> None:
        self._do(f"snapper --no-dbus -c bench undochange {before}..{after}")

    def close(self) -> None:
        assert self.shell.stdin is not None
        self.shell.stdin.close()
        self.shell.wait()
