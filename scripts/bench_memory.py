"""Benchmark rows: peak memory of tar updates as the tree grows, from whole `hs-tx
update` processes as a user runs them.

A tree of many small files (100 bytes each, 100 to a directory) is backed up by a
module that changes nothing, then by one that rewrites 230 of them and fails, so
hs-tx rolls back; each is run twice (the first run of a journal creates it, which
imports its schema machinery) and the second run is reported. The same runs at a
tenth of the files are the reference: memory that does not grow with the tree is a
ratio near 1 in the peak RSS column's rows (the seconds are there for scale).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from bench_idle import Row
from bench_rollback import CHANGED, HS_TX, sandbox

SMALL = 100  # bytes a file


def bench_tar_memory(top: Path, files: int, loop: type) -> list[Row]:
    """The rows for `files` files against `files // 10`, each tree on its own ext4
    loop filesystem (`loop`: bench.Loop) under `top`."""
    runs = {}
    for count in (max(1, files // 10), files):
        (top / f"memory-{count}").mkdir()
        fs = loop(top / f"memory-{count}", "ext4", max(512, count // 40))  # inodes enough
        try:
            runs[count] = _runs(fs.mount, count)
        finally:
            fs.close()
    small, large = runs[max(1, files // 10)], runs[files]
    rows: list[Row] = []
    for what in ("backing up", "rolling back"):
        changed = " " if what == "backing up" else f" {min(CHANGED, files)} of "
        label = f"tar: peak memory, update {what}{changed}{files} small files, second run"
        (t_small, _), (t_large, rss) = small[what], large[what]
        rows.append([label, t_large, f"the same at {max(1, files // 10)} files", t_small, rss])
    return rows


def _runs(base: Path, files: int) -> dict[str, tuple[float, int]]:
    """(seconds, peak RSS KiB) of the second of two runs of each update over a tree of
    `files` small files under `base`."""
    tree = base / "tree"
    for i in range(files):
        folder = tree / f"d{i // 100:05d}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        (folder / f"f{i:07d}").write_bytes(b"x" * SMALL)
    subprocess.run(["sync"], check=True)
    found = {}
    for what, fail in (("backing up", False), ("rolling back", True)):
        config = sandbox(base, tree, "tar", files, fail=fail)
        _point_at_this_layout(base, fail, [str(p) for p in _spread(tree, files)])
        _measured(config, fail)
        found[what] = _measured(config, fail)
    return found


def _spread(tree: Path, files: int) -> list[Path]:
    """CHANGED of the files (all, for fewer), spread over the tree."""
    step = max(1, files // CHANGED)
    return [tree / f"d{i // 100:05d}" / f"f{i:07d}" for i in range(0, files, step)][:CHANGED]


def _point_at_this_layout(base: Path, fail: bool, names: list[str]) -> None:
    """Make the sandbox's module rewrite `names` (sandbox lays out names for its own tree)."""
    module = base / f"modules-{'rollback' if fail else 'capture'}" / "rewrite" / "index.py"
    body = module.read_text().split("\n", 1)[1]
    module.write_text(f"NAMES = {names if fail else []!r}\n{body}")


def _measured(config: Path, fail: bool) -> tuple[float, int]:
    """(seconds, peak RSS KiB) of one `hs-tx update` under `config` (`/usr/bin/time`)."""
    with tempfile.NamedTemporaryFile("r") as out:
        argv = ["/usr/bin/time", "-f", "%e %M", "-o", out.name, HS_TX, "--config", str(config)]
        result = subprocess.run([*argv, "update"], capture_output=True, text=True)
        if result.returncode != (1 if fail else 0):
            raise RuntimeError(f"the run ended {result.returncode}: {result.stderr[-2000:]}")
        seconds, rss = out.read().split()[-2:]
    return float(seconds), int(rss)
