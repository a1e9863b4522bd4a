"""Retention that understands space: `[snapshot] min_free` releases the oldest kept
snapshots before a run, and `hs-tx status` shows what the kept ones hold."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import pytest

from hs_txupdate.core.config import min_free_bytes, parse_min_free
from tests.helpers import LoopFs, Sandbox

BLOB_MB = 24


def _rewriter(sbx: Sandbox) -> None:
    """Module `w` rewrites data/blob with fresh random bytes: each kept snapshot pins
    the version before it."""
    sbx.module(
        "w",
        f"""
        import os
        def main(args):
            with open({str(sbx.data / "blob")!r}, "wb") as f:
                f.write(os.urandom({BLOB_MB} << 20))
            return {{"success": True}}
        """,
        backup_paths=[sbx.data],
    )


def _free_mb(sbx: Sandbox) -> int:
    vfs = os.statvfs(sbx.data)
    return vfs.f_bavail * vfs.f_frsize >> 20


def _measured(sbx: Sandbox, ids: list[int]) -> dict:
    """The space figure `status` shows, once the measurement a commit started in the
    background has covered the transactions `ids` (it never holds up the run)."""
    deadline = time.monotonic() + 60
    while True:
        space = json.loads(sbx.hs_tx("status", "--json").stdout)["snapshot_space"]
        if space and [t["id"] for t in space["transactions"]] == ids:
            return space
        assert time.monotonic() < deadline, f"never measured: {space}"
        time.sleep(0.2)


def test_min_free_releases_the_oldest_snapshots_first(make_loopfs: Callable[..., LoopFs]) -> None:
    fs = make_loopfs("btrfs", 400)
    sbx = Sandbox(fs.mount / "sbx").create()
    (sbx.data / "blob").write_bytes(os.urandom(BLOB_MB << 20))
    _rewriter(sbx)
    for _ in range(3):
        assert sbx.hs_tx("update").returncode == 0
    space = _measured(sbx, [3, 2, 1])
    assert [t["id"] for t in space["transactions"]] == [3, 2, 1]
    assert all(t["bytes"] >= BLOB_MB << 20 for t in space["transactions"][1:]), json.dumps(space)
    assert "kept snapshots:" in sbx.hs_tx("status").stdout

    # ask for a little more than is free: releasing the oldest run's snapshot is enough
    text = sbx.config.read_text().replace(
        "keep = 10", f'keep = 10\nmin_free = "{_free_mb(sbx) + 4}M"'
    )
    sbx.config.write_text(text)
    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert "releasing the snapshots of transaction 1" in result.stderr
    assert "transaction 2" not in result.stderr, result.stderr
    assert sbx.journal_json(1)["paths"][0]["pruned_at"], "the oldest went"
    for tx_id in (2, 3):
        assert all(p["pruned_at"] is None for p in sbx.journal_json(tx_id)["paths"])
    events = [e for e in sbx.journal_json(4)["events"] if e["step"] == "release-for-space"]
    assert len(events) == 1


def test_the_newest_committed_snapshots_are_never_released(
    make_loopfs: Callable[..., LoopFs],
) -> None:
    fs = make_loopfs("btrfs", 320)
    sbx = Sandbox(fs.mount / "sbx").create()
    (sbx.data / "blob").write_bytes(b"x")
    _rewriter(sbx)
    for _ in range(2):
        assert sbx.hs_tx("update").returncode == 0
    text = sbx.config.read_text().replace("keep = 10", 'keep = 10\nmin_free = "99%"')
    sbx.config.write_text(text)

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert sbx.journal_json(1)["paths"][0]["pruned_at"]
    assert all(p["pruned_at"] is None for p in sbx.journal_json(2)["paths"])


@pytest.mark.parametrize(
    ("text", "total", "expected"),
    [
        ("10%", 1000, 100),
        ("0", 1000, 0),
        ("2G", 0, 2 << 30),
        ("500m", 0, 500 << 20),
        ("7K", 0, 7168),
    ],
)
def test_min_free_values(text: str, total: int, expected: int) -> None:
    assert min_free_bytes(text, total) == expected


@pytest.mark.parametrize("text", ["", "100%", "-1", "10 %%", "1.5G", "x", "10P"])
def test_malformed_min_free_is_refused(text: str) -> None:
    assert parse_min_free(text) is None
