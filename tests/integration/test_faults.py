"""Faults contained: a failed rollback blocks every new run until it is repaired, a
module's output stays bounded, a killed hs-tx leaves no module running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers import (
    HOST_PID_SRC,
    GitSource,
    LoopFs,
    Sandbox,
    module_files,
    process_gone,
    sh,
    tree_state,
    wait_gone,
)

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


def test_status_during_a_run_says_it_is_running(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    ready = sbx.root / "ready"
    sbx.module(
        "slow",
        f"""
        import time

        def main(args):
            open({str(ready)!r}, "w").close()
            time.sleep(3)
            return {{"success": True}}
        """,
    )
    argv = [sys.executable, "-m", "hs_txupdate.cli", "--config", str(sbx.config), "update"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if ready.exists():
                break
            time.sleep(0.05)
        result = sbx.hs_tx("status", "--json")
    finally:
        proc.wait(timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads(result.stdout)
    assert info["running"] == {"pid": proc.pid, "tx": 1, "phase": "modules", "module": "slow"}
    assert info["unfinished"] == []
    assert proc.returncode == 0


def test_what_a_module_leaves_running_is_killed_when_it_ends(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    pids = sbx.root / "pids"
    sbx.module(
        "leaver",
        f"""
        import os, subprocess

        def main(args):
            child = subprocess.Popen(["sleep", "300"])          # left in its group
            daemon = subprocess.Popen(
                ["setsid", "sh", "-c", "sleep 300 & echo $! > {pids}.daemon; wait"]
            )
            import time
            for _ in range(100):
                if os.path.exists({str(pids) + ".daemon"!r}):
                    break
                time.sleep(0.02)
            inner = int(open({str(pids) + ".daemon"!r}).read())
            with open({str(pids)!r}, "w") as f:
                f.write(f"{{host_pid(child.pid)}} {{host_pid(daemon.pid)}} {{host_pid(inner)}}")
            return {{"success": True}}
        """
        + HOST_PID_SRC.replace("\n", "\n        "),
    )

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    left = [int(w) for w in pids.read_text().split()]
    try:
        assert all(wait_gone(p, within=10) for p in left), "a process the module left survived"
        run = [e for e in sbx.journal_json(1)["events"] if e["step"] == "run"]
        assert run[0]["detail"]["cgroup"], "the cgroup is journaled before the module starts"
        assert run[-1]["detail"]["killed"] >= 3
    finally:
        for pid in left:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_broken_module_is_repaired_by_the_source_while_the_others_run(
    tar_sandbox: Sandbox, tmp_path: Path
) -> None:
    sbx = tar_sandbox
    source = GitSource(tmp_path / "src").create()
    body = f"""
    def main(args):
        open({str(sbx.data / "fixme.ran")!r}, "w").write("ran")
        return {{"success": True}}
    """
    source.publish({"fixme": module_files("fixme", body, version="1.0.1")})
    sbx.source_url = source.url
    sbx.write_config()
    sbx.module("fixme", body, version="garbage")
    sbx.module("other", f"open({str(sbx.data / 'other.ran')!r}, 'w').write('ran')\n"
               "def main(args):\n    return {'success': True}\n")  # fmt: skip

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    assert "module fixme" in result.stderr and "phase 1 replaces it" in result.stderr
    index = json.loads((sbx.modules / "fixme/index.json").read_text())
    assert index["metadata"]["schema_version"] == "1.0.1"
    assert (sbx.data / "other.ran").exists() and (sbx.data / "fixme.ran").exists()
    assert json.loads(sbx.hs_tx("status", "--json").stdout)["broken_modules"] == []


def test_a_module_deleting_the_journal_is_noticed_and_rolled_back(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    sbx.writer_module()
    before = tree_state(sbx.data)
    sbx.module(
        "zjournal",
        f"""
        import glob, os

        def main(args):
            for path in glob.glob({str(sbx.state / "journal.db") + "*"!r}):
                os.unlink(path)
            return {{"success": True}}
        """,
        extra_meta={"priority": 900},
    )

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 1, result.stderr
    assert "was deleted during the run" in result.stderr
    assert tree_state(sbx.data) == before
    tx = sbx.journal_json(1)  # the journal is back, with the whole transaction
    assert tx["state"] == "rolled_back"
    assert [m["name"] for m in tx["modules"]] == ["w", "zjournal"]


def test_a_journal_moved_aside_is_reported_and_never_blocks_update(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    sbx.writer_module()
    assert sbx.hs_tx("update").returncode == 0
    key = sbx.tx_key(1)
    for path in sbx.state.glob("journal.db*"):
        path.rename(sbx.root / path.name)

    history = sbx.hs_tx("history")
    status = sbx.hs_tx("status", "--json")

    assert history.returncode == 3 and "journal" in history.stderr
    assert "no transactions yet" not in history.stdout
    assert status.returncode == 3
    info = json.loads(status.stdout)
    assert "is missing" in info["journal_missing"]
    assert [o["path"] for o in info["orphan_snapshots"]] == [str(sbx.state / "snapshots" / key)]
    assert sbx.hs_tx("update").returncode == 0, "a missing journal never blocks update"


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _fill(directory: Path, leave: int) -> list[Path]:
    """Files that take all but about `leave` bytes of the filesystem of `directory`,
    reserved blocks included (root may use them)."""
    fillers: list[Path] = []
    chunk = 1 << 30
    while chunk >= 4096:
        vfs = os.statvfs(directory)
        want = min(chunk, vfs.f_bfree * vfs.f_frsize - leave)
        if want < 4096:
            break
        path = directory / f"filler{len(list(directory.glob('filler*')))}"
        if sh("fallocate", "-l", str(want), path, check=False).returncode == 0:
            fillers.append(path)
        else:
            path.unlink(missing_ok=True)
            chunk = want // 2
    return fillers


def test_a_full_disk_during_the_snapshot_aborts_cleanly(
    tar_sandbox: Sandbox, make_loopfs: Callable[..., LoopFs]
) -> None:
    sbx = tar_sandbox
    small = make_loopfs("ext4", 64, name="statefs")
    state = small.mount / "state"
    sbx.config.write_text(sbx.config.read_text().replace(str(sbx.state), str(state)))
    app = sbx.data / "app"
    app.mkdir()
    (app / "big").write_bytes(os.urandom(16 << 20))
    before = tree_state(app)
    sbx.module("w", "def main(args):\n    return {'success': True}\n", backup_paths=[app])
    argv = [sys.executable, "-m", "hs_txupdate.cli", "--config", str(sbx.config), "update"]
    # event 2 is the intent to capture data/app: stop there, fill the disk, go on
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, text=True, env={**os.environ, "HS_TX_PAUSE_AT": "2"}
    )
    try:
        for _ in range(600):
            if _stopped(proc.pid):
                break
            time.sleep(0.02)
        fillers = _fill(small.mount, leave=4 << 20)
        os.kill(proc.pid, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 1, stderr
    assert "aborted" in stderr and "Traceback" not in stderr
    assert list((state / "snapshots").iterdir()) == [], "the partial archive was freed"
    assert tree_state(app) == before

    fillers += _fill(small.mount, leave=0)
    full = sbx.hs_tx("update", timeout=RUN_TIMEOUT)
    assert full.returncode == 3, full.stderr
    errors = [line for line in full.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "full" in errors[0], full.stderr

    for filler in fillers:
        filler.unlink()
    assert sbx.hs_tx("recover").returncode == 0
    assert sbx.hs_tx("update", timeout=RUN_TIMEOUT).returncode == 0
