"""Progress of a run: `update --progress=json` for a web UI's progress bar, and the live
line a terminal shows while a long step runs (never where stderr is no terminal)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

from tests.e2e.test_modules_cmd import counting, ok
from tests.helpers import Sandbox

SLOW = """
import time

def main(args):
    time.sleep(3.5)
    return {"success": True}
"""


def test_progress_json_is_one_object_per_step_with_the_share_of_modules_done(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    for name in ("a", "b", "c", "d"):
        sbx.module(name, counting(sbx, name))

    result = ok(sbx.hs_tx("update", "--progress=json"))

    steps = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(set(s) == {"tx", "phase", "step", "status", "module", "percent"} for s in steps), (
        steps[0]
    )
    runs = [(s["module"], s["status"], s["percent"]) for s in steps if s["step"] == "run"]
    assert runs == [
        ("a", "intent", 0),
        ("a", "done", 25),
        ("b", "intent", 25),
        ("b", "done", 50),
        ("c", "intent", 50),
        ("c", "done", 75),
        ("d", "intent", 75),
        ("d", "done", 100),
    ]
    assert (steps[-1]["phase"], steps[-1]["step"], steps[-1]["percent"]) == (
        "commit",
        "decision",
        100,
    )
    assert [s["percent"] for s in steps if s["phase"] == "snapshot"] == [None, None]
    assert "transaction 1 committed" in result.stderr, "the log lines stay on stderr"
    refused = sbx.hs_tx("update", "--json")
    assert refused.returncode == 2 and "--json goes with --check" in refused.stderr


def run_on_a_terminal(sbx: Sandbox, *args: str) -> tuple[int, str]:
    """Run hs-tx with stderr (and stdout) on a pseudo-terminal; return its exit code and
    everything it wrote there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hs_txupdate.cli", "--config", str(sbx.config), *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal's other side closed: the run is over
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(), b"".join(chunks).decode(errors="replace")


def test_a_terminal_shows_a_live_line_while_a_module_runs_long(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    sbx.module("slow", SLOW)

    code, shown = run_on_a_terminal(sbx, "update")

    assert code == 0, shown
    live = [part for part in shown.split("\r\x1b[K") if part.startswith("hs-tx: running")]
    assert live, shown
    assert all(part.startswith("hs-tx: running module slow ... ") for part in live)
    assert live[-1].rstrip().endswith(" s") and len(live) >= 2, "redrawn as time passes"
    last = shown.rindex("hs-tx: running module slow")
    assert "\r\x1b[K" in shown[last:], "cleared when the module ended"
    assert shown.rstrip().endswith("transaction 1 committed")

    piped = ok(sbx.hs_tx("update"))  # stderr is a pipe: never a live line
    assert "\x1b[K" not in piped.stderr and "\r" not in piped.stderr


def test_a_progress_reader_that_goes_away_ends_the_progress_not_the_run(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    for name in ("a", "b"):
        sbx.module(name, counting(sbx, name))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the web UI is gone before the first step
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hs_txupdate.cli",
            "--config",
            str(sbx.config),
            "update",
            "--progress=json",
        ],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    os.close(write_end)

    assert proc.returncode == 0, proc.stderr
    assert "transaction 1 committed" in proc.stderr and "Traceback" not in proc.stderr
    assert [m["name"] for m in sbx.journal_json(1)["modules"]] == ["a", "b"]
