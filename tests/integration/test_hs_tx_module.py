"""The shipped `hs_tx` module, which installs hs-tx's own systemd units.

Through the real `hs-tx update` on a loop-mounted ext4 sandbox: the module is
copied in with its unit dir moved into the sandbox's data dir and systemctl
replaced by a recording script (a real executable that logs its arguments,
outside the scope, so the log survives a rollback). Through direct `main()`
calls in a fresh, isolated interpreter (neither `updates` nor hs_txupdate
importable): unit dir creation, masked units, timeouts, bad definitions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from hs_txupdate.modules.discovery import load_module
from tests.helpers import REPO, Sandbox, tree_state

SHIPPED = REPO / "modules" / "hs_tx"
UNITS = ("hs-tx-recover.service", "hs-tx-update.service", "hs-tx-update.timer")
ENABLED = ("hs-tx-recover.service", "hs-tx-update.timer")
RUN_TIMEOUT = 90  # seconds any single hs-tx run may take before the test fails
FAILED_RELOAD = "Failed to reload daemon: Access denied"

# ---------------------------------------------------------------- helpers


def make_recorder(path: Path, log: Path, *, fail: bool = False) -> Path:
    """A stand-in for systemctl: appends its arguments to `log` (and with `fail`,
    complains on stderr and exits 1)."""
    body = f"printf '%s\\n' \"$*\" >> '{log}'\n"
    if fail:
        body += f"echo '{FAILED_RELOAD}' >&2\nexit 1\n"
    path.write_text(f"#!/bin/sh\n{body}")
    path.chmod(0o755)
    return path


def install(
    modules_dir: Path,
    unit_dir: Path,
    reload: list[str],
    enable: list[str],
    /,
    **config: Any,
) -> Path:
    """Copy the shipped module into `modules_dir`, pointed at `unit_dir` and the given
    reload/enable commands (plus any other configuration keys); return its dir."""
    dest = modules_dir / "hs_tx"
    shutil.copytree(SHIPPED, dest, ignore=shutil.ignore_patterns("__pycache__"))
    index = json.loads((dest / "index.json").read_text())
    section = index["configuration"]
    section["unit_dir"] = str(unit_dir)
    section["reload_command"] = reload
    section["enable_command"] = enable
    section.update(config)
    if "backup_paths" not in config:
        section["backup_paths"] = [str(unit_dir / name) for name in section["units"]]
    (dest / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return dest


def sandbox_module(sbx: Sandbox, *, fail_reload: bool = False) -> tuple[Path, Path, Path]:
    """Install the module into the sandbox; return (module dir, unit dir, command log)."""
    unit_dir = sbx.data / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    log = sbx.root / "systemctl.log"
    recorder = make_recorder(sbx.root / "systemctl", log)
    failing = make_recorder(sbx.root / "systemctl-failing", log, fail=True)
    reload = [str(failing if fail_reload else recorder), "daemon-reload"]
    mod = install(sbx.modules, unit_dir, reload, [str(recorder), "enable", "{unit}"])
    return mod, unit_dir, log


def commands(log: Path) -> list[str]:
    """The commands the recorder saw, one string of arguments each."""
    return log.read_text().splitlines() if log.exists() else []


def assert_installed(unit_dir: Path, names: tuple[str, ...] = UNITS) -> None:
    """Each named unit is installed byte-identical to the module's copy, mode 0644."""
    for name in names:
        path = unit_dir / name
        assert path.read_bytes() == (SHIPPED / "units" / name).read_bytes(), name
        assert stat.S_IMODE(path.lstat().st_mode) == 0o644, name


def unit_files(unit_dir: Path) -> dict[str, Any]:
    """tree_state of the unit files alone: the scope holds the files, not their dir,
    so the dir's own mtime is not put back."""
    return {k: v for k, v in tree_state(unit_dir).items() if k != "."}


def update(sbx: Sandbox, *args: str) -> subprocess.CompletedProcess:
    """Run the real `hs-tx update` in the sandbox."""
    return sbx.hs_tx("update", *args, timeout=RUN_TIMEOUT)


def module_row(tx: dict[str, Any]) -> dict[str, Any]:
    """The hs_tx row in `show --json` output."""
    rows = [m for m in tx["modules"] if m["name"] == "hs_tx"]
    assert len(rows) == 1, tx["modules"]
    return rows[0]


CALL_MAIN = """
import importlib, json, os, sys, types
modules_dir, args, out = sys.argv[1:4]
os.umask(0o077)  # the module must set its modes itself
package = types.ModuleType("modules")
package.__path__ = [modules_dir]
sys.modules["modules"] = package
result = importlib.import_module("modules.hs_tx").main(json.loads(args))
with open(out, "w") as f:
    json.dump(result, f)
"""


def call_main(module_dir: Path, args: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """Call the module's main(args) as HOMESERVER would, in an isolated interpreter
    without site-packages (so without hs_txupdate and `updates`); return (result, output)."""
    # the result goes outside the dirs that tests compare before and after
    fd, name = tempfile.mkstemp(prefix="hs-tx-result-", suffix=".json")
    os.close(fd)
    out = Path(name)
    # -B: no __pycache__ in the module dir, which tests compare too
    argv = [sys.executable, "-I", "-S", "-B", "-c", CALL_MAIN, str(module_dir.parent)]
    argv += [json.dumps(args), str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        return json.loads(out.read_text()), proc.stdout + proc.stderr
    finally:
        out.unlink()


@pytest.fixture
def direct(tmp_path: Path) -> tuple[Path, Path, Path]:
    """For direct calls: (modules dir, unit dir (absent), command log) under tmp_path."""
    modules = tmp_path / "modules"
    modules.mkdir()
    return modules, tmp_path / "etc" / "systemd" / "system", tmp_path / "systemctl.log"


def direct_module(direct: tuple[Path, Path, Path], **config: Any) -> Path:
    """Install the module for direct calls with recording commands."""
    modules, unit_dir, log = direct
    recorder = str(make_recorder(modules.parent / "systemctl", log))
    return install(
        modules, unit_dir, [recorder, "daemon-reload"], [recorder, "enable", "{unit}"], **config
    )


# ---------------------------------------------------------------- through hs-tx update


def test_first_run_installs_reloads_and_enables_second_changes_nothing(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    _, unit_dir, log = sandbox_module(sbx)

    first = update(sbx)

    assert first.returncode == 0, first.stderr
    assert_installed(unit_dir)
    assert commands(log) == ["daemon-reload", *(f"enable {u}" for u in ENABLED)]
    tx = sbx.journal_json(1)
    assert tx["state"] == "committed"
    assert module_row(tx)["status"] == "success"
    installed = tree_state(unit_dir)

    second = update(sbx)

    assert second.returncode == 0, second.stderr
    assert tree_state(unit_dir) == installed, "an idempotent run rewrote a unit"
    assert commands(log) == ["daemon-reload", *(f"enable {u}" for u in ENABLED)]
    assert "units in" in module_row(sbx.journal_json(2))["output_tail"]


def test_locally_edited_unit_is_restored_and_not_enabled_again(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    _, unit_dir, log = sandbox_module(sbx)
    assert update(sbx).returncode == 0
    timer = unit_dir / "hs-tx-update.timer"
    timer.write_text(timer.read_text().replace("OnCalendar=daily", "OnCalendar=hourly"))
    log.unlink()

    result = update(sbx)

    assert result.returncode == 0, result.stderr
    assert_installed(unit_dir)
    # the operator may have disabled the timer: only a reload, no enable
    assert commands(log) == ["daemon-reload"]
    assert f"restored {timer}" in module_row(sbx.journal_json(2))["output_tail"]


def test_failing_reload_rolls_the_unit_files_back(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    _, unit_dir, log = sandbox_module(sbx, fail_reload=True)
    old = unit_dir / "hs-tx-recover.service"
    old.write_text("[Service]\nExecStart=/bin/true\n")
    os.chmod(old, 0o600)
    before = unit_files(unit_dir)

    result = update(sbx)

    assert result.returncode == 1, result.stderr
    tx = sbx.journal_json(1)
    assert tx["state"] == "rolled_back"
    row = module_row(tx)
    assert row["status"] == "failed"
    assert "daemon-reload failed: exit status 1" in row["error"], row["error"]
    assert FAILED_RELOAD in row["error"]
    assert unit_files(unit_dir) == before, "the unit files were not put back"
    assert commands(log) == ["daemon-reload"], "it went on after the reload failed"


def test_check_reports_outdated_units_and_changes_nothing(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    mod, unit_dir, log = sandbox_module(sbx)
    shutil.copy(SHIPPED / "units" / "hs-tx-update.service", unit_dir)
    os.chmod(unit_dir / "hs-tx-update.service", 0o644)
    (unit_dir / "hs-tx-update.timer").write_text("[Timer]\nOnCalendar=hourly\n")
    before = {"units": tree_state(unit_dir), "module": tree_state(mod)}

    result = update(sbx, "--check")
    direct_result, _ = call_main(mod, ["--check"])

    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("hs_tx "))
    reported = json.loads(row[row.index("{") :])
    assert direct_result == reported
    assert reported == {
        "success": True,
        "outdated": ["hs-tx-recover.service", "hs-tx-update.timer"],
        "missing": ["hs-tx-recover.service"],
        "would_enable": ["hs-tx-recover.service"],
        "left_to_operator": [],
        "unit_dir": str(unit_dir),
    }
    assert {"units": tree_state(unit_dir), "module": tree_state(mod)} == before
    assert commands(log) == []
    assert json.loads(sbx.hs_tx("history", "--json").stdout) == []


# ---------------------------------------------------------------- direct main() calls


def test_missing_unit_dir_is_created_without_hs_txupdate(direct: tuple[Path, Path, Path]) -> None:
    _, unit_dir, log = direct
    mod = direct_module(direct)

    result, output = call_main(mod)

    assert result["success"] is True, result
    assert result["installed"] == list(UNITS)
    assert result["enabled"] == list(ENABLED)
    assert_installed(unit_dir)
    for directory in (unit_dir, unit_dir.parent, unit_dir.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory
    assert [p.name for p in unit_dir.iterdir() if p.name.startswith(".")] == []
    assert commands(log) == ["daemon-reload", *(f"enable {u}" for u in ENABLED)]
    assert f"[INFO] hs_tx: created {unit_dir}" in output  # the print fallback


def test_masked_unit_is_left_alone(direct: tuple[Path, Path, Path]) -> None:
    _, unit_dir, log = direct
    mod = direct_module(direct)
    unit_dir.mkdir(parents=True)
    (unit_dir / "hs-tx-update.timer").symlink_to("/dev/null")  # `systemctl mask`

    check, _ = call_main(mod, ["--check"])
    result, _ = call_main(mod)

    assert check["left_to_operator"] == ["hs-tx-update.timer"]
    assert "hs-tx-update.timer" not in check["outdated"]
    assert result["success"] is True, result
    assert os.readlink(unit_dir / "hs-tx-update.timer") == "/dev/null"
    assert_installed(unit_dir, ("hs-tx-recover.service", "hs-tx-update.service"))
    assert commands(log) == ["daemon-reload", "enable hs-tx-recover.service"]


def test_hanging_command_times_out(direct: tuple[Path, Path, Path]) -> None:
    modules, unit_dir, _ = direct
    mod = install(modules, unit_dir, ["sleep", "30"], ["true", "{unit}"], command_timeout=0.5)

    result, _ = call_main(mod)

    assert result["success"] is False
    assert result["error"] == "hs_tx: sleep 30 timed out after 0.5 s"
    assert result["commands"] == [["sleep", "30"]]


BAD_CONFIG: dict[str, tuple[dict[str, Any], str]] = {
    "shell-string": ({"reload_command": "systemctl daemon-reload"}, "no shell string"),
    "empty-command": ({"reload_command": []}, "reload_command"),
    "no-placeholder": ({"enable_command": ["systemctl", "enable"]}, "'{unit}'"),
    "stray-enable": ({"enable": ["other.timer"]}, "not in 'units'"),
    "path-as-unit": ({"units": ["../../etc/passwd.service"]}, "not a unit file name"),
    "relative-dir": ({"unit_dir": "etc/systemd/system"}, "absolute path"),
    "uncovered": ({"backup_paths": ["/somewhere/else"]}, "does not cover"),
    "unknown-unit": ({"units": ["nosuch.service"], "enable": []}, "units/nosuch.service"),
    "bad-timeout": ({"command_timeout": 0}, "command_timeout"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIG))
def test_bad_definition_fails_before_anything_changes(
    direct: tuple[Path, Path, Path], case: str
) -> None:
    _, unit_dir, log = direct
    config, words = BAD_CONFIG[case]
    mod = direct_module(direct, **config)

    for args in (None, ["--check"]):
        result, _ = call_main(mod, args)

        assert result["success"] is False
        assert words in result["error"], result["error"]
    assert not unit_dir.exists()
    assert commands(log) == []


def test_version_and_unknown_argument(direct: tuple[Path, Path, Path]) -> None:
    mod = direct_module(direct)
    before = tree_state(mod.parent.parent)

    version, _ = call_main(mod, ["--version"])
    refused, _ = call_main(mod, ["--chek"])

    assert version == {"success": True, "schema_version": "1.0.0", "module": "hs_tx"}
    assert refused["success"] is False and "--chek" in refused["error"]
    assert tree_state(mod.parent.parent) == before


# ---------------------------------------------------------------- what the repo ships


def test_shipped_definition() -> None:
    module = load_module(SHIPPED)
    config = module.index["configuration"]

    assert (module.name, module.enabled, module.priority) == ("hs_tx", True, 0)
    assert module.schema_version == "1.0.0"
    assert module.backup_paths == tuple(Path("/etc/systemd/system") / u for u in UNITS)
    assert config["unit_dir"] == "/etc/systemd/system"
    assert config["units"] == list(UNITS)
    assert sorted(p.name for p in (SHIPPED / "units").iterdir()) == sorted(UNITS)
    assert config["enable"] == list(ENABLED)
    assert config["reload_command"] == ["systemctl", "daemon-reload"]
    assert config["enable_command"] == ["systemctl", "enable", "{unit}"]
    assert not (SHIPPED / "__pycache__").exists()
    sources = "".join(p.read_text() for p in SHIPPED.glob("*.py"))
    assert not re.search(r"^\s*(from|import)\s+hs_txupdate", sources, re.MULTILINE)
    assert "shell=True" not in sources
