"""`hs-tx update --check`: reports, runs the checks in isolation, changes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.helpers import GitSource, Sandbox, module_files, tree_state

WRITING_CHECK = """
import os, pathlib
DATA = pathlib.Path({data!r})
HERE = pathlib.Path(__file__).parent

def main(args):
    # a careless check: it writes wherever it likes
    (DATA / "app" / "config.ini").write_text("overwritten by --check")
    (DATA / "app" / "new-file").write_text("created by --check")
    os.unlink(DATA / "app" / "keep.txt")
    (HERE / "index.py.bak").write_text("junk in the module dir")
    os.makedirs(DATA / "absent" / "deep")
    print("check args:", args)
    return {{"success": True, "pending": 3, "args": args}}
"""


def test_a_writing_check_changes_nothing(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    app = sbx.data / "app"
    app.mkdir()
    (app / "config.ini").write_text("original")
    (app / "keep.txt").write_text("keep me")
    sbx.module(
        "careless",
        WRITING_CHECK.format(data=str(sbx.data)),
        backup_paths=[app, sbx.data / "absent"],
    )
    before = {"data": tree_state(sbx.data), "modules": tree_state(sbx.modules)}

    result = sbx.hs_tx("update", "--check")

    assert result.returncode == 0, result.stderr
    assert "check args: ['--check']" in result.stderr
    assert "careless" in result.stdout and '"pending": 3' in result.stdout
    assert {"data": tree_state(sbx.data), "modules": tree_state(sbx.modules)} == before
    history = json.loads(sbx.hs_tx("history", "--json").stdout)
    assert history == [], "--check opens no transaction"
    assert not (sbx.state / "snapshots").exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "hs-tx-check" not in mounts, "the overlays stayed in the private namespace"


def test_check_reports_what_phase_one_would_install(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    source = GitSource(sbx.root / "upstream").create()
    sbx.source_url = source.url
    sbx.write_config()
    sbx.module("old", "def main(a):\n    return {'success': True}\n", version="1.0.0")
    source.publish(
        {
            "old": module_files(
                "old", "def main(a):\n    return {'success': True}\n", version="1.2.0"
            ),
            "fresh": module_files("fresh", "def main(a):\n    return {'success': True}\n"),
        }
    )
    modules_before = tree_state(sbx.modules)

    result = sbx.hs_tx("update", "--check")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split() == ["old", "1.0.0", "1.2.0"] for line in lines), result.stdout
    assert any(line.split() == ["fresh", "(new)", "1.0.0"] for line in lines), result.stdout
    assert tree_state(sbx.modules) == modules_before
    assert (sbx.state / "source" / "HEAD").exists(), "the fetch into the clone is allowed"
    assert not (sbx.state / "journal.db").exists(), "no journal was written"


CARELESS_EVERYWHERE = """
import os, pathlib, subprocess
APP = pathlib.Path({app!r})

def main(args):
    # like the published adblock module: no --check branch at all
    (APP / "blocklist.conf").write_text("rewritten")
    (APP / "new.conf").write_text("created")
    os.unlink(APP / "old.conf")
    os.chmod(APP / "run.sh", 0o700)
    subprocess.run(["systemctl", "restart", "unbound"], check=True)
    subprocess.run(["service", "nginx", "reload"], check=True)
    return {{"success": True}}
"""


def test_check_isolates_writes_outside_every_declared_path_and_records_services(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    app = sbx.root / "opt" / "appA"  # declared nowhere, watched by no one
    app.mkdir(parents=True)
    (app / "blocklist.conf").write_text("original")
    (app / "old.conf").write_text("old")
    (app / "run.sh").write_text("#!/bin/sh\n")
    (app / "run.sh").chmod(0o755)
    sbx.module("adblock", CARELESS_EVERYWHERE.format(app=str(app)))
    before = tree_state(sbx.root / "opt"), tree_state(sbx.modules), sbx.service_log.exists()

    result = sbx.hs_tx("update", "--check")

    assert result.returncode == 0, result.stderr + result.stdout
    assert (
        tree_state(sbx.root / "opt"),
        tree_state(sbx.modules),
        sbx.service_log.exists(),
    ) == before
    out = result.stdout
    assert f"adblock would modified: {app / 'blocklist.conf'}" in out
    assert f"adblock would  created: {app / 'new.conf'}" in out
    assert f"adblock would  deleted: {app / 'old.conf'}" in out
    assert f"adblock would metadata: {app / 'run.sh'}" in out
    assert "adblock would run: systemctl restart unbound" in out
    assert "adblock would run: service nginx reload" in out
    assert "no write of a check reached the real filesystems" in out
    assert "hs-tx-check" not in Path("/proc/self/mountinfo").read_text()


ESCAPING_CHECK = """
import os, pathlib

def main(args):
    # a check that breaks out of its chroot and writes the real filesystem
    os.makedirs("/tmp/hs-tx-escape", exist_ok=True)
    top = os.open("/", os.O_RDONLY)
    os.chroot("/tmp/hs-tx-escape")
    os.fchdir(top)
    leak = pathlib.Path({leak!r})
    # climb until the real sandbox shows, its own filesystem, not the copy's overlay
    # (and not further: hs-tx itself may run chrooted)
    def real_here():
        try:
            return os.stat("." + str(leak.parent)).st_dev == {dev}
        except OSError:
            return False
    for _ in range(64):
        if real_here():
            break
        os.chdir("..")
    os.chroot(".")
    leak.write_text("escaped")
    return {{"success": True}}
"""


def test_a_write_that_escapes_the_copy_fails_the_check(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    leak = sbx.data / "leak"
    dev = os.stat(sbx.data).st_dev
    sbx.module("escaper", ESCAPING_CHECK.format(leak=str(leak), dev=dev))

    result = sbx.hs_tx("update", "--check")

    assert leak.read_text() == "escaped", "the module did escape: the audit must say so"
    assert result.returncode == 3, result.stderr + result.stdout
    assert "FAILED: 1 write(s) of a check reached the real filesystems" in result.stdout
    assert f"escaper created {leak}" in result.stdout
