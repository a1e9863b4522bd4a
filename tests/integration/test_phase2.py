"""Phase 2 completed: maintenance tasks and group selection, through the real command."""

from __future__ import annotations

from tests.helpers import Sandbox, tree_state

RECORD = """
def main(args):
    with open({log!r}, "a") as f:
        f.write("{name}\\n")
    return {{"success": True}}
"""

MAINTENANCE = """
import json, pathlib

class HelperThing:
    pass

class TidyMaintenance:
    def __init__(self, config):
        self.config = config

    def run_maintenance(self):
        name = self.config["metadata"]["name"]
        with open({log!r}, "a") as f:
            f.write(f"maintenance {{name}} {{self.config['metadata']['schema_version']}}\\n")
        return {{"success": {ok}, "error": "maintenance broke"}}
"""


def group_module(sbx: Sandbox, name: str, order: int, log: str) -> None:
    sbx.module(
        name,
        RECORD.format(log=log, name=name),
        extra_meta={"group": "git", "group_order": order, "service_name": f"{name}.service"},
    )


def test_only_the_first_active_member_of_a_group_runs(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    log = str(sbx.root / "ran.log")
    group_module(sbx, "gogs", 1, log)
    group_module(sbx, "forgejo", 2, log)
    sbx.module("solo", RECORD.format(log=log, name="solo"))
    (sbx.root / "active-forgejo.service").touch()

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert sorted((sbx.root / "ran.log").read_text().split()) == ["forgejo", "solo"]
    assert "group git: runs forgejo" in result.stderr


def test_the_first_in_group_order_wins_when_several_are_active(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    log = str(sbx.root / "ran.log")
    group_module(sbx, "zeta", 1, log)
    group_module(sbx, "alpha", 2, log)
    for name in ("zeta", "alpha"):
        (sbx.root / f"active-{name}.service").touch()

    assert sbx.hs_tx("update").returncode == 0
    assert (sbx.root / "ran.log").read_text().split() == ["zeta"]


def test_no_member_runs_when_none_is_active(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    log = str(sbx.root / "ran.log")
    group_module(sbx, "gogs", 1, log)
    group_module(sbx, "forgejo", 2, log)
    sbx.module("solo", RECORD.format(log=log, name="solo"))

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert (sbx.root / "ran.log").read_text().split() == ["solo"]
    assert "group git: runs none" in result.stderr


def test_an_unreachable_service_manager_counts_as_inactive(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    log = str(sbx.root / "ran.log")
    group_module(sbx, "gogs", 1, log)
    sbx.module("solo", RECORD.format(log=log, name="solo"))
    text = sbx.config.read_text().replace(
        f'"{sbx.root}/svc", "is-active"', '"/nonexistent/svc", "x"'
    )
    sbx.config.write_text(text)

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert (sbx.root / "ran.log").read_text().split() == ["solo"]


def test_maintenance_runs_with_the_index_and_is_journaled(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    log = str(sbx.root / "ran.log")
    sbx.module(
        "web",
        RECORD.format(log=log, name="web"),
        version="2.1.0",
        files={"maintenance.py": MAINTENANCE.format(log=log, ok=True)},
    )

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert (sbx.root / "ran.log").read_text().splitlines() == ["maintenance web 2.1.0", "web"]
    modules = sbx.journal_json(1)["modules"]
    assert [(m["name"], m["kind"], m["status"]) for m in modules] == [
        ("web", "maintenance", "success"),
        ("web", "main", "success"),
    ]
    steps = [e["step"] for e in sbx.journal_json(1)["events"] if e["phase"] == "modules"]
    assert steps[:2] == ["maintenance", "maintenance"]


def test_failing_maintenance_rolls_back(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    log = str(sbx.data / "ran.log")
    sbx.module(
        "web",
        RECORD.format(log=log, name="web"),
        backup_paths=[sbx.data],
        files={"maintenance.py": MAINTENANCE.format(log=log, ok=False)},
    )
    before = tree_state(sbx.data)

    result = sbx.hs_tx("update")

    assert result.returncode == 1
    assert "maintenance of web failed: maintenance broke" in result.stderr
    assert tree_state(sbx.data) == before


def test_disabled_module_maintenance_does_not_run(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    log = str(sbx.root / "ran.log")
    sbx.module(
        "web",
        RECORD.format(log=log, name="web"),
        extra_meta={"enabled": False},
        files={"maintenance.py": MAINTENANCE.format(log=log, ok=True)},
    )

    assert sbx.hs_tx("update").returncode == 0
    assert not (sbx.root / "ran.log").exists()
