"""Phase 3: hs-tx installs a newer hs-tx from the source and re-executes it.

Runs against a throwaway virtualenv (never the suite's own): it gets the
suite's third-party packages through a .pth file, and hs-tx itself is
installed into it from a copy of this repository.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import REPO, GitSource, Sandbox, module_files

MARKER_HOOK = """
import os as _os
if _os.environ.get("HS_TX_RESUME") and _os.environ.get("HS_TX_TEST_MARKER"):
    with open(_os.environ["HS_TX_TEST_MARKER"], "a") as _f:
        _f.write(__version__ + " " + _os.environ["HS_TX_RESUME"] + "\\n")
"""


def copy_project(dest: Path, version: str, hook: bool = False) -> None:
    """This repository's tracked files (as in the work tree) with another version."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in tracked:
        # the shipped modules would act on this machine: the tests publish their own
        if rel.startswith(("tests/", ".ci/", "modules/")) or not (REPO / rel).exists():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel, follow_symlinks=False)
    init = dest / "hs_txupdate" / "__init__.py"
    text = re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text())
    init.write_text(text + (MARKER_HOOK if hook else ""))
    index = json.loads((dest / "index.json").read_text())
    index["metadata"]["schema_version"] = version
    (dest / "index.json").write_text(json.dumps(index, indent=2))


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A throwaway virtualenv with hs-tx 0.1.0 installed from a copy of this repo."""
    env = tmp_path / "venv"
    subprocess.run([Path(sys.base_prefix) / "bin" / "python3", "-m", "venv", env], check=True)
    purelib = Path(
        subprocess.run(
            [
                env / "bin" / "python",
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (purelib / "suite-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    project = tmp_path / "project-0.1.0"
    copy_project(project, "0.1.0")
    subprocess.run(
        [
            env / "bin" / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(project),
        ],
        check=True,
    )
    return env


def hs_tx(env: Path, sbx: Sandbox, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [env / "bin" / "hs-tx", "--config", str(sbx.config), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **extra},
    )


def version(env: Path) -> str:
    return subprocess.run(
        [env / "bin" / "hs-tx", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def source(tar_sandbox: Sandbox) -> GitSource:
    src = GitSource(tar_sandbox.root / "upstream").create()
    tar_sandbox.source_url = src.url
    tar_sandbox.write_config()
    return src


def test_self_update_reexecs_and_finishes_the_same_transaction(
    venv: Path, tar_sandbox: Sandbox, source: GitSource, tmp_path: Path
) -> None:
    sbx = tar_sandbox
    copy_project(source.work, "0.2.0", hook=True)
    source.publish({"app": module_files("app", "def main(a):\n    return {'success': True}\n")})
    marker = tmp_path / "marker"

    result = hs_tx(venv, sbx, "update", HS_TX_TEST_MARKER=str(marker))

    assert result.returncode == 0, result.stderr
    assert version(venv) == "hs-tx 0.2.0"
    assert marker.read_text() == "0.2.0 1\n", "only the new code writes the marker"
    assert "hs-tx 0.2.0 resumed transaction 1" in result.stderr
    history = json.loads(hs_tx(venv, sbx, "history", "--json").stdout)
    assert [(t["id"], t["state"]) for t in history] == [(1, "committed")]
    tx = json.loads(hs_tx(venv, sbx, "show", "1", "--json").stdout)
    steps = [(e["step"], e["status"]) for e in tx["events"] if e["phase"] == "self-update"]
    assert steps == [
        ("install", "intent"),
        ("install", "done"),
        ("exec", "intent"),
        ("exec", "done"),
    ]
    assert str(venv) in {p["path"] for p in tx["paths"]}, "the install dir is in the scope"
    assert (sbx.modules / "app" / "index.json").exists()


def test_new_code_that_cannot_start_rolls_back_to_the_old_code(
    venv: Path, tar_sandbox: Sandbox, source: GitSource, tmp_path: Path
) -> None:
    sbx = tar_sandbox
    copy_project(source.work, "0.2.0", hook=True)
    main = source.work / "hs_txupdate" / "cli" / "main.py"
    main.write_text(main.read_text() + "\nthis is not python\n")
    source.publish({"app": module_files("app", "def main(a):\n    return {'success': True}\n")})
    marker = tmp_path / "marker"

    result = hs_tx(venv, sbx, "update", HS_TX_TEST_MARKER=str(marker))

    assert result.returncode == 1, result.stderr
    assert "the new hs-tx 0.2.0 does not start" in result.stderr
    assert version(venv) == "hs-tx 0.1.0"
    assert not marker.exists()
    tx = json.loads(hs_tx(venv, sbx, "show", "1", "--json").stdout)
    assert tx["state"] == "rolled_back"
    assert not (sbx.modules / "app").exists(), "phase 1 was rolled back too"
