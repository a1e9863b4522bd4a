"""SIGINT, SIGTERM and SIGHUP to a running `hs-tx update`: the module's whole process
group is killed, every scope path is rolled back, the run ends rolled_back with exit 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import HOST_PID_SRC, Sandbox, process_gone, tree_state, wait_gone

RUN_TIMEOUT = 90


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name
)
def test_signal_mid_run_rolls_back_and_kills_the_module(
    tar_sandbox: Sandbox, sig: signal.Signals
) -> None:
    sbx = tar_sandbox
    (sbx.root / "active-victimd").touch()  # running before: the rollback restarts it
    app = sbx.data / "app"
    app.mkdir()
    (app / "keep.txt").write_text("original\n")
    (app / "doomed.txt").write_text("will be deleted\n")
    marker = sbx.root / "marker"
    sbx.module(
        "victim",
        f"""
        import os, subprocess, time
        APP = {str(app)!r}

        def main(args):
            open(APP + "/keep.txt", "w").write("changed by the run")
            os.unlink(APP + "/doomed.txt")
            open(APP + "/new.txt", "w").write("created by the run")
            child = subprocess.Popen(["sleep", "300"])
            with open({str(marker)!r} + ".tmp", "w") as f:
                f.write(f"{{host_pid(os.getpid())}} {{host_pid(child.pid)}}\\n")
            os.rename({str(marker)!r} + ".tmp", {str(marker)!r})
            print("changes made, now sleeping", flush=True)
            time.sleep(300)
            return {{"success": True}}
        """
        + textwrap.indent(HOST_PID_SRC, " " * 8),
        backup_paths=[app],
        extra_meta={"timeout": 120, "service_name": "victimd"},
    )
    before = tree_state(app)

    proc = subprocess.Popen(
        [sys.executable, "-m", "hs_txupdate.cli", "--config", str(sbx.config), "update"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    survivors: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                _, err = proc.communicate()
                pytest.fail(f"the module never wrote its marker (exit {proc.returncode}):\n{err}")
            time.sleep(0.05)
        pids = [int(w) for w in marker.read_text().split()]
        assert not any(process_gone(pid) for pid in pids), "the module died before the signal"

        proc.send_signal(sig)
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            if not wait_gone(pid, within=10):
                survivors.append(pid)
                os.kill(pid, signal.SIGKILL)

    assert proc.returncode == 1, err
    assert survivors == [], f"processes of the module survived {sig.name} to hs-tx"
    tx = sbx.journal_json(1)
    assert tx["state"] == "rolled_back", tx
    assert tx["exit_code"] == 1
    assert sig.name in (tx["error"] or ""), tx["error"]
    assert [m["name"] for m in tx["modules"]] == ["victim"]
    assert tx["modules"][0]["status"] != "success"
    assert tree_state(app) == before, "the module's changes survived the rollback"
    assert "restart victimd" in sbx.service_log.read_text()
