"""The module contract, end to end through the `hs-tx` command: timeouts, failures of
every kind, package modules and the compat shim, re-runs, bad definitions, run order,
lean workers and module output."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import HOST_PID_SRC, Sandbox, process_gone, tree_state, wait_gone

RUN_TIMEOUT = 90  # seconds any single hs-tx run may take before the test fails


# ---------------------------------------------------------------- helpers


def populate(sbx: Sandbox) -> Path:
    """A small data tree a module will change; returns its dir (a backup path)."""
    app = sbx.data / "app"
    app.mkdir()
    (app / "keep.txt").write_text("original\n")
    (app / "doomed.txt").write_text("will be deleted\n")
    return app


def change_code(app: Path) -> str:
    """Python statements (no indentation) that change `app` in three ways."""
    return (
        "import os as _os\n"
        f"open({str(app / 'keep.txt')!r}, 'w').write('changed by the run')\n"
        f"_os.unlink({str(app / 'doomed.txt')!r})\n"
        f"open({str(app / 'new.txt')!r}, 'w').write('created by the run')\n"
    )


def module_row(tx: dict[str, Any], name: str) -> dict[str, Any]:
    """The one module row named `name` in `show --json` output."""
    rows = [m for m in tx["modules"] if m["name"] == name]
    assert len(rows) == 1, tx["modules"]
    return rows[0]


def kill_leftovers(pid_file: Path) -> None:
    """Clean up after a failed test: kill any pid listed in `pid_file` that still runs."""
    if not pid_file.exists():
        return
    for word in pid_file.read_text().split():
        pid = int(word)
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("hs-tx: error:")]


# ---------------------------------------------------------------- timeout


def test_timeout_kills_module_process_group_and_rolls_back(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    app = populate(sbx)
    pids = sbx.root / "slow.pids"
    sbx.module(
        "slow",
        change_code(app)
        + f"""
import os, subprocess, time

def main(args):
    child = subprocess.Popen(["sleep", "300"])
    with open({str(pids)!r}, "w") as f:
        f.write(f"{{host_pid(os.getpid())}} {{host_pid(child.pid)}}\\n")
    print("started background child", flush=True)
    time.sleep(300)
    return {{"success": True}}
"""
        + HOST_PID_SRC,
        backup_paths=[app],
        extra_meta={"timeout": 1},
    )
    before = tree_state(app)

    try:
        started = time.monotonic()
        result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)
        elapsed = time.monotonic() - started
        assert pids.exists(), f"the module never got as far as starting its child:\n{result.stderr}"
        worker_pid, child_pid = (int(w) for w in pids.read_text().split())

        assert result.returncode == 1, result.stderr
        assert elapsed < 30, f"a 1 s timeout took {elapsed:.1f} s to end the run"
        tx = sbx.journal_json(1)
        assert tx["state"] == "rolled_back"
        row = module_row(tx, "slow")
        assert row["status"] == "timeout"
        assert "timed out" in (row["error"] or "")
        assert "started background child" in (row["output_tail"] or "")
        assert tree_state(app) == before, "what the module wrote before timing out is still there"
        assert wait_gone(worker_pid), f"the module's worker {worker_pid} still runs"
        assert wait_gone(child_pid), f"the module's background child {child_pid} still runs"
    finally:
        kill_leftovers(pids)


# ---------------------------------------------------------------- failing modules

FAILURES = {
    # name: (index.py source after the data changes, words the error must contain)
    "import-error": (
        "raise ImportError('no module named frobnicate')\n",
        ["ImportError", "frobnicate"],
    ),
    "no-main": ("def helper(args):\n    return {'success': True}\n", ["no main"]),
    "main-raises": (
        "def main(args):\n    raise RuntimeError('disk on fire')\n",
        ["RuntimeError", "disk on fire"],
    ),
    "returns-none": ("def main(args):\n    return None\n", ["None"]),
    "dict-without-success": (
        "def main(args):\n    return {'status': 'ok'}\n",
        ["without", "success"],
    ),
    "crash": ("import os\n\ndef main(args):\n    os._exit(7)\n", ["crash"]),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failing_module_rolls_back_and_names_the_cause(tar_sandbox: Sandbox, case: str) -> None:
    sbx = tar_sandbox
    app = populate(sbx)
    tail, words = FAILURES[case]
    # the changes happen at import time, so even an import error leaves something to undo
    sbx.module("bad", change_code(app) + tail, backup_paths=[app])
    before = tree_state(app)
    modules_before = tree_state(sbx.modules)

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 1, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    assert "Traceback" not in "\n".join(
        line for line in result.stderr.splitlines() if not line.startswith("[bad] ")
    ), "hs-tx itself failed, not only the module"
    tx = sbx.journal_json(1)
    assert tx["state"] == "rolled_back"
    assert tx["exit_code"] == 1
    row = module_row(tx, "bad")
    assert row["status"] == "failed"
    for word in words:
        assert word in (row["error"] or ""), row["error"]
        assert word in (tx["error"] or ""), tx["error"]
    assert tree_state(app) == before
    assert tree_state(sbx.modules) == modules_before


# ---------------------------------------------------------------- package modules, compat shim


def test_package_module_with_relative_and_compat_imports_commits(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    app = populate(sbx)
    sbx.module(
        "pkg",
        f"""
        from .helper import VALUE
        from updates.index import log_message
        from updates.utils import log_message as lm2

        def main(args):
            open({str(app / "keep.txt")!r}, "w").write(f"value {{VALUE}}")
            log_message(f"helper says {{VALUE}} from {{__name__}}")
            lm2("second logger works")
            return {{"success": True, "message": "done"}}
        """,
        backup_paths=[app],
        files={"__init__.py": "", "helper.py": "VALUE = 4217\n"},
    )

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    assert (app / "keep.txt").read_text() == "value 4217"
    tx = sbx.journal_json(1)
    assert tx["state"] == "committed"
    row = module_row(tx, "pkg")
    assert row["status"] == "success"
    tail = row["output_tail"] or ""
    assert "helper says 4217 from modules.pkg.index" in tail
    assert "second logger works" in tail
    streamed = [line for line in result.stderr.splitlines() if line.startswith("[pkg] ")]
    assert any("helper says 4217" in line for line in streamed), result.stderr
    assert any("second logger works" in line for line in streamed), result.stderr


# ---------------------------------------------------------------- bare False


def test_bare_false_once_runs_again_and_commits(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    app = populate(sbx)
    counter = sbx.root / "again.count"
    sbx.module(
        "again",
        f"""
        import os
        COUNTER = {str(counter)!r}

        def main(args):
            n = int(open(COUNTER).read()) + 1 if os.path.exists(COUNTER) else 1
            open(COUNTER, "w").write(str(n))
            open({str(app / "keep.txt")!r}, "w").write(f"attempt {{n}}")
            if n == 1:
                return False
            return {{"success": True}}
        """,
        backup_paths=[app],
    )

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    assert counter.read_text() == "2", "main() should have run exactly twice"
    assert (app / "keep.txt").read_text() == "attempt 2"
    tx = sbx.journal_json(1)
    assert tx["state"] == "committed"
    assert module_row(tx, "again")["status"] == "success"


def test_bare_false_twice_fails_and_rolls_back(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    app = populate(sbx)
    counter = sbx.root / "again.count"
    sbx.module(
        "again",
        f"""
        import os
        COUNTER = {str(counter)!r}

        def main(args):
            n = int(open(COUNTER).read()) + 1 if os.path.exists(COUNTER) else 1
            open(COUNTER, "w").write(str(n))
            open({str(app / "keep.txt")!r}, "w").write(f"attempt {{n}}")
            return False
        """,
        backup_paths=[app],
    )
    before = tree_state(app)

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 1, result.stderr
    assert counter.read_text() == "2", "main() should have run exactly twice, not more"
    tx = sbx.journal_json(1)
    assert tx["state"] == "rolled_back"
    row = module_row(tx, "again")
    assert row["status"] == "failed"
    assert "twice" in (row["error"] or "")
    assert tree_state(app) == before


# ---------------------------------------------------------------- bad module definitions


def _index(meta: dict[str, Any], backup_paths: list[str]) -> str:
    return json.dumps({"metadata": meta, "configuration": {"backup_paths": backup_paths}})


BAD_DEFINITIONS = {
    # name: (index.json text for module "brokenmod", the field the error must name)
    "invalid-json": (lambda sbx: '{"metadata": {"schema_version": "1.0.0",', "index.json"),
    "no-schema-version": (
        lambda sbx: _index({"name": "brokenmod", "enabled": True}, []),
        "schema_version",
    ),
    "banana-schema-version": (
        lambda sbx: _index({"schema_version": "banana", "name": "brokenmod", "enabled": True}, []),
        "schema_version",
    ),
    "relative-backup-path": (
        lambda sbx: _index({"schema_version": "1.0.0", "name": "brokenmod"}, ["data/app/keep.txt"]),
        "backup_paths",
    ),
    "dotdot-backup-path": (
        lambda sbx: _index(
            {"schema_version": "1.0.0", "name": "brokenmod"}, [f"{sbx.data}/app/../../etc"]
        ),
        "backup_paths",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DEFINITIONS))
def test_a_broken_module_is_reported_and_the_others_run(tar_sandbox: Sandbox, case: str) -> None:
    sbx = tar_sandbox
    app = populate(sbx)
    make_index, field = BAD_DEFINITIONS[case]
    sbx.module(
        "aaa-good",
        change_code(app) + "def main(args):\n    return {'success': True}\n",
        backup_paths=[app],
        extra_meta={"priority": 1},
    )
    broken = sbx.module(
        "brokenmod",
        f"open({str(app / 'brokenmod-ran.txt')!r}, 'w').write('ran')\n"
        "def main(args):\n    return True\n",
        backup_paths=[app],
    )
    (broken / "index.json").write_text(make_index(sbx))

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "brokenmod" in line]
    assert len(warnings) == 1 and field in warnings[0] and "does not run" in warnings[0]
    assert "running module aaa-good" in result.stderr and "[brokenmod]" not in result.stderr
    assert not (app / "brokenmod-ran.txt").exists()
    tx = sbx.journal_json(1)
    assert tx["state"] == "committed"
    broken_events = [e for e in tx["events"] if e["step"] == "broken"]
    assert [m["module"] for m in broken_events[0]["detail"]["modules"]] == ["brokenmod"]
    status = json.loads(sbx.hs_tx("status", "--json").stdout)
    assert [b["name"] for b in status["broken_modules"]] == ["brokenmod"]


# ---------------------------------------------------------------- order, disabled modules


def test_modules_run_by_priority_then_name_and_disabled_ones_do_not_run(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    order = sbx.root / "order.txt"

    def appender(name: str) -> str:
        return f"""
        def main(args):
            with open({str(order)!r}, "a") as f:
                f.write({name!r} + "\\n")
            return {{"success": True}}
        """

    for name, priority in (("b", 50), ("c", 10), ("a", 10)):
        sbx.module(name, appender(name), extra_meta={"priority": priority})
    sbx.module("d", appender("d"), extra_meta={"priority": 1, "enabled": False})

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    assert order.read_text().split() == ["a", "c", "b"]
    tx = sbx.journal_json(1)
    assert tx["state"] == "committed"
    assert [m["name"] for m in tx["modules"]] == ["a", "c", "b"]


# ---------------------------------------------------------------- lean workers


def test_workers_do_not_import_heavy_libraries(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    sbx.module(
        "lean",
        """
        import json, sys

        def main(args):
            heavy = sorted(
                name
                for name in sys.modules
                for root in ("sqlalchemy", "pyroute2")
                if name == root or name.startswith(root + ".")
            )
            print("HEAVY=" + json.dumps(heavy), flush=True)
            return {"success": True}
        """,
    )

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    reported = [
        line.removeprefix("[lean] HEAVY=")
        for line in result.stderr.splitlines()
        if line.startswith("[lean] HEAVY=")
    ]
    assert len(reported) == 1, result.stderr
    assert json.loads(reported[0]) == []


# ---------------------------------------------------------------- module output


def test_output_is_prefixed_on_stderr_and_tail_keeps_last_200_lines(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    sbx.module(
        "chatty",
        """
        def main(args):
            for i in range(1, 301):
                print(f"line {i}")
            return {"success": True}
        """,
    )

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    streamed = [line for line in result.stderr.splitlines() if line.startswith("[chatty] ")]
    assert streamed == [f"[chatty] line {i}" for i in range(1, 301)]
    row = module_row(sbx.journal_json(1), "chatty")
    assert (row["output_tail"] or "").splitlines() == [f"line {i}" for i in range(101, 301)]


def test_output_is_streamed_while_the_module_runs(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    go = sbx.root / "go"
    sbx.module(
        "live",
        f"""
        import os, time

        def main(args):
            print("waiting for go", flush=True)
            deadline = time.monotonic() + 60
            while not os.path.exists({str(go)!r}):
                if time.monotonic() > deadline:
                    return {{"success": False, "error": "never saw the go file"}}
                time.sleep(0.02)
            print("got go", flush=True)
            return {{"success": True}}
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hs_txupdate.cli", "--config", str(sbx.config), "update"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while "[live] waiting for go\n" not in seen:
            assert time.monotonic() < deadline, "".join(seen)
            assert proc.poll() is None or not lines.empty(), "".join(seen)
            try:
                seen.append(lines.get(timeout=0.1))
            except queue.Empty:
                continue
        assert not go.exists()
        go.touch()  # the module could only go on after its first line reached hs-tx's stderr
        assert proc.wait(timeout=RUN_TIMEOUT) == 0, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    while not lines.empty():
        seen.append(lines.get())
    assert "[live] got go\n" in seen, "".join(seen)
