"""The install script, and the boot-time recovery unit's command line after a crash."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, Sandbox, tree_state

UNITS = REPO / "scripts" / "systemd"


def exec_start(unit: str) -> list[str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(UNITS / unit)
    return shlex.split(parser["Service"]["ExecStart"])


def test_install_script_installs_and_enables_everything(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    original = root / "usr/local/lib/updates/updateManager.sh"  # a HOMESERVER box's own
    original.parent.mkdir(parents=True)
    original.write_text("#!/bin/bash\n# HOMESERVER Update Manager\n")

    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "ROOT": str(root)},
        timeout=600,
    )

    assert result.returncode == 0, result.stderr
    hs_tx = root / "opt/hs-tx/venv/bin/hs-tx"
    version = subprocess.run([hs_tx, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("hs-tx ")
    assert os.readlink(root / "usr/local/sbin/hs-tx") == "/opt/hs-tx/venv/bin/hs-tx"
    assert os.access(root / "usr/local/sbin/hs-tx-recover", os.X_OK)
    assert (root / "etc/hs-tx/config.toml").is_file()
    wrapper = (REPO / "scripts" / "updateManager.sh").read_bytes()
    for manager in (original, root / "usr/local/sbin/updateManager.sh"):
        assert manager.read_bytes() == wrapper and os.access(manager, os.X_OK)
    assert original.with_name("updateManager.sh.orig").read_text().endswith("Update Manager\n")
    for unit in UNITS.iterdir():
        assert (root / "etc/systemd/system" / unit.name).read_bytes() == unit.read_bytes()
    wants = root / "etc/systemd/system"
    assert (wants / "sysinit.target.wants/hs-tx-recover.service").is_symlink()
    assert (wants / "timers.target.wants/hs-tx-update.timer").is_symlink()
    # running it again keeps the operator's config
    (root / "etc/hs-tx/config.toml").write_text("keep = 'mine'\n")
    again = subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "ROOT": str(root)},
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert (root / "etc/hs-tx/config.toml").read_text() == "keep = 'mine'\n"
    assert original.with_name("updateManager.sh.orig").read_text().endswith("Update Manager\n")


def test_recovery_unit_command_line_repairs_a_crashed_update(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    sbx.writer_module()
    before = tree_state(sbx.data)
    # events: plan, 2 x (capture intent + done), audit start, module intent, module done
    # -> crash at 8
    crashed = sbx.hs_tx("update", env={"HS_TX_CRASH_AT": "8"})
    assert crashed.returncode == -9, crashed.stderr
    assert (sbx.data / "f").read_text() == "after"

    argv = exec_start("hs-tx-recover.service")
    assert argv[0] == "/usr/local/sbin/hs-tx" and argv[1:] == ["recover"]
    cmd = [sys.executable, "-m", "hs_txupdate.cli", *argv[1:]]  # the same command, this build
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HS_TX_CONFIG": str(sbx.config)},
    )

    assert result.returncode == 0, result.stderr
    assert tree_state(sbx.data) == before
    status = sbx.hs_tx("status", "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["last_recovery"]["exit_code"] == 0
    assert info["last_recovery"]["transactions"] == [
        {"id": 1, "was": "running", "now": "rolled_back"}
    ]
    assert "last recovery:" in sbx.hs_tx("status").stdout
