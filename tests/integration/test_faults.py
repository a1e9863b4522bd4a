"""Faults contained: a failed rollback blocks every new run until it is repaired, a
module's output stays bounded, a killed hs-tx leaves no module running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.helpers import HOST_PID_SRC, Sandbox, process_gone, sh, tree_state, wait_gone

RUN_TIMEOUT = 120


def immutable_module(sbx: Sandbox) -> None:
    """A module that changes data/app/f, makes it immutable, then fails: the rollback
    cannot put the file back until someone runs `chattr -i`."""
    app = sbx.data / "app"
    app.mkdir()
    (app / "f").write_text("before\n")
    sbx.module(
        "stuck",
        f"""
        import subprocess

        def main(args):
            open({str(app / "f")!r}, "w").write("after\\n")
            subprocess.run(["chattr", "+i", {str(app / "f")!r}], check=True)
            return {{"success": False, "error": "failing after locking the file"}}
        """,
        backup_paths=[app],
    )


def test_a_failed_rollback_blocks_until_recover_repairs_it(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    immutable_module(sbx)
    before = tree_state(sbx.data / "app")
    try:
        first = sbx.hs_tx("update", timeout=RUN_TIMEOUT)
        assert first.returncode == 3, first.stderr
        assert sbx.journal_json(1)["state"] == "rollback_failed"

        again = sbx.hs_tx("update", timeout=RUN_TIMEOUT)
        assert again.returncode == 3, again.stderr
        assert "hs-tx recover" in again.stderr and "--accept-current" in again.stderr
        assert len(json.loads(sbx.hs_tx("history", "--json").stdout)) == 1, "nothing new started"
        assert sbx.hs_tx("status").returncode == 3
        still = sbx.hs_tx("recover")
        assert still.returncode == 3, still.stderr
    finally:
        sh("chattr", "-i", sbx.data / "app/f", check=False)

    repaired = sbx.hs_tx("recover")

    assert repaired.returncode == 0, repaired.stderr
    assert tree_state(sbx.data / "app") == before
    assert sbx.journal_json(1)["state"] == "rolled_back"
    assert sbx.hs_tx("status").returncode == 0


def test_accept_current_unblocks_without_restoring(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    immutable_module(sbx)
    try:
        assert sbx.hs_tx("update", timeout=RUN_TIMEOUT).returncode == 3
    finally:
        sh("chattr", "-i", sbx.data / "app/f", check=False)

    accepted = sbx.hs_tx("recover", "--accept-current")

    assert accepted.returncode == 0, accepted.stderr
    assert (sbx.data / "app/f").read_text() == "after\n", "accepting restores nothing"
    tx = sbx.journal_json(1)
    assert tx["state"] == "rollback_failed"
    assert any(e["step"] == "accept-current" for e in tx["events"])
    assert sbx.hs_tx("status").returncode == 0
    (sbx.modules / "stuck").rename(sbx.root / "stuck-module")
    assert sbx.hs_tx("update", timeout=RUN_TIMEOUT).returncode == 0


def test_a_module_printing_without_newlines_stays_bounded(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    sbx.module(
        "chatty",
        """
        import sys

        def main(args):
            chunk = "x" * (1 << 20)
            for _ in range(200):
                sys.stdout.write(chunk)
            sys.stdout.write("\\nlast line\\n")
            return {"success": True}
        """,
    )
    argv = [sys.executable, "-m", "hs_txupdate.cli", "--config", str(sbx.config), "update"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.05)

    assert proc.returncode == 0
    assert peak < 150 * 1024, f"hs-tx peaked at {peak} KiB for 200 MB of output"
    tail = sbx.journal_json(1)["modules"][0]["output_tail"]
    assert len(tail.encode()) <= 64 * 1024
    assert tail.endswith("last line\n")
    assert "[... line cut by hs-tx]" in tail
    assert os.path.getsize(sbx.state / "journal.db") < 4 << 20


def test_a_killed_hs_tx_leaves_no_module_running(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    pids = sbx.root / "pids"
    app = sbx.data / "app"
    app.mkdir()
    (app / "f").write_text("before\n")
    before = tree_state(app)
    sbx.module(
        "daemonish",
        f"""
        import os, subprocess, time

        def main(args):
            child = subprocess.Popen(["setsid", "sleep", "300"])
            with open({str(pids)!r} + ".tmp", "w") as f:
                f.write(f"{{host_pid(os.getpid())}} {{host_pid(child.pid)}}")
            os.rename({str(pids)!r} + ".tmp", {str(pids)!r})
            while True:
                open({str(app / "f")!r}, "w").write("written by the module\\n")
                time.sleep(0.05)
        """
        + HOST_PID_SRC.replace("\n", "\n        "),
        backup_paths=[app],
    )
    argv = [sys.executable, "-m", "hs_txupdate.cli", "--config", str(sbx.config), "update"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    module_pids: list[int] = []
    try:
        for _ in range(600):
            if pids.exists():
                break
            time.sleep(0.05)
        module_pids = [int(w) for w in pids.read_text().split()]
        assert not any(process_gone(p) for p in module_pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        gone = [wait_gone(p, within=10) for p in module_pids]
        assert all(gone), "a module process outlived hs-tx"

        recovered = sbx.hs_tx("recover")

        assert recovered.returncode == 0, recovered.stderr
        time.sleep(0.3)  # a surviving writer would have rewritten the file by now
        assert tree_state(app) == before
    finally:
        for pid in module_pids:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
