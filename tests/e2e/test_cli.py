"""`hs-tx history` and `hs-tx show` through the real command."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import Sandbox

HISTORY_KEYS = {"id", "kind", "state", "started_at", "finished_at", "undoes", "undone_by"}
SHOW_KEYS = {"id", "kind", "state", "paths", "modules", "events", "error"}
PATH_KEYS = {"path", "existed", "backend", "snapshot", "changed"}
MODULE_KEYS = {"name", "version_from", "version_to", "status", "duration_s", "output_tail"}
EVENT_KEYS = {"seq", "phase", "step", "status", "at"}


@pytest.fixture(scope="module")
def sbx(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    """A sandbox with two transactions: 1 committed, 2 rolled back."""
    sandbox = Sandbox(tmp_path_factory.mktemp("cli") / "sbx", backend="tar").create()
    app = sandbox.data / "app"
    app.mkdir()
    (app / "conf").write_text("v1\n")
    sandbox.module(
        "writer",
        f"""
        import os
        def main(args):
            print("writer says hello")
            if os.path.exists({str(sandbox.root / "fail")!r}):
                open({str(app / "conf")!r}, "w").write("broken\\n")
                return {{"success": False, "error": "told to fail"}}
            open({str(app / "conf")!r}, "w").write("v2\\n")
            return {{"success": True}}
        """,
        backup_paths=[app],
        version="1.2.3",
        extra_meta={"service_name": "writerd"},
    )
    first = sandbox.hs_tx("update")
    assert first.returncode == 0, first.stderr
    (sandbox.root / "fail").write_text("")
    second = sandbox.hs_tx("update")
    assert second.returncode == 1, second.stderr
    return sandbox


def iso_with_offset(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None, f"{value} has no UTC offset"
    assert re.search(r"([+-]\d\d:\d\d|Z)$", value), value
    return parsed


def test_history_json_is_one_document(sbx: Sandbox) -> None:
    result = sbx.hs_tx("history", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    assert [r["id"] for r in rows] == [2, 1], "newest first"
    for row in rows:
        assert row.keys() >= HISTORY_KEYS, row.keys()
        assert row["kind"] == "update"
        assert row["undoes"] is None and row["undone_by"] is None
        start = iso_with_offset(row["started_at"])
        end = iso_with_offset(row["finished_at"])
        assert start <= end
    assert [r["state"] for r in rows] == ["rolled_back", "committed"]
    assert iso_with_offset(rows[1]["finished_at"]) <= iso_with_offset(rows[0]["started_at"])


def test_history_limit(sbx: Sandbox) -> None:
    result = sbx.hs_tx("history", "--json", "--limit", "1")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == [2]


@pytest.mark.parametrize("bad", ["0", "-1", "x"])
def test_history_bad_limit_is_usage_error(sbx: Sandbox, bad: str) -> None:
    result = sbx.hs_tx("history", "--json", "--limit", bad)
    assert result.returncode == 2
    assert result.stdout == ""


def test_history_table(sbx: Sandbox) -> None:
    result = sbx.hs_tx("history")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines[0]
    columns = ["ID", "Date and time", "Kind", "State", "Modules run/failed", "Duration"]
    positions = [header.find(c) for c in columns]
    assert all(p >= 0 for p in positions), header
    assert positions == sorted(positions), "columns in the documented order"
    body = [line for line in lines[1:] if line.strip() and not set(line) <= {"-", " "}]
    assert len(body) == 2
    assert body[0].split()[0] == "2" and "rolled_back" in body[0]
    assert body[1].split()[0] == "1" and "committed" in body[1]
    assert re.search(r"\b1/0\b", body[1]), body[1]
    assert re.search(r"\b1/1\b", body[0]), body[0]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", body[1]), body[1]


def test_show_json_committed(sbx: Sandbox) -> None:
    result = sbx.hs_tx("show", "1", "--json")
    assert result.returncode == 0, result.stderr
    tx = json.loads(result.stdout)
    assert isinstance(tx, dict)
    assert tx.keys() >= SHOW_KEYS, tx.keys()
    assert tx["id"] == 1 and tx["kind"] == "update" and tx["state"] == "committed"
    assert tx["error"] is None
    assert tx["paths"]
    for path in tx["paths"]:
        assert path.keys() >= PATH_KEYS, path.keys()
    by_path = {p["path"]: p for p in tx["paths"]}
    app = by_path[str(sbx.data / "app")]
    assert app["existed"] is True
    assert app["backend"] == "tar"
    assert app["snapshot"]
    assert app["changed"] is True
    assert by_path[str(sbx.modules)]["changed"] is False  # the modules dir, one path
    [module] = tx["modules"]
    assert module.keys() >= MODULE_KEYS, module.keys()
    assert module["name"] == "writer"
    assert module["status"] == "success"
    assert module["version_from"] == "1.2.3" and module["version_to"] == "1.2.3"
    assert isinstance(module["duration_s"], int | float) and module["duration_s"] >= 0
    assert "writer says hello" in module["output_tail"]
    assert tx["events"]
    seqs = []
    for event in tx["events"]:
        assert event.keys() >= EVENT_KEYS, event.keys()
        iso_with_offset(event["at"])
        seqs.append(event["seq"])
    assert seqs == list(range(1, len(seqs) + 1))


def test_show_json_rolled_back(sbx: Sandbox) -> None:
    result = sbx.hs_tx("show", "2", "--json")
    assert result.returncode == 0, result.stderr
    tx = json.loads(result.stdout)
    assert tx.keys() >= SHOW_KEYS
    assert tx["state"] == "rolled_back"
    assert "told to fail" in tx["error"]
    [module] = tx["modules"]
    assert module["status"] == "failed"
    assert any(e["phase"] == "rollback" for e in tx["events"])
    assert (sbx.data / "app" / "conf").read_text() == "v2\n"


def test_show_text(sbx: Sandbox) -> None:
    result = sbx.hs_tx("show", "1")
    assert result.returncode == 0, result.stderr
    assert "committed" in result.stdout
    assert str(sbx.data / "app") in result.stdout
    assert "writer" in result.stdout


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_show_unknown_id_exits_2(sbx: Sandbox, json_flag: list[str]) -> None:
    result = sbx.hs_tx("show", "999", *json_flag)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "999" in result.stderr
    assert "Traceback" not in result.stderr


def test_json_on_empty_journal(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "sbx", backend="tar").create()
    result = sandbox.hs_tx("history", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
