"""Benchmark: hs-tx against the reference tools, measured in the same run.

Needs root (loop devices). Builds trees on a loop-mounted btrfs and ext4 and a
journal of many transactions, then prints one table: each hs-tx operation, the
reference doing the nearest equivalent job, both times, their ratio, and (for
whole `hs-tx` processes) the peak memory. Whole processes are timed as the
median of several runs.

    .venv/bin/python scripts/bench.py [--files N] [--size-kib K] [--history N]
        [--memory-files N] [--modules 0,10,50] [--orchestrator PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_idle import Command, Row, bench_guard, bench_idle
from bench_memory import bench_tar_memory
from bench_rollback import bench_btrfs_rollback, bench_tar_rollback
from tabulate import tabulate

from hs_txupdate.core.config import Config
from hs_txupdate.core.context import ensure_state_dir
from hs_txupdate.core.scope import ScopeEntry
from hs_txupdate.core.snapshots import capture_scope, restore_path
from hs_txupdate.journal import Journal, Kind, RunStatus, State
from hs_txupdate.modules.discovery import load_module
from hs_txupdate.modules.runner import run_module


def sh(*argv: object) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True).stdout


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


class Loop:
    """A loop-mounted filesystem in a sparse image, removed by close()."""

    def __init__(self, top: Path, fstype: str, size_mb: int) -> None:
        self.image, self.mount = top / f"{fstype}.img", top / fstype
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        sh(f"mkfs.{fstype}", "-q", "-F" if fstype == "ext4" else "-f", self.image)
        self.device = sh("losetup", "--find", "--show", self.image).strip()
        self.mount.mkdir()
        sh("mount", self.device, self.mount)

    def close(self) -> None:
        _wait_for_background()  # a space measurement still reading it keeps it busy
        subprocess.run(["umount", self.mount], check=False)
        subprocess.run(["losetup", "-d", self.device], check=False)


def make_tree(root: Path, files: int, size: int) -> None:
    block = os.urandom(size)
    for i in range(files):
        d = root / f"d{i // 100:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}").write_bytes(block[i % 97 :] + block[: i % 97])
    sh("sync")
    time.sleep(0.5)  # past the ctime margin: files as old as in real life


def bench_fs(fs: Loop, backend: str, files: int, size: int, rows: list[Row]) -> None:
    base = fs.mount
    tree = base / "tree"
    make_tree(tree, files, size)
    config = Config(state_dir=base / "state", modules_dir=base, snapshot_backend=backend)
    ensure_state_dir(config.state_dir)
    journal = Journal(config.journal_path)
    mib = files * size / (1 << 20)
    entry = [ScopeEntry(tree, True, backend, 0)]

    tx = journal.begin(Kind.UPDATE, ["bench"], "root", "bench")
    t_capture = timed(lambda: capture_scope(config, journal, tx, entry))
    if backend == "btrfs":  # the snapshot step's rows: bench_btrfs_scaling
        ref_dest = base / "ref-snap"
        sh("btrfs", "subvolume", "snapshot", "-r", base, ref_dest)
    else:
        ref_dest = base / "ref.tar"
        # durable, as hs-tx's archive is before a run changes anything
        t_ref = timed(
            lambda: (sh("tar", "-cf", ref_dest, "-C", base, "tree"), sh("sync", "--data", ref_dest))
        )
        what = f"tar: snapshot {files} files, {mib:.0f} MiB"
        rows.append([what, t_capture, "tar -c, then sync of the archive", t_ref])

    recorded = journal.transaction(tx)
    assert recorded is not None
    info = recorded.paths[0]
    victim = tree / "d0000" / "f000000"
    victim.write_bytes(b"changed by the run")
    t_restore = timed(lambda: restore_path(config, journal, tx, info))
    if backend == "btrfs":
        copy = base / "ref-copy"
        src = ref_dest / "tree"
        t_full = timed(lambda: sh("cp", "-a", "--reflink=always", src, copy))
        full_name = "cp -a --reflink=always (whole tree)"
    else:
        out = base / "ref-x"
        out.mkdir()
        t_full = timed(lambda: sh("tar", "-xf", ref_dest, "-C", out))
        full_name = "tar -x (whole tree)"
    rows.append([f"{backend}: roll back 1 changed file of {files}", t_restore, full_name, t_full])
    journal.close()


def processes(commands: list[Command], runs: int = 5) -> list[tuple[float, int]]:
    """(median seconds, peak RSS in KiB) of each whole process in `commands` (argv and
    environment, None for this one's), run `runs` rounds of one each, in turn: a passing
    disturbance of the machine hits all alike. Stops the benchmark, saying why, when a
    command fails: a failed run measures nothing.

    The peak is GNU time's: a child forked from this (big) process would count its
    parent's pages until it execs.
    """
    times: list[list[float]] = [[] for _ in commands]
    peaks = [0 for _ in commands]
    with tempfile.NamedTemporaryFile("r") as rss:
        for _ in range(runs):
            for n, (argv, env) in enumerate(commands):
                _wait_for_background()
                start = time.perf_counter()
                done = subprocess.run(
                    ["/usr/bin/time", "-f", "%M", "-o", rss.name, *argv],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    check=False,
                )
                times[n].append(time.perf_counter() - start)
                if done.returncode != 0:  # a failed run is no measurement of the work
                    tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
                    raise SystemExit(
                        f"bench: {' '.join(argv)} exited {done.returncode}: {' | '.join(tail)}"
                    )
                rss.seek(0)
                peaks[n] = max(peaks[n], int(rss.read().split()[-1]))
    return [(statistics.median(t), peak) for t, peak in zip(times, peaks, strict=True)]


def _wait_for_background(within: float = 120) -> None:
    """Wait until the space measurement a commit started in a process of its own (see
    core.space.measure_later) is done: a run does not wait for it, so it would
    otherwise eat into the time of the next run measured here."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        busy = False
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                busy = busy or b"hs_txupdate.core.space" in cmdline.read_bytes()
            except OSError:
                continue
        if not busy:
            return
        time.sleep(0.05)


def seed_journal(state_dir: Path, count: int) -> None:
    """A journal of `count` committed updates, one module run each."""
    state_dir.mkdir(mode=0o700, parents=True)
    journal = Journal(state_dir / "journal.db")
    for _ in range(count):
        tx = journal.begin(Kind.UPDATE, ["hs-tx", "update"], "root", "bench")
        run = journal.start_module_run(tx, "m", "1.0.0")
        journal.finish_module_run(run, RunStatus.SUCCESS, duration_s=0.1)
        journal.set_state(tx, State.COMMITTED, exit_code=0)
    journal.close()


COMMAND_ROUNDS = 11  # rounds of the short whole-process rows: each takes a tenth of a second


def bench_commands(top: Path, history: int, rows: list[Row]) -> None:
    """Whole `hs-tx` processes (start-up, reading the journal) against `python -c pass`,
    and each journal command over `history` transactions against the same over 10. Each
    command is run with both journals and `python -c pass` in turn, round by round."""
    hs_tx = str(Path(sys.executable).with_name("hs-tx"))
    python: Command = ([sys.executable, "-c", "pass"], None)
    reference = "python -c pass"
    for args in (["--help"], ["--version"]):
        (t, rss), (base_t, _) = processes([([hs_tx, *args], None), python], COMMAND_ROUNDS)
        rows.append([f"hs-tx {' '.join(args)}", t, reference, base_t, rss])
    configs = {}
    for count in sorted({10, history}):
        root = top / f"journal{count}"
        seed_journal(root / "state", count)
        configs[count] = root / "config.toml"
        configs[count].write_text(f'state_dir = "{root / "state"}"\n[net]\nguard = false\n')
    for args in (["history"], ["show", "1"], ["status"]):
        commands: list[Command] = [
            ([hs_tx, "--config", str(config), *args], None) for config in configs.values()
        ]
        *measured, (base_t, _) = processes([*commands, python], COMMAND_ROUNDS)
        what = f"hs-tx {' '.join(args)}"
        for count, (t, rss) in zip(configs, measured, strict=True):
            rows.append([f"{what}, {count} transactions", t, reference, base_t, rss])
        if len(measured) == 2:
            (t_few, _), (t_many, rss) = measured
            rows.append(
                [f"{what}, {history} transactions", t_many, f"{what}, 10 transactions", t_few, rss]
            )


def bench_worker(top: Path, rows: list[Row], runs: int = 20) -> None:
    """What running a module in its own worker process costs, against a bare interpreter."""
    mod = top / "modules" / "noop"
    mod.mkdir(parents=True)
    (mod / "index.json").write_text('{"metadata": {"schema_version": "1.0.0"}}')
    (mod / "index.py").write_text("def main(args):\n    return {'success': True}\n")
    module = load_module(mod)
    t_worker = timed(lambda: [run_module(module) for _ in range(runs)]) / runs
    t_python = timed(lambda: [sh(sys.executable, "-c", "pass") for _ in range(runs)]) / runs
    rows.append(["run one module in its own worker", t_worker, "python -c pass", t_python])


SMALL_FILES, SMALL_KIB = 200, 100  # the small tree the btrfs rows compare against
STEP_ROUNDS = 15  # paired rounds of btrfs snapshot steps (medians shown): each takes ms


class BtrfsTree:
    """A fresh loop-mounted btrfs holding `tree/`, `files` files of `size` bytes, and a
    journal for snapshot steps; close() removes it."""

    def __init__(self, top: Path, files: int, size: int) -> None:
        top.mkdir()
        self.fs = Loop(top, "btrfs", max(1024, files * size * 3 >> 20))
        self.tree = self.fs.mount / "tree"
        make_tree(self.tree, files, size)
        self.config = Config(state_dir=self.fs.mount / "state-step", modules_dir=self.fs.mount)
        ensure_state_dir(self.config.state_dir)  # as hs-tx makes it
        self.journal = Journal(self.config.journal_path)
        self.refs = 0
        self.label = f"{files} files ({files * size >> 20} MiB)"

    def step(self) -> float:
        """Seconds of the snapshot step of a new transaction with the tree as its path."""
        tx = self.journal.begin(Kind.UPDATE, ["bench"], "root", "bench")
        entry = [ScopeEntry(self.tree, True, "btrfs", 0)]
        return timed(lambda: capture_scope(self.config, self.journal, tx, entry))

    def reference(self) -> float:
        """Seconds of `btrfs subvolume snapshot -r` of the subvolume holding the tree."""
        self.refs += 1
        dest = self.fs.mount / f"ref-snap-{self.refs}"
        return timed(lambda: sh("btrfs", "subvolume", "snapshot", "-r", self.fs.mount, dest))

    def close(self) -> None:
        self.journal.close()
        self.fs.close()


def bench_btrfs_scaling(top: Path, files: int, size: int, rows: list[Row]) -> None:
    """The btrfs snapshot step at the large tree against the same at the small one and
    against `btrfs subvolume snapshot -r`, and a whole `hs-tx update` (one module, one
    btrfs backup path, one file changed, committed) at both trees: btrfs snapshots
    should cost the same whatever the tree holds. The two trees are measured in turn,
    round by round, so a passing disturbance of the machine hits both alike."""
    small = BtrfsTree(top / "small", SMALL_FILES, SMALL_KIB << 10)
    try:
        large = BtrfsTree(top / "large", files, size)
        try:
            _snapshot_rows(small, large, rows)
            _update_rows(small, large, rows)
        finally:
            large.close()
    finally:
        small.close()


def _snapshot_rows(small: BtrfsTree, large: BtrfsTree, rows: list[Row]) -> None:
    steps_small, steps_large, refs = [], [], []
    for _ in range(STEP_ROUNDS):
        steps_small.append(small.step())
        steps_large.append(large.step())
        refs.append(large.reference())
    step = statistics.median(steps_large)
    what = f"btrfs: snapshot step, {large.label}"
    rows.append([what, step, f"the same at {small.label}", statistics.median(steps_small)])
    rows.append([what, step, "btrfs subvolume snapshot -r", statistics.median(refs)])


def _update_rows(small: BtrfsTree, large: BtrfsTree, rows: list[Row]) -> None:
    hs_tx = str(Path(sys.executable).with_name("hs-tx"))
    for system, what in (("off", "one btrfs path of"), ("on", "whole-system scope over")):
        commands: list[Command] = [
            ([hs_tx, "--config", str(_update_sandbox(tree.fs.mount, system)), "update"], None)
            for tree in (small, large)
        ]
        (t_small, _), (t_large, rss) = processes(commands, runs=7)
        label = f"hs-tx update, {what} {large.label}"
        rows.append([label, t_large, f"the same at {small.label}", t_small, rss])


def _update_sandbox(base: Path, system: str) -> Path:
    """A config and modules dir under `base` for one whole update: a module backing up
    `base/tree` that changes one file in it; `[scope] system` as given. Returns the
    config file."""
    module = base / "modules" / "touch"
    module.mkdir(parents=True, exist_ok=True)
    index = {
        "metadata": {"schema_version": "1.0.0", "name": "touch", "enabled": True},
        "configuration": {"backup_paths": [str(base / "tree")]},
    }
    (module / "index.json").write_text(json.dumps(index))
    victim = base / "tree" / "d0000" / "f000000"
    (module / "index.py").write_text(
        f"def main(args):\n    open({str(victim)!r}, 'ab').write(b'x')\n"
        "    return {'success': True}\n"
    )
    config = base / f"config-{system}.toml"
    config.write_text(
        f'state_dir = "{base / "state"}"\nmodules_dir = "{base / "modules"}"\n'
        f'[snapshot]\nbackend = "btrfs"\nkeep = 2\n[scope]\nwatch = ["{base}"]\n'
        f'system = "{system}"\n[net]\nguard = false\n'
    )
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--size-kib", type=int, default=64)
    parser.add_argument("--history", type=int, default=10000, help="transactions in the journal")
    parser.add_argument(
        "--memory-files",
        type=int,
        default=200_000,
        help="small files of the tree whose peak memory is compared with a tenth of it",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument(
        "--modules",
        default="0,10,50",
        help="module counts of the update with nothing to do (comma-separated)",
    )
    parser.add_argument(
        "--orchestrator",
        metavar="PATH",
        type=Path,
        help="a checkout of homeserversltd/updates: adds the rows against the orchestrator",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root for loop devices; run as root", file=sys.stderr)
        return 2
    # as on a box: each Python process measured may keep its bytecode caches (a shell
    # that forbids writing them would time compiling, for hs-tx and the orchestrator)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    top = Path(tempfile.mkdtemp(prefix="hs-tx-bench-"))
    size_mb = max(2048, args.files * args.size_kib * 12 // 1024)  # trees, archives, copies
    rows: list[Row] = []
    loops = []
    try:
        bench_commands(top, args.history, rows)
        counts = tuple(int(n) for n in args.modules.split(","))
        bench_idle(top, counts, args.orchestrator, processes, rows)
        bench_guard(top, 10 if 10 in counts else max(counts), processes, rows)
        bench_worker(top, rows)
        bench_btrfs_scaling(top, args.files, args.size_kib << 10, rows)
        for fstype, backend in (("btrfs", "btrfs"), ("ext4", "tar")):
            fs = Loop(top, fstype, size_mb)
            loops.append(fs)
            bench_fs(fs, backend, args.files, args.size_kib << 10, rows)
            in_a_run = bench_tar_rollback if backend == "tar" else bench_btrfs_rollback
            rows += in_a_run(fs.mount, fs.mount / "tree", args.files, timed)
        rows += bench_tar_memory(top, args.memory_files, Loop)
    finally:
        for fs in loops:
            fs.close()
        shutil.rmtree(top, ignore_errors=True)
    rows = [row if len(row) == 5 else [*row, None] for row in rows]
    table = [
        [op, f"{t:.3f}", ref, f"{r:.3f}", f"{t / r:.2f}", f"{rss >> 10} MiB" if rss else ""]
        for op, t, ref, r, rss in rows
    ]
    headers = ["hs-tx operation", "s", "reference", "s", "ratio", "peak RSS"]
    print(tabulate(table, headers=headers))
    if args.json:
        keys = ("operation", "seconds", "reference", "reference_seconds", "peak_rss_kib")
        Path(args.json).write_text(json.dumps([dict(zip(keys, row, strict=True)) for row in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
