"""Fixtures: real loop-mounted btrfs and ext4 filesystems and hs-tx sandboxes on them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import GitSource, LoopFs, Sandbox, need

# hs-tx's workers never write bytecode into module dirs; tests that call a
# module's main() directly must not either, or their before/after trees differ
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"


def _require_loop_tools(fstype: str) -> None:
    need(os.geteuid() == 0, "needs root for loop devices and mounts")
    need(shutil.which("losetup") is not None, "needs losetup (util-linux)")
    need(shutil.which(f"mkfs.{fstype}") is not None, f"needs mkfs.{fstype}")
    if fstype == "btrfs":
        need(shutil.which("btrfs") is not None, "needs btrfs-progs")


@pytest.fixture
def make_loopfs(tmp_path: Path) -> Iterator[Callable[..., LoopFs]]:
    """Factory: make_loopfs('btrfs' | 'ext4', size_mb) -> a mounted LoopFs, always cleaned up."""
    made: list[LoopFs] = []

    def make(fstype: str, size_mb: int = 256, name: str | None = None) -> LoopFs:
        _require_loop_tools(fstype)
        label = name or f"{fstype}{len(made)}"
        fs = LoopFs(fstype, tmp_path / f"{label}.img", tmp_path / label)
        made.append(fs)
        return fs.setup(size_mb)

    yield make
    for fs in reversed(made):
        fs.teardown()


@pytest.fixture(params=["btrfs", "ext4"])
def fs_sandbox(request: pytest.FixtureRequest, make_loopfs: Callable[..., LoopFs]) -> Sandbox:
    """A sandbox on a loop-mounted btrfs (btrfs backend) or ext4 (tar backend)."""
    fs = make_loopfs(request.param, 320 if request.param == "btrfs" else 128)
    return Sandbox(fs.mount / "sbx").create()


@pytest.fixture
def tar_sandbox(make_loopfs: Callable[..., LoopFs]) -> Sandbox:
    """A sandbox on a loop-mounted ext4 (tar backend): cheaper for behaviour tests."""
    fs = make_loopfs("ext4", 128)
    return Sandbox(fs.mount / "sbx").create()


@pytest.fixture
def src(tar_sandbox: Sandbox) -> tuple[Sandbox, GitSource]:
    """A tar sandbox whose [source] is a fresh local bare repository."""
    source = GitSource(tar_sandbox.root / "upstream").create()
    tar_sandbox.source_url = source.url
    tar_sandbox.write_config()
    return tar_sandbox, source


@pytest.fixture
def plain_sandbox(tmp_path: Path) -> Sandbox:
    """A sandbox in the test's temp dir (tar backend), for tests that need no root."""
    return Sandbox(tmp_path / "sbx", backend="tar").create()
