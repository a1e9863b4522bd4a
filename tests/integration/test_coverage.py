"""Real HOMESERVER-style modules run as one true transaction: StateManager backups join
it, every write under the watched root is seen (fanotify, or a scan), and the outcome
says exactly what was and was not put back.

Each sandbox has a small system root (`sys/`: etc, opt, usr/local/bin, var/www) that
the write audit watches; modules keep their paths in `config.directories` and back
them up through StateManager, as the published modules do.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import LoopFs, Sandbox, need, tree_state
from tests.integration.test_shipped_modules import append_py, install, lines, migration

RUN_TIMEOUT = 120

APP_MODULE = """
import json, os
from updates.index import log_message
from updates.utils.state_manager import StateManager

HERE = os.path.dirname(os.path.abspath(__file__))


def main(args):
    config = json.load(open(os.path.join(HERE, "index.json")))["config"]
    app = config["directories"]["app"]["path"]
    manager = StateManager("/var/backups/updates")
    if not manager.backup_module_state("appa", description="pre_update", files=[app]):
        return {"success": False, "error": "backup failed"}
    with open(os.path.join(app, "config.ini"), "w") as f:
        f.write("version = 2\\n")
    with open(os.path.join(app, "new.txt"), "w") as f:
        f.write("created by the update\\n")
    os.unlink(os.path.join(app, "old.txt"))
    os.chmod(app, 0o700)
    log_message("appa updated")
    return {"success": True}
"""

FAIL_MODULE = """
def main(args):
    return {"success": False, "error": "breaker fails on purpose"}
"""


def system(sbx: Sandbox) -> Path:
    """The sandbox's system root, watched by the write audit."""
    root = sbx.root / "sys"
    for rel in ("etc", "opt/appA", "usr/local/bin", "var/www"):
        (root / rel).mkdir(parents=True, exist_ok=True)
    (root / "opt/appA/config.ini").write_text("version = 1\n")
    (root / "opt/appA/old.txt").write_text("to be deleted\n")
    (root / "usr/local/bin/tool").write_text("#!/bin/sh\necho v1\n")
    sbx.watch = [str(root)]
    sbx.write_config()
    return root


def app_module(sbx: Sandbox, root: Path, name: str = "appa", body: str = APP_MODULE) -> None:
    """A module that keeps its path in config.directories and backs it up first."""
    path = sbx.module(name, body, extra_meta={"priority": 10})
    index = json.loads((path / "index.json").read_text())
    index["config"] = {"directories": {"app": {"path": str(root / "opt/appA")}}}
    del index["configuration"]
    (path / "index.json").write_text(json.dumps(index, indent=2))


def breaker(sbx: Sandbox, fail: bool = True) -> None:
    """A module that runs last and fails (or, once fixed, succeeds)."""
    body = FAIL_MODULE if fail else "def main(args):\n    return {'success': True}\n"
    sbx.module("zbreaker", body, extra_meta={"priority": 900})


def update(sbx: Sandbox, *extra: str, env: dict[str, str] | None = None) -> Any:
    return sbx.hs_tx("update", *extra, env=env, timeout=RUN_TIMEOUT)


def outside(tx: dict[str, Any]) -> dict[str, tuple[str, str | None, bool | None]]:
    return {o["path"]: (o["change"], o["module"], o["restored"]) for o in tx["outside_scope"]}


# ---------------------------------------------------------------- StateManager


def test_a_statemanager_backup_is_restored_by_the_whole_run_rollback(
    fs_sandbox: Sandbox,
) -> None:
    sbx = fs_sandbox
    root = system(sbx)
    before = tree_state(root / "opt/appA")
    app_module(sbx, root)
    breaker(sbx)

    result = update(sbx)

    assert result.returncode == 1, result.stderr
    assert "every path in scope is as before" in result.stderr
    assert tree_state(root / "opt/appA") == before
    tx = sbx.journal_json(1)
    added = [p for p in tx["paths"] if p["path"] == str(root / "opt/appA")]
    assert len(added) == 1 and added[0]["origin"] == "statemanager"
    assert added[0]["added_by"] == "appa"
    assert tx["outside_scope"] == []
    assert tx["audit"]["method"] == "fanotify"


def test_a_statemanager_backup_is_restored_by_undo(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    root = system(sbx)
    before = tree_state(root / "opt/appA")
    app_module(sbx, root)

    assert update(sbx).returncode == 0
    assert (root / "opt/appA/config.ini").read_text() == "version = 2\n"
    result = sbx.hs_tx("undo", "1")

    assert result.returncode == 0, result.stderr
    assert tree_state(root / "opt/appA") == before


RESTORING_MODULE = """
import json, os
from updates.utils.state_manager import StateManager

HERE = os.path.dirname(os.path.abspath(__file__))


def main(args):
    app = json.load(open(os.path.join(HERE, "index.json")))["config"]["directories"]["app"]["path"]
    conf = os.path.join(app, "config.ini")
    with open(conf, "w") as f:
        f.write("version = 1.5\\n")   # before the backup: the backup must hold this
    manager = StateManager()
    assert manager.backup_module_state("appa", files=[app])
    with open(conf, "w") as f:
        f.write("version = broken\\n")
    open(os.path.join(app, "junk"), "w").close()
    assert manager.restore_module_state("appa")
    assert open(conf).read() == "version = 1.5\\n", open(conf).read()
    assert not os.path.exists(os.path.join(app, "junk"))
    return {"success": True}
"""


def test_restore_module_state_puts_back_the_state_at_the_backup_call(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    root = system(sbx)
    app_module(sbx, root, body=RESTORING_MODULE)
    # the path is in scope from the start: the backup needs a point-in-time snapshot
    index = json.loads((sbx.modules / "appa/index.json").read_text())
    index["configuration"] = {"backup_paths": [str(root / "opt/appA")]}
    (sbx.modules / "appa/index.json").write_text(json.dumps(index))
    before = tree_state(root / "opt/appA")
    breaker(sbx)

    result = update(sbx)

    assert result.returncode == 1, result.stderr
    tx = sbx.journal_json(1)
    assert [m["status"] for m in tx["modules"]] == ["success", "failed"], tx["modules"]
    # the whole-run rollback restores the run-start state, not the backup's
    assert tree_state(root / "opt/appA") == before


DB_MODULE = """
import os, sqlite3
from updates.utils.state_manager import StateManager

DB = {db!r}


def main(args):
    assert StateManager().backup_module_state(
        "dbmod", databases=[{{"type": "sqlite", "database": DB}}], services=["dbsvc"]
    )
    db = sqlite3.connect(DB)
    db.execute("UPDATE t SET v = 'changed'")
    db.execute("INSERT INTO t VALUES ('added')")
    db.commit()
    db.close()
    open({active!r}, "w").close()  # the module starts its service
    return {{"success": True}}
"""


def test_a_database_and_a_service_in_a_backup_are_put_back(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    root = system(sbx)
    db = root / "var/www/app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (v TEXT)")
    conn.execute("INSERT INTO t VALUES ('original')")
    conn.commit()
    conn.close()
    active = sbx.root / "active-dbsvc"
    sbx.module("dbmod", DB_MODULE.format(db=str(db), active=str(active)))
    breaker(sbx)

    result = update(sbx)

    assert result.returncode == 1, result.stderr
    rows = sqlite3.connect(db).execute("SELECT v FROM t").fetchall()
    assert rows == [("original",)]
    assert not active.exists(), "the service was not running before: it is stopped again"
    tx = sbx.journal_json(1)
    assert [p["backend"] for p in tx["paths"] if p["path"] == str(db)] == ["sqlite"]


def test_a_path_that_may_not_be_snapshotted_makes_the_backup_return_false(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    system(sbx)
    sbx.module(
        "greedy",
        f"""
        from updates.utils.state_manager import StateManager

        def main(args):
            ok = StateManager().backup_module_state("greedy", files=["/", {str(sbx.state)!r}])
            return {{"success": ok is False, "error": "backup of / was accepted"}}
        """,
    )

    result = update(sbx)

    assert result.returncode == 0, result.stderr
    tail = sbx.journal_json(1)["modules"][0]["output_tail"]
    assert "whole system" in tail


# ---------------------------------------------------------------- the write audit


LEAKY_MODULE = """
import os
import signal

ROOT = {root!r}


def main(args):
    with open(os.path.join(ROOT, "etc/leaky.conf"), "w") as f:
        f.write("leaked\\n")
    with open(os.path.join(ROOT, "usr/local/bin/tool"), "w") as f:
        f.write("#!/bin/sh\\necho v2\\n")
    return {{"success": True}}
"""


def test_an_unbacked_write_is_reported_then_covered_on_the_next_run(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    root = system(sbx)
    sbx.module("leaky", LEAKY_MODULE.format(root=str(root)))
    breaker(sbx)

    first = update(sbx)

    assert first.returncode == 3, first.stderr
    assert "as before" not in first.stderr.split("rolled back", 1)[1]
    assert "are not:" in first.stderr and "etc/leaky.conf" in first.stderr
    tx = sbx.journal_json(1)
    assert tx["state"] == "rolled_back"
    assert outside(tx) == {
        str(root / "etc/leaky.conf"): ("created", "leaky", False),
        str(root / "usr/local/bin/tool"): ("modified", "leaky", False),
    }
    shown = sbx.hs_tx("show", "1").stdout
    assert "Changed outside the scope" in shown and "etc/leaky.conf" in shown
    scope = json.loads(sbx.hs_tx("modules", "scope", "leaky", "--json").stdout)
    learned = {s["path"] for s in scope if s["origin"] == "learned"}
    assert learned == {str(root / "etc/leaky.conf"), str(root / "usr/local/bin/tool")}

    # the next run snapshots what the module changed last time: all of it comes back
    (root / "etc/leaky.conf").unlink()
    (root / "usr/local/bin/tool").write_text("#!/bin/sh\necho v1\n")
    before = tree_state(root / "usr/local/bin/tool")
    second = update(sbx)

    assert second.returncode == 1, second.stderr
    assert "every path in scope is as before" in second.stderr
    assert tree_state(root / "usr/local/bin/tool") == before
    assert not (root / "etc/leaky.conf").exists()
    origins = {p["path"]: p["origin"] for p in sbx.journal_json(2)["paths"]}
    assert origins[str(root / "etc/leaky.conf")] == "learned"
    assert sbx.journal_json(2)["outside_scope"] == []

    forget = sbx.hs_tx("modules", "scope", "leaky", "--forget", str(root / "etc/leaky.conf"))
    assert forget.returncode == 0, forget.stderr
    scope = json.loads(sbx.hs_tx("modules", "scope", "leaky", "--json").stdout)
    assert {s["path"] for s in scope if s["origin"] == "learned"} == {
        str(root / "usr/local/bin/tool")
    }


WRITER_MODULE = """
def main(args):
    with open({path!r}, "w") as f:
        f.write("written by {name}\\n")
    return {{"success": True}}
"""


def test_each_module_s_writes_are_attributed_to_it(tar_sandbox: Sandbox) -> None:
    # one audit window a module, open until the next one's: nothing is shifted
    sbx = tar_sandbox
    root = system(sbx)
    targets = {"first": "etc/first.conf", "second": "var/www/second.html", "third": "etc/third"}
    for priority, (name, rel) in enumerate(targets.items(), 1):
        body = WRITER_MODULE.format(path=str(root / rel), name=name)
        sbx.module(name, body, extra_meta={"priority": priority})

    result = update(sbx)

    assert result.returncode == 0, result.stderr
    expected = {str(root / rel): ("created", name, None) for name, rel in targets.items()}
    assert outside(sbx.journal_json(1)) == expected


def test_outside_writes_fail_fails_the_run(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    root = system(sbx)
    sbx.extra_config = "[scope.modules.leaky]\npaths = []\n"
    sbx.write_config()
    text = sbx.config.read_text().replace("[runtime]", 'outside_writes = "fail"\n[runtime]', 1)
    sbx.config.write_text(text)
    sbx.module("leaky", LEAKY_MODULE.format(root=str(root)))

    result = update(sbx)

    assert result.returncode == 3, result.stderr
    assert "outside its scope" in result.stderr
    assert sbx.journal_json(1)["state"] == "rolled_back"


def test_config_paths_join_the_scope_and_writes_by_others_are_only_counted(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    root = system(sbx)
    sbx.extra_config = f'[scope.modules.leaky]\npaths = ["{root}/etc", "{root}/usr/local/bin"]\n'
    sbx.write_config()
    sbx.module("leaky", LEAKY_MODULE.format(root=str(root)))
    breaker(sbx)
    before = {p: tree_state(root / p) for p in ("etc", "usr/local/bin")}
    # another process on the box writes under the watched root during the run
    other = subprocess.Popen(
        [
            "sh",
            "-c",
            f"for i in $(seq 40); do echo $i >> {root}/var/www/other.log; sleep 0.05; done",
        ]
    )
    try:
        result = update(sbx)
    finally:
        other.wait()

    assert result.returncode == 1, result.stderr
    tx = sbx.journal_json(1)
    assert tx["outside_scope"] == []
    assert tx["audit"]["others"] > 0
    assert {p: tree_state(root / p) for p in ("etc", "usr/local/bin")} == before


MIGRATION_SCRIPT = "m1.py"


def test_a_migration_is_not_applied_twice_after_a_partial_rollback(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    root = system(sbx)
    log = root / "etc/migrated.conf"
    install(sbx.modules, "migrations", [migration("m1")], {"m1.py": append_py(log, "m1 ran")})
    breaker(sbx)

    first = update(sbx)

    assert first.returncode == 3, first.stderr  # the migration's effect stays outside
    assert lines(log) == ["m1 ran"]
    index = json.loads((sbx.modules / "migrations/index.json").read_text())
    assert [m["has_run"] for m in index["migrations"] if m["id"] == "m1"] == [True]
    assert any(e["step"] == "keep-run-state" for e in sbx.journal_json(1)["events"])

    breaker(sbx, fail=False)
    second = update(sbx)

    assert second.returncode == 0, second.stderr
    assert lines(log) == ["m1 ran"], "the migration ran a second time"


def test_files_a_module_creates_are_0644(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    root = system(sbx)
    target = root / "var/www/index.html"
    sbx.module(
        "web",
        f"""
        def main(args):
            open({str(target)!r}, "w").write("<html/>")
            return {{"success": True}}
        """,
        backup_paths=[root / "var/www"],
    )

    assert update(sbx).returncode == 0
    assert target.stat().st_mode & 0o777 == 0o644


NPM_MODULE = """
import os
import signal

def main(args):
    top = {top!r}
    for d in range(100):
        sub = os.path.join(top, "node_modules", f"pkg{{d}}")
        os.makedirs(sub)
        for i in range(1000):
            with open(os.path.join(sub, f"f{{i}}.js"), "w") as f:
                f.write("x")
    return {{"success": True}}
"""


def test_a_module_writing_100000_files_is_audited_without_loss(
    make_loopfs: Callable[..., LoopFs],
) -> None:
    # btrfs: no fixed inode table to run out of
    sbx = Sandbox(make_loopfs("btrfs", 1024).mount / "sbx").create()
    root = system(sbx)
    top = root / "var/www/homeserver"
    sbx.module("npm", NPM_MODULE.format(top=str(top)))

    result = update(sbx)

    assert result.returncode == 0, result.stderr
    tx = sbx.journal_json(1)
    assert tx["audit"]["method"] == "fanotify", tx["audit"]
    assert [(o["path"], o["change"], o["count"]) for o in tx["outside_scope"]] == [
        (str(top), "created", 100_102)
    ]


def test_the_scan_stands_in_when_fanotify_is_refused(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    need(subprocess.run(["which", "capsh"], capture_output=True).returncode == 0, "needs capsh")
    root = system(sbx)
    sbx.module("leaky", LEAKY_MODULE.format(root=str(root)))
    argv = [sys.executable, "-m", "hs_txupdate.cli", "--config", str(sbx.config), "update"]
    result = subprocess.run(
        ["capsh", "--drop=cap_sys_admin", "--", "-c", " ".join(argv)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )

    assert result.returncode == 0, result.stderr
    tx = sbx.journal_json(1)
    assert tx["audit"]["method"] == "scan"
    assert "fanotify" in tx["audit"]["reason"]
    changed = outside(tx)
    assert changed[str(root / "etc/leaky.conf")][1] is None  # writers unknown to a scan


# ---------------------------------------------------------------- crash and runtime


def test_a_crash_after_a_statemanager_snapshot_is_recovered_exactly(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    root = system(sbx)
    app_module(sbx, root)
    reference = sbx.root / "reference"
    before = tree_state(root / "opt/appA")
    assert update(sbx).returncode == 0  # a full run to find the event to crash at
    events = sbx.journal_json(1)["events"]
    n = next(
        i for i, e in enumerate(events, 1) if e["phase"] == "statemanager" and e["status"] == "done"
    )
    assert sbx.hs_tx("undo", "1").returncode == 0
    assert tree_state(root / "opt/appA") == before
    reference.mkdir()

    crashed = update(sbx, env={"HS_TX_CRASH_AT": str(n + 1)})
    assert crashed.returncode == -9, crashed.stderr
    recovered = sbx.hs_tx("recover")

    assert recovered.returncode == 0, recovered.stderr
    assert tree_state(root / "opt/appA") == before
    assert sbx.journal_json(3)["state"] == "rolled_back"


def test_a_module_imports_a_package_from_the_sources_requirements(
    tar_sandbox: Sandbox, tmp_path: Path
) -> None:
    from tests.helpers import GitSource, module_files

    sbx = tar_sandbox
    system(sbx)
    src = GitSource(tmp_path / "src").create()
    body = """
    import six

    def main(args):
        return {"success": True, "six": six.__version__}
    """
    (src.work / "requirements.txt").write_text("six\n")
    src.publish({"needsix": module_files("needsix", body)})
    sbx.source_url = src.url
    sbx.write_config()

    result = update(sbx)

    if result.returncode != 0 and "Could not find a version" in result.stderr:
        pytest.fail("the package index is unreachable: " + result.stderr[-500:])
    assert result.returncode == 0, result.stderr
    tx = sbx.journal_json(1)
    assert any(e["phase"] == "runtime" and e["status"] == "done" for e in tx["events"])
    assert str(sbx.root / "runtime") in [p["path"] for p in tx["paths"]]
    assert os.path.exists(sbx.root / "runtime/bin/python")


def test_an_interrupted_run_still_reports_what_it_wrote_outside(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    root = system(sbx)
    ready = sbx.root / "ready"
    sbx.module(
        "sleepy",
        f"""
        import time

        def main(args):
            open({str(root / "etc/sleepy.conf")!r}, "w").write("written\\n")
            open({str(ready)!r}, "w").close()
            time.sleep(120)
            return {{"success": True}}
        """,
    )
    argv = [sys.executable, "-m", "hs_txupdate.cli", "--config", str(sbx.config), "update"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if ready.exists():
                break
            time.sleep(0.05)
        assert ready.exists(), "the module never ran"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 3, stderr
    assert "as before" not in stderr and "etc/sleepy.conf" in stderr
    assert outside(sbx.journal_json(1)) == {
        str(root / "etc/sleepy.conf"): ("created", "sleepy", False)
    }


def test_the_runtime_builds_offline_from_a_wheel_dir(tar_sandbox: Sandbox, tmp_path: Path) -> None:
    from tests.helpers import GitSource, module_files

    sbx = tar_sandbox
    system(sbx)
    package = tmp_path / "probe"
    (package / "hstxprobe").mkdir(parents=True)
    (package / "hstxprobe" / "__init__.py").write_text("VALUE = 'from a local wheel'\n")
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "hstxprobe"\nversion = "1.0"\n'
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(package)],
        check=True,
    )  # fmt: skip
    src = GitSource(tmp_path / "src").create()
    (src.work / "requirements.txt").write_text("hstxprobe==1.0\n")
    body = """
    import hstxprobe

    def main(args):
        return {"success": hstxprobe.VALUE == "from a local wheel"}
    """
    src.publish({"probe": module_files("probe", body)})
    sbx.source_url = src.url
    sbx.write_config()
    runtime = f'path = "{sbx.root}/runtime"'
    text = sbx.config.read_text()
    assert runtime in text
    sbx.config.write_text(text.replace(runtime, f'{runtime}\nwheels = "{wheels}"', 1))

    result = update(sbx)

    assert result.returncode == 0, result.stderr
    assert (sbx.root / "runtime/.hs-tx-requirements.sha256").is_file()
