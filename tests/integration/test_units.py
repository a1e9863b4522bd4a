"""The systemd units hs-tx keeps installed (modules/hs_tx/units, also scripts/systemd).

`systemd-analyze verify` checks them as shipped, byte for byte, in a throwaway
root (`--root`): the root holds the host's system units (for sysinit.target,
timers.target, ...) and an executable at /usr/local/sbin/hs-tx, which verify
requires. systemd need not be PID 1 for this. A unit passes only when verify
exits 0 and prints nothing: it reports some errors (a misspelt Type=, an
unknown key) only as warnings, so the output counts too. Broken copies prove
the check can fail. A plain reading of the files checks the settings that
boot safety depends on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, need

UNITS_DIR = REPO / "modules" / "hs_tx" / "units"
UNITS = ("hs-tx-recover.service", "hs-tx-update.service", "hs-tx-update.timer")
HS_TX = "/usr/local/sbin/hs-tx"
HOST_SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def make_root(tmp_path: Path) -> Path:
    """A root for `systemd-analyze verify --root`: host system units, an hs-tx, our units."""
    need(shutil.which("systemd-analyze") is not None, "needs systemd-analyze (systemd)")
    need(HOST_SYSTEM_UNITS.is_dir(), f"needs the host's system units in {HOST_SYSTEM_UNITS}")
    root = tmp_path / "root"
    shutil.copytree(HOST_SYSTEM_UNITS, root / HOST_SYSTEM_UNITS.relative_to("/"), symlinks=True)
    hs_tx = root / HS_TX.lstrip("/")
    hs_tx.parent.mkdir(parents=True)
    hs_tx.write_text("#!/bin/sh\nexit 0\n")
    hs_tx.chmod(0o755)
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    for name in UNITS:
        shutil.copy2(UNITS_DIR / name, unit_dir / name)
    return root


def verify(root: Path) -> str:
    """Run verify on the three units in `root`; return what it reported ("" when clean)."""
    unit_dir = root / "etc" / "systemd" / "system"
    proc = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *(str(unit_dir / u) for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        # no pager, no colour: the output is compared with ""
        env={**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
    )
    report = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        return f"exit status {proc.returncode}: {report}"
    return report


def test_shipped_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    root = make_root(tmp_path)

    assert verify(root) == ""


BROKEN: dict[str, tuple[str, str, str]] = {
    # case: (unit, text, replacement) - each must make verify complain
    "type-typo": ("hs-tx-recover.service", "Type=oneshot", "Type=oneshoot"),
    "missing-binary": ("hs-tx-recover.service", f"ExecStart={HS_TX} ", f"ExecStart={HS_TX}-x "),
    "bad-nice": ("hs-tx-update.service", "Nice=19", "Nice=99"),
    "unknown-key": ("hs-tx-recover.service", "RemainAfterExit=", "RemainAfterExits="),
    "bad-timeout": ("hs-tx-recover.service", "TimeoutStartSec=10min", "TimeoutStartSec=10 mon"),
    "bad-calendar": ("hs-tx-update.timer", "OnCalendar=daily", "OnCalendar=dayly"),
    "no-exec": ("hs-tx-update.service", f"ExecStart={HS_TX} update --wait", ""),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_unit_fails_verify(tmp_path: Path, case: str) -> None:
    unit, text, replacement = BROKEN[case]
    root = make_root(tmp_path)
    path = root / "etc" / "systemd" / "system" / unit
    original = path.read_text()
    assert text in original, f"the broken case {case} no longer matches {unit}"
    path.write_text(original.replace(text, replacement))

    report = verify(root)

    assert report != "", f"verify accepted a broken {unit} ({case})"
    assert unit in report


def unit_settings(path: Path) -> dict[str, dict[str, str]]:
    """Section -> key -> value of a unit file (a repeated key keeps its last value)."""
    settings: dict[str, dict[str, str]] = {}
    section: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = settings.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        section[key.strip()] = value.strip()
    return settings


def test_recover_unit_runs_early_and_cannot_hang_boot() -> None:
    unit = unit_settings(UNITS_DIR / "hs-tx-recover.service")

    assert unit["Unit"]["DefaultDependencies"] == "no"
    assert unit["Unit"]["After"].split() == ["local-fs.target"]
    assert set(unit["Unit"]["Before"].split()) == {"sysinit.target", "shutdown.target"}
    assert unit["Unit"]["Conflicts"] == "shutdown.target"
    assert unit["Service"] == {
        "Type": "oneshot",
        "ExecStart": f"{HS_TX} recover",
        "RemainAfterExit": "yes",
        "TimeoutStartSec": "10min",
        "StandardOutput": "journal+console",
    }
    assert unit["Install"] == {"WantedBy": "sysinit.target"}


def test_update_service_and_timer() -> None:
    service = unit_settings(UNITS_DIR / "hs-tx-update.service")
    timer = unit_settings(UNITS_DIR / "hs-tx-update.timer")

    assert service["Unit"]["Wants"] == service["Unit"]["After"] == "network-online.target"
    assert service["Service"] == {
        "Type": "oneshot",
        "ExecStart": f"{HS_TX} update --wait",
        "Nice": "19",
        "IOSchedulingClass": "idle",
        "TimeoutStartSec": "6h",
        "Delegate": "yes",  # hs-tx puts each module in a cgroup of its own
    }
    assert "Install" not in service, "the timer starts it; it is not enabled itself"
    assert timer["Timer"] == {
        "OnCalendar": "daily",
        "RandomizedDelaySec": "1h",
        "Persistent": "true",
    }
    assert timer["Install"] == {"WantedBy": "timers.target"}


@pytest.mark.parametrize("name", UNITS)
def test_each_unit_starts_with_a_comment_on_running_it_by_hand(name: str) -> None:
    lines = (UNITS_DIR / name).read_text().splitlines()
    header = lines[: lines.index("[Unit]")]

    assert header and all(line.startswith("#") or not line for line in header)
    assert any("By hand:" in line for line in header), f"{name} does not say how to run it"


def test_scripts_systemd_is_a_relative_link_to_the_units() -> None:
    link = REPO / "scripts" / "systemd"

    assert link.is_symlink()
    assert os.readlink(link) == "../modules/hs_tx/units"
    assert sorted(p.name for p in link.iterdir()) == sorted(UNITS)
