"""Benchmark: hs-tx snapshots and rollbacks against the reference tools, same run.

Needs root (loop devices). Builds trees on a loop-mounted btrfs and ext4,
then prints one table: each hs-tx operation, the reference tool doing the
nearest equivalent job, both times and their ratio.

    .venv/bin/python scripts/bench.py [--files N] [--size-kib K]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tabulate import tabulate

from hs_txupdate.core.config import Config
from hs_txupdate.core.scope import ScopeEntry
from hs_txupdate.core.snapshots import capture_scope, restore_path
from hs_txupdate.journal import Journal, Kind
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


def bench_fs(fs: Loop, backend: str, files: int, size: int, rows: list) -> None:
    base = fs.mount
    tree = base / "tree"
    make_tree(tree, files, size)
    config = Config(state_dir=base / "state", modules_dir=base, snapshot_backend=backend)
    config.state_dir.mkdir(mode=0o700)
    journal = Journal(config.journal_path)
    mib = files * size / (1 << 20)
    entry = [ScopeEntry(tree, True, backend, 0)]

    def one_tx() -> tuple[int, float]:
        tx = journal.begin(Kind.UPDATE, ["bench"], "root", "bench")
        return tx, timed(lambda: capture_scope(config, journal, tx, entry))

    tx, t_capture = one_tx()
    if backend == "btrfs":
        ref_dest = base / "ref-snap"
        t_ref = timed(lambda: sh("btrfs", "subvolume", "snapshot", "-r", base, ref_dest))
        ref_name = "btrfs subvolume snapshot -r"
    else:
        ref_dest = base / "ref.tar"
        t_ref = timed(lambda: sh("tar", "-cf", ref_dest, "-C", base, "tree"))
        ref_name = "tar -c"
    rows.append([f"{backend}: snapshot {files} files, {mib:.0f} MiB", t_capture, ref_name, t_ref])

    info = journal.transaction(tx).paths[0]
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


def bench_worker(top: Path, rows: list, runs: int = 20) -> None:
    """What running a module in its own worker process costs, against a bare interpreter."""
    mod = top / "modules" / "noop"
    mod.mkdir(parents=True)
    (mod / "index.json").write_text('{"metadata": {"schema_version": "1.0.0"}}')
    (mod / "index.py").write_text("def main(args):\n    return {'success': True}\n")
    module = load_module(mod)
    t_worker = timed(lambda: [run_module(module) for _ in range(runs)]) / runs
    t_python = timed(lambda: [sh(sys.executable, "-c", "pass") for _ in range(runs)]) / runs
    rows.append(["run one module in its own worker", t_worker, "python -c pass", t_python])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--size-kib", type=int, default=64)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root for loop devices; run as root", file=sys.stderr)
        return 2
    top = Path(tempfile.mkdtemp(prefix="hs-tx-bench-"))
    size_mb = max(1024, args.files * args.size_kib * 6 // 1024)
    rows: list = []
    loops = []
    try:
        bench_worker(top, rows)
        for fstype, backend in (("btrfs", "btrfs"), ("ext4", "tar")):
            fs = Loop(top, fstype, size_mb)
            loops.append(fs)
            bench_fs(fs, backend, args.files, args.size_kib << 10, rows)
    finally:
        for fs in loops:
            fs.close()
        shutil.rmtree(top, ignore_errors=True)
    table = [[op, f"{t:.3f}", ref, f"{r:.3f}", f"{t / r:.2f}"] for op, t, ref, r in rows]
    print(tabulate(table, headers=["hs-tx operation", "s", "reference tool", "s", "ratio"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
