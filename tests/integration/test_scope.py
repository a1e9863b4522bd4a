"""Scope refusals: paths a snapshot cannot cover exactly are refused before anything
changes (exit 2, state aborted), and so is a scope that does not fit on disk."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import LoopFs, Sandbox, need, sh, tree_state

# The module proves whether it ran: a refused transaction must never get this far.
MARKER_MODULE = """
def main(args):
    open({marker!r}, "w").write("ran")
    open({victim!r}, "w").write("changed by the run")
    return {{"success": True}}
"""


def add_module(sbx: Sandbox, backup_paths: list[Path]) -> Path:
    marker = sbx.root / "module-ran"
    victim = sbx.data / "app" / "victim.txt"
    sbx.module(
        "m",
        MARKER_MODULE.format(marker=str(marker), victim=str(victim)),
        backup_paths=backup_paths,
    )
    return marker


def populate(sbx: Sandbox) -> Path:
    app = sbx.data / "app"
    (app / "sub").mkdir(parents=True)
    (app / "victim.txt").write_text("original")
    (app / "sub" / "f").write_text("f")
    return app


@contextmanager
def mounted_tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", where)
    try:
        (where / "on-tmpfs").write_text("x")
        yield where
    finally:
        sh("umount", "-l", where, check=False)


def snapshot_leftovers(sbx: Sandbox) -> list[str]:
    """Anything a snapshot left behind: tar archives and manifests, btrfs snapshots."""
    found = []
    snaps = sbx.state / "snapshots"
    if snaps.exists():
        found += [str(p) for p in snaps.rglob("*")]
    for store in sbx.root.parent.rglob(".hs-tx-snapshots"):
        found += [str(p) for p in store.iterdir()]
    return found


def assert_refused(
    sbx: Sandbox,
    result,
    marker: Path,
    before: dict,
    words: list[str],
) -> dict:
    """Exit 2, the message names the problem, nothing changed, the transaction aborted."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, f"{word!r} not in:\n{result.stderr}"
    assert not marker.exists(), "the module ran although the scope was refused"
    assert {"data": tree_state(sbx.data), "modules": tree_state(sbx.modules)} == before
    assert snapshot_leftovers(sbx) == []
    hist = sbx.hs_tx("history", "--json")
    assert hist.returncode == 0, hist.stderr
    rows = json.loads(hist.stdout)
    assert len(rows) == 1
    assert rows[0]["state"] == "aborted"
    assert rows[0]["exit_code"] == 2
    assert rows[0]["modules_run"] == 0
    return rows[0]


def snapshot_tree(sbx: Sandbox) -> dict:
    return {"data": tree_state(sbx.data), "modules": tree_state(sbx.modules)}


def test_mount_point_inside_backup_path_is_refused(plain_sandbox: Sandbox) -> None:
    need(os.geteuid() == 0, "needs root to mount a tmpfs")
    sbx = plain_sandbox
    app = populate(sbx)
    marker = add_module(sbx, [app])
    with mounted_tmpfs(app / "sub" / "mnt") as mnt:
        before = snapshot_tree(sbx)
        result = sbx.hs_tx("update")
        assert_refused(sbx, result, marker, before, [str(mnt), "mount point"])


def test_loop_fs_mounted_inside_backup_path_is_refused(
    tar_sandbox: Sandbox, make_loopfs: Callable[..., LoopFs]
) -> None:
    """Also when the nested fs is mounted at a path listed by another module (folded)."""
    sbx = tar_sandbox
    app = populate(sbx)
    inner = make_loopfs("ext4", 16, name="inner")
    target = app / "inner"
    target.mkdir()
    sh("mount", "--bind", inner.mount, target)
    try:
        marker = add_module(sbx, [app, target / "data"])
        before = snapshot_tree(sbx)
        result = sbx.hs_tx("update")
        assert_refused(sbx, result, marker, before, [str(target)])
    finally:
        sh("umount", "-l", target, check=False)


def test_nested_btrfs_subvolume_is_refused(make_loopfs: Callable[..., LoopFs]) -> None:
    fs = make_loopfs("btrfs", 256)
    sbx = Sandbox(fs.mount / "sbx").create()
    app = populate(sbx)
    sh("btrfs", "subvolume", "create", app / "sub" / "vol")
    (app / "sub" / "vol" / "inside").write_text("in the nested subvolume")
    marker = add_module(sbx, [app])
    before = snapshot_tree(sbx)

    result = sbx.hs_tx("update")

    assert_refused(sbx, result, marker, before, [str(app / "sub" / "vol"), "subvolume"])
    listed = sh("btrfs", "subvolume", "list", fs.mount).stdout
    assert "sub/vol" in listed
    assert ".hs-tx-snapshots/" not in listed


@pytest.mark.parametrize("how", ["backup_paths", "extra_paths"])
def test_path_containing_the_state_dir_is_refused(plain_sandbox: Sandbox, how: str) -> None:
    sbx = plain_sandbox
    populate(sbx)
    sbx.state.mkdir(mode=0o700)
    if how == "backup_paths":
        marker = add_module(sbx, [sbx.root])
    else:
        marker = add_module(sbx, [])
        sbx.extra_paths = [str(sbx.root)]
        sbx.write_config()
    before = snapshot_tree(sbx)

    result = sbx.hs_tx("update")

    assert_refused(sbx, result, marker, before, [str(sbx.state)])


def test_path_inside_the_state_dir_is_refused(plain_sandbox: Sandbox) -> None:
    sbx = plain_sandbox
    populate(sbx)
    inside = sbx.state / "snapshots"
    inside.mkdir(parents=True, mode=0o700)
    os.chmod(sbx.state, 0o700)
    marker = add_module(sbx, [inside])
    before = snapshot_tree(sbx)

    result = sbx.hs_tx("update")

    assert result.returncode == 2, result.stderr
    assert str(sbx.state) in result.stderr
    assert not marker.exists()
    assert snapshot_tree(sbx) == before


def test_socket_inside_backup_path_is_refused(plain_sandbox: Sandbox) -> None:
    sbx = plain_sandbox
    app = populate(sbx)
    sock_path = app / "sub" / "s.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(sock_path))
        marker = add_module(sbx, [app])
        before = snapshot_tree(sbx)
        result = sbx.hs_tx("update")
        assert_refused(sbx, result, marker, before, [str(sock_path), "socket"])
    finally:
        sock.close()


def test_too_little_free_space_is_refused(
    tar_sandbox: Sandbox, make_loopfs: Callable[..., LoopFs]
) -> None:
    sbx = tar_sandbox
    tiny = make_loopfs("ext4", 16, name="tiny")
    state = tiny.mount / "state"
    sbx.write_config(backend="tar")
    sbx.config.write_text(
        sbx.config.read_text().replace(f'state_dir = "{sbx.state}"', f'state_dir = "{state}"')
    )
    app = populate(sbx)
    with open(app / "big.bin", "wb") as f:
        for _ in range(40):
            f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())
    assert os.stat(app / "big.bin").st_blocks * 512 >= 40 << 20, "the data must be real"
    marker = add_module(sbx, [app])
    before = snapshot_tree(sbx)

    result = sbx.hs_tx("update")

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "free space" in result.stderr.lower(), result.stderr
    assert str(tiny.mount) in result.stderr, "name the filesystem that is too small"
    assert not marker.exists()
    assert snapshot_tree(sbx) == before
    leftovers = list((state / "snapshots").rglob("*")) if (state / "snapshots").exists() else []
    assert leftovers == [], "no partial archive may be left on the full filesystem"
    rows = json.loads(sbx.hs_tx("history", "--json").stdout)
    assert [r["state"] for r in rows] == ["aborted"]
