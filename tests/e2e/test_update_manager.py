"""scripts/updateManager.sh, the Admin UI's entry point: every flag of the HOMESERVER
orchestrator's updateManager.sh, run for real against hs-tx in a sandbox (real ext4,
real git source, a module's own app repository with two branches), its output
compared with the shapes REMOTE.md of homeserversltd/updates describes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_module_settings import app_repo, components, website
from tests.e2e.test_modules_cmd import counting, history, index_of, ok, runs
from tests.helpers import GitSource, Sandbox

WRAPPER = Path(__file__).resolve().parents[2] / "scripts" / "updateManager.sh"
HS_TX = str(Path(sys.executable).with_name("hs-tx"))
# REMOTE.md: "All output follows the pattern: [YYYY-MM-DD HH:MM:SS] [INFO] <message>"
LINE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] \[(INFO|WARNING|ERROR)\] (.*)")
# REMOTE.md's module listing, with the BRANCH tokens the Admin UI's parser keys on
MODULE = re.compile(r"(\S+) (ENABLED|DISABLED) v(\S+)(?: BRANCH (\S+) (\S+))? (.+)")
TOTAL = re.compile(r"Total: (\d+) modules \((\d+) enabled, (\d+) disabled\)")


@dataclass
class Box:
    sbx: Sandbox
    source: GitSource
    app: GitSource
    log: Path

    def run(self, *flags: str) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "HS_TX": HS_TX,
            "HS_TX_CONFIG": str(self.sbx.config),
            "HS_TX_UPDATE_LOG": str(self.log),
        }
        return subprocess.run(
            ["bash", str(WRAPPER), *flags], capture_output=True, text=True, env=env, timeout=300
        )


def messages(text: str) -> list[str]:
    """The messages of output in the orchestrator's format; every line must be one."""
    out = []
    for line in text.splitlines():
        match = LINE.fullmatch(line)
        assert match, f"not in the orchestrator's line format: {line!r}"
        out.append(match.group(2))
    return out


@pytest.fixture
def box(tar_sandbox: Sandbox) -> Box:
    sbx = tar_sandbox
    source = GitSource(sbx.root / "upstream").create()
    app = app_repo(sbx.root / "app")
    sbx.source_url = source.url
    sbx.write_config()
    source.publish({"website": website(sbx, repository={"url": app.url, "branch": "master"})})
    sbx.module("local", counting(sbx, "local"), version="0.3.0")
    return Box(sbx, source, app, sbx.root / "log" / "update.log")


# flags, exit code, messages the output must hold (in order), where it goes
CONTRACT = [
    (["--help"], 0, [], "usage"),
    (["-h"], 0, [], "usage"),
    (["--bogus"], 1, ["Unknown option: --bogus"], "usage"),
    (["--enable"], 1, ["Error: --enable requires a module name"], "usage"),
    (["--enable-component", "website"], 1, ["Error: --enable-component requires"], "usage"),
    (["--set-module-branch", "website"], 1, ["Error: --set-module-branch requires"], "usage"),
    # a value that looks like a flag is refused, never handed to hs-tx as one
    (["--disable-component", "website", "--wait"], 1, ["--disable-component requires"], "usage"),
    (["--set-module-branch", "website", "-h"], 1, ["--set-module-branch requires"], "usage"),
    (["--module-status", "-h"], 1, ["--module-status requires a module name"], "usage"),
    (["--legacy"], 1, ["Mode: legacy", "Error: --legacy", "Update manager failed"], "log"),
    (
        ["--list-modules"],
        0,
        [
            "Operation: list",
            "Available modules:",
            "Total: 2 modules (2 enabled, 0 disabled)",
            "✓ Module management operation completed successfully",
        ],
        "stdout",
    ),
    (["--status"], 0, ["Operation: status", "Available modules:", "Total: 2"], "stdout"),
    (["--all-status"], 0, ["Available modules:", "Total: 2"], "stdout"),
    (
        ["--status", "website"],
        0,
        ["Target: website", "Module: website", "Status: ENABLED", "Version: 1.0.0", "Components:"],
        "stdout",
    ),
    (["--module-status", "website"], 0, ["Module: website", "Status: ENABLED"], "stdout"),
    (
        ["--module-status", "nosuch"],
        1,
        [
            "module 'nosuch' is not installed",
            "✗ Module management operation failed with exit code 2",
            "Module management failed (hs-tx exit code 2)",
        ],
        "stdout",
    ),
    (
        ["--disable", "local"],
        0,
        [
            "Operation: disable",
            "Target: local",
            "module local disabled",
            "✓ Module management operation completed successfully",
        ],
        "stdout",
    ),
    (["--enable", "local"], 0, ["module local is already enabled; nothing to do"], "stdout"),
    (
        ["--disable-component", "website", "premium"],
        0,
        ["Component: premium", "component premium of module website disabled", "✓ Module"],
        "stdout",
    ),
    (
        ["--enable-component", "website", "nosuch"],
        1,
        ["no component 'nosuch'", "✗ Module management operation failed with exit code 2"],
        "stdout",
    ),
    (
        ["--set-module-branch", "website", "develop"],
        0,
        ["Operation: set-branch", "module website set to branch develop", "✓ Module"],
        "stdout",
    ),
    (
        ["--set-module-branch", "website", "nosuch"],
        1,
        ["has no branch 'nosuch'", "failed with exit code 2"],
        "stdout",
    ),
    (
        ["--check"],
        0,
        [
            "Mode: check",
            "Check-only mode: detecting updates without applying...",
            "Orchestrator is up to date",
            "Schema updates available:",
            "  - website (schema update needed)",
            "Checking enabled modules for content updates...",
            "  - local module: success",
            "✓ Update system completed successfully",
        ],
        "stdout",
    ),
    (
        [],
        0,
        [
            "Starting HOMESERVER update manager...",
            "Mode: full",
            "Step: modules run done",
            "committed",
            "✓ Update system completed successfully",
            "Update manager completed successfully",
        ],
        "log",
    ),
]


@pytest.mark.parametrize(("flags", "code", "expected", "where"), CONTRACT, ids=str)
def test_each_flag_of_the_original_keeps_its_meaning_and_shape(
    box: Box, flags: list[str], code: int, expected: list[str], where: str
) -> None:
    if flags[:1] != ["--check"]:
        ok(box.sbx.hs_tx("update"))  # installed from the source, as on a box in use
    box.log.parent.mkdir(parents=True, exist_ok=True)
    box.log.write_text("an earlier run's log\n")

    result = box.run(*flags)

    assert result.returncode == code, result.stdout + result.stderr
    if where == "usage":  # as the original: its usage, after the line saying what was wrong
        assert "Usage:" in result.stdout and "--set-module-branch" in result.stdout
        first = result.stdout.splitlines()[0] if expected else ""
        assert all(want in messages(first)[0] for want in expected), first
        return
    assert result.stderr == "", "the original prints to stdout (or its log) only"
    if where == "log":
        assert result.stdout == "", "an update run writes to the log only"
        text = box.log.read_text()
        assert "an earlier run's log" not in text, "an update run truncates the log"
    else:
        text = result.stdout
        assert box.log.read_text() == "an earlier run's log\n", "only update runs log"
    said = messages(text)
    at = 0
    for want in expected:
        found = [i for i, line in enumerate(said) if want in line and i >= at]
        assert found, f"{want!r} not in order in:\n" + "\n".join(said)
        at = found[0]
    if code != 0 and where == "stdout":
        assert re.fullmatch(r".* \(hs-tx exit code \d+\)", said[-1]), "hs-tx's code comes last"


def test_the_module_listing_is_what_the_admin_ui_parses(box: Box) -> None:
    ok(box.sbx.hs_tx("update"))
    said = messages(box.run("--list-modules").stdout)
    end = next(i for i, line in enumerate(said) if TOTAL.fullmatch(line))
    listed = said[said.index("Available modules:") + 1 : end]
    rows = {m.group(1): m.groups() for m in map(MODULE.fullmatch, listed) if m}
    assert len(rows) == len(listed), listed
    assert rows["website"] == (
        "website",
        "ENABLED",
        "1.0.0",
        "master",
        "master",
        "HOMESERVER website frontend/backend",
    )
    assert rows["local"] == ("local", "ENABLED", "0.3.0", None, None, "No description")
    total = next(TOTAL.fullmatch(line) for line in said if TOTAL.fullmatch(line))
    assert total.groups() == ("2", "2", "0")


def test_a_session_of_the_admin_ui_through_the_wrapper(box: Box) -> None:
    """Update, list, disable a component, switch a branch, status, update again: each
    through the wrapper, each change a journaled transaction, the log the last run's."""
    sbx = box.sbx
    assert box.run().returncode == 0
    assert runs(sbx, "website") == 1 and runs(sbx, "local") == 1
    first_log = messages(box.log.read_text())
    assert first_log[-1] == "Update manager completed successfully"

    assert box.run("--disable-component", "website", "premium").returncode == 0
    assert box.run("--set-module-branch", "website", "develop").returncode == 0
    assert box.run("--disable", "local").returncode == 0
    status = messages(box.run("--status", "website").stdout)
    assert "Branch: develop (default master)" in status
    assert any(line.split()[:2] == ["premium", "DISABLED"] for line in status)

    assert box.run().returncode == 0
    assert (runs(sbx, "website"), runs(sbx, "local")) == (2, 1), "local is disabled"
    assert components(sbx, "website")["premium"] is False
    assert index_of(sbx, "website")["config"]["repository"]["branch"] == "develop"
    kinds = [(r["kind"], r["state"]) for r in reversed(history(sbx))]
    assert kinds == [("update", "committed")] + [("config", "committed")] * 3 + [
        ("update", "committed")
    ]
    log = messages(box.log.read_text())
    assert "Step: modules run done website (100%)" in log, "the progress, one step a line"
    assert first_log[0] == log[0] == "Starting HOMESERVER update manager..."
    assert len([m for m in log if m == "Mode: full"]) == 1, "the log holds only the last run"


def test_a_failed_update_is_exit_1_with_hs_txs_own_code_last(box: Box) -> None:
    sbx = box.sbx
    ok(sbx.hs_tx("update"))
    sbx.module("bad", "def main(args):\n    raise SystemExit(4)\n")

    result = box.run()

    assert result.returncode == 1
    said = messages(box.log.read_text())
    assert "✗ Update system failed with exit code 1" in said
    assert said[-1] == "Update manager failed (hs-tx exit code 1)"
    assert any("rolled back" in line for line in said)
    assert json.loads(ok(sbx.hs_tx("history", "--json")).stdout)[0]["state"] == "rolled_back"


def test_without_hs_tx_it_says_so_and_exits_1(box: Box, tmp_path: Path) -> None:
    env = {**os.environ, "HS_TX": str(tmp_path / "nowhere"), "HS_TX_UPDATE_LOG": str(box.log)}
    result = subprocess.run(
        ["bash", str(WRAPPER), "--list-modules"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1
    assert messages(result.stdout)[-1] == f"Error: hs-tx not found (HS_TX={tmp_path}/nowhere)"


def test_check_changes_nothing_and_runs_each_modules_own_check(box: Box) -> None:
    box.sbx.module("noisy", 'def main(args):\n    print("noisy checks")\n    return {}\n')

    result = box.run("--check")

    assert result.returncode == 0, result.stdout
    said = messages(result.stdout)  # a module's own output too, in the orchestrator's format
    assert any("noisy checks" in line for line in said), said
    assert '  - local module: success: {"success": true}' in said
    assert runs(box.sbx, "local") == 0, "the check ran in a throwaway copy of the system"
    assert not (box.sbx.modules / "website").exists(), "nothing was installed"
    journal = box.sbx.state / "journal.db"
    assert not journal.exists() or history(box.sbx) == [], "no transaction was opened"
