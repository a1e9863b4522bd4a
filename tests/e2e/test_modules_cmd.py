"""`hs-tx modules list|enable|disable` through the real command, on a real ext4 (tar backend)
and a real git source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_locking import Waiter
from tests.helpers import GitSource, Sandbox, module_files, tree_state

HS_TX = [sys.executable, "-m", "hs_txupdate.cli"]
COUNTER = """
def main(args):
    with open({path!r}, "a") as f:
        f.write("ran\\n")
    return {{"success": True}}
"""


def counting(sbx: Sandbox, name: str) -> str:
    """A module body that appends a line to data/<name>.runs each time it runs."""
    return COUNTER.format(path=str(sbx.data / f"{name}.runs"))


def runs(sbx: Sandbox, name: str) -> int:
    path = sbx.data / f"{name}.runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


def listing(sbx: Sandbox) -> dict[str, dict[str, Any]]:
    rows = json.loads(ok(sbx.hs_tx("modules", "list", "--json")).stdout)
    assert isinstance(rows, list)
    return {row["name"]: row for row in rows}


def history(sbx: Sandbox) -> list[dict[str, Any]]:
    return json.loads(ok(sbx.hs_tx("history", "--json")).stdout)


def index_of(sbx: Sandbox, name: str) -> dict[str, Any]:
    return json.loads((sbx.modules / name / "index.json").read_text())


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The rows of a `simple` tabulate table, keyed by their first cell."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["Name", "Installed", "Source", "Enabled", "Group", "Last", "result"]
    return {line.split()[0]: line.split() for line in lines[2:] if line.strip()}


def test_list_shows_versions_flags_groups_and_last_results(src: tuple[Sandbox, GitSource]) -> None:
    sbx, source = src
    (sbx.root / "active-alpha").write_text("")  # alpha wins its group
    source.publish(
        {
            "alpha": module_files(
                "alpha", counting(sbx, "alpha"), meta={"group": "web", "service_name": "alpha"}
            ),
            "beta": module_files("beta", counting(sbx, "beta"), version="2.1.0"),
        }
    )
    sbx.module("local", counting(sbx, "local"), version="0.3.0")
    sbx.module("off", counting(sbx, "off"), extra_meta={"enabled": False, "group": "db"})

    before = listing(sbx)
    assert {n: (r["source_version"], r["last_result"]) for n, r in before.items()} == {
        "local": (None, None),
        "off": (None, None),
    }, "no clone and no journal yet: no source versions, no results"
    assert not sbx.state.exists(), "list must not create the state dir"

    ok(sbx.hs_tx("update"))
    fetched = source.git("rev-parse", "HEAD")
    source.publish({"alpha": module_files("alpha", counting(sbx, "alpha"), version="9.0.0")})
    # A module whose index.json is broken is listed anyway, with its problem.
    (sbx.modules / "broken").mkdir()
    (sbx.modules / "broken" / "index.json").write_text('{"metadata": {"schema_version": "1.0.0"')

    rows = listing(sbx)

    assert list(rows) == ["alpha", "beta", "broken", "local", "off"]
    view = {
        n: (r["installed_version"], r["source_version"], r["enabled"], r["group"])
        for n, r in rows.items()
    }
    assert view == {
        "alpha": ("1.0.0", "1.0.0", True, "web"),  # the clone as last fetched, not 9.0.0
        "beta": ("2.1.0", "2.1.0", True, None),
        "broken": (None, None, None, None),
        "local": ("0.3.0", None, True, None),
        "off": ("1.0.0", None, False, "db"),
    }
    for name in ("alpha", "beta", "local"):
        last = rows[name]["last_result"]
        assert (last["tx"], last["status"]) == (1, "success"), name
        assert "T" in last["at"] and last["at"][-6] in "+-", last["at"]
    assert rows["off"]["last_result"] is None and rows["broken"]["last_result"] is None
    assert "malformed" in rows["broken"]["problem"]
    assert all(rows[n]["problem"] is None for n in ("alpha", "beta", "local", "off"))

    table = ok(sbx.hs_tx("modules", "list"))
    cells = table_rows(table.stdout)
    assert cells["alpha"] == ["alpha", "1.0.0", "1.0.0", "yes", "web", "success", "(tx", "1)"]
    assert cells["local"] == ["local", "0.3.0", "-", "yes", "-", "success", "(tx", "1)"]
    assert cells["off"] == ["off", "1.0.0", "-", "no", "db", "-"]
    assert cells["broken"][:6] == ["broken", "-", "-", "?", "-", "-"]
    assert "broken: module broken: index.json is malformed" in table.stdout

    assert [r["id"] for r in history(sbx)] == [1], "list opens no transaction"
    clone = sbx.state / "source"
    tracked = source.git("--git-dir", str(clone), "rev-parse", "refs/remotes/origin/master")
    assert tracked == fetched, "list must never fetch"


def test_disable_and_enable_are_committed_config_transactions(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    sbx.module("keep", counting(sbx, "keep"))
    sbx.module("toggle", counting(sbx, "toggle"))
    index_file = sbx.modules / "toggle" / "index.json"
    os.chmod(index_file, 0o640)
    ok(sbx.hs_tx("update"))
    assert (runs(sbx, "keep"), runs(sbx, "toggle")) == (1, 1)

    disabled = ok(sbx.hs_tx("modules", "disable", "toggle"))

    assert disabled.stdout == ""
    text = index_file.read_text()
    assert json.loads(text)["metadata"]["enabled"] is False
    assert text.endswith("}\n") and '\n  "metadata": {\n    "schema_version"' in text
    assert os.stat(index_file).st_mode & 0o7777 == 0o640, "the file keeps its mode"
    rows = history(sbx)
    assert [(r["id"], r["kind"], r["state"]) for r in rows[:1]] == [(2, "config", "committed")]
    tx = sbx.journal_json(2)
    assert [(p["path"], p["existed"], p["changed"]) for p in tx["paths"]] == [
        (str(sbx.modules / "toggle"), True, True)
    ]
    steps = [(e["phase"], e["step"], e["status"]) for e in tx["events"]]
    assert ("config", "set-enabled", "intent") in steps
    assert steps.index(("config", "set-enabled", "intent")) < steps.index(
        ("config", "set-enabled", "done")
    )
    assert steps.index(("snapshot", "capture", "done")) < steps.index(
        ("config", "set-enabled", "intent")
    ), "snapshotted before the change"
    assert tx["exit_code"] == 0 and tx["modules"] == []

    ok(sbx.hs_tx("update"))
    assert (runs(sbx, "keep"), runs(sbx, "toggle")) == (2, 1), "a disabled module is skipped"
    assert [m["name"] for m in sbx.journal_json(3)["modules"]] == ["keep"]

    ok(sbx.hs_tx("modules", "enable", "toggle"))
    assert index_of(sbx, "toggle")["metadata"]["enabled"] is True
    assert [(r["kind"], r["state"]) for r in history(sbx)[:1]] == [("config", "committed")]
    ok(sbx.hs_tx("update"))
    assert (runs(sbx, "keep"), runs(sbx, "toggle")) == (3, 2)


def test_disabled_state_survives_a_schema_update(src: tuple[Sandbox, GitSource]) -> None:
    sbx, source = src
    source.publish({"svc": module_files("svc", counting(sbx, "svc"), version="1.0.0")})
    ok(sbx.hs_tx("update"))
    ok(sbx.hs_tx("modules", "disable", "svc"))
    new_body = counting(sbx, "svc") + "# version two\n"
    source.publish({"svc": module_files("svc", new_body, version="2.0.0")})
    assert '"enabled": true' in (source.work / "modules/svc/index.json").read_text()

    ok(sbx.hs_tx("update"))

    index = index_of(sbx, "svc")
    assert index["metadata"]["schema_version"] == "2.0.0"
    assert "# version two" in (sbx.modules / "svc" / "index.py").read_text()
    assert index["metadata"]["enabled"] is False, "the operator's choice must survive"
    assert runs(sbx, "svc") == 1, "still disabled: it did not run after the update"
    row = listing(sbx)["svc"]
    assert (row["installed_version"], row["source_version"], row["enabled"]) == (
        "2.0.0",
        "2.0.0",
        False,
    )


def test_refused_names_change_nothing(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    sbx.module("a", counting(sbx, "a"))
    ok(sbx.hs_tx("update"))
    # Real targets for the names, so a refusal cannot be an accident of a missing path.
    (sbx.modules / "a" / "b").mkdir()
    (sbx.modules / "a" / "b" / "index.json").write_text('{"metadata": {"enabled": true}}')
    outside = sbx.root / "x"
    outside.mkdir()
    (outside / "index.json").write_text('{"metadata": {"enabled": false}}')
    before = (tree_state(sbx.modules), tree_state(outside))

    for action, name, words in (
        ("enable", "../x", "invalid module name"),
        ("enable", "a/b", "invalid module name"),
        ("disable", "not-installed", "not installed"),
    ):
        result = sbx.hs_tx("modules", action, name)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and name in lines[0], result.stderr
        assert "Traceback" not in result.stderr

    assert (tree_state(sbx.modules), tree_state(outside)) == before
    assert [r["id"] for r in history(sbx)] == [1], "a refusal journals nothing"


def test_already_in_the_wanted_state_is_a_no_op(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    sbx.module("on", counting(sbx, "on"))
    sbx.module("off", counting(sbx, "off"), extra_meta={"enabled": False})
    before = tree_state(sbx.modules)

    on = ok(sbx.hs_tx("modules", "enable", "on"))
    off = ok(sbx.hs_tx("modules", "disable", "off"))

    assert "already enabled" in on.stderr and "already disabled" in off.stderr
    assert tree_state(sbx.modules) == before, "not even rewritten"
    assert history(sbx) == [], "no transaction"


def test_a_broken_enabled_module_can_be_disabled(tar_sandbox: Sandbox) -> None:
    """An enabled module with an invalid schema_version does not run (the others do);
    disabling it is how the operator silences it."""
    sbx = tar_sandbox
    sbx.module("good", counting(sbx, "good"))
    sbx.module("bad", counting(sbx, "bad"), version="not-a-version")
    assert sbx.hs_tx("update").returncode == 0
    assert runs(sbx, "good") == 1 and runs(sbx, "bad") == 0
    assert "field 'metadata.schema_version'" in listing(sbx)["bad"]["problem"]

    ok(sbx.hs_tx("modules", "disable", "bad"))
    ok(sbx.hs_tx("update"))

    assert (runs(sbx, "good"), runs(sbx, "bad")) == (2, 0)
    assert listing(sbx)["bad"]["problem"] is None


def test_a_crash_after_the_write_is_rolled_back(tar_sandbox: Sandbox) -> None:
    """Killed after the change but before the commit decision: recovery must put the
    index.json back, because a config event means the system may have changed."""
    sbx = tar_sandbox
    sbx.module("m", counting(sbx, "m"))
    before = tree_state(sbx.modules / "m")  # the scope (restores stage beside it)
    # durable events: plan, capture intent, capture done, set-enabled intent, done -> killed
    crashed = sbx.hs_tx("modules", "disable", "m", env={"HS_TX_CRASH_AT": "5"})
    assert crashed.returncode == -9, crashed.stderr
    assert index_of(sbx, "m")["metadata"]["enabled"] is False, "the crash came after the write"

    ok(sbx.hs_tx("recover"))

    assert tree_state(sbx.modules / "m") == before
    assert [(r["kind"], r["state"]) for r in history(sbx)] == [("config", "rolled_back")]


@pytest.fixture
def waiter(tar_sandbox: Sandbox) -> Iterator[Waiter]:
    w = Waiter(tar_sandbox)
    try:
        yield w
    finally:
        w.cleanup()


def test_enable_while_a_run_holds_the_lock(waiter: Waiter) -> None:
    sbx = waiter.sbx
    index_file = sbx.modules / "waiter" / "index.json"
    before = index_file.read_bytes()
    first = waiter.start()
    waiter.wait_inside_module(first)

    refused = sbx.hs_tx("modules", "disable", "waiter", timeout=60)

    assert refused.returncode == 75, refused.stderr
    assert str(first.pid) in refused.stderr
    assert index_file.read_bytes() == before

    waiting = subprocess.Popen(
        [*HS_TX, "--config", str(sbx.config), "modules", "disable", "waiter", "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    waiter.procs.append(waiting)
    time.sleep(1.0)
    assert waiting.poll() is None, waiting.communicate()[1]
    assert index_file.read_bytes() == before, "it must wait for the lock before changing"

    waiter.release()
    assert first.wait(timeout=60) == 0
    assert waiting.wait(timeout=60) == 0
    assert index_of(sbx, "waiter")["metadata"]["enabled"] is False
    rows = history(sbx)
    assert [(r["id"], r["kind"], r["state"]) for r in rows] == [
        (2, "config", "committed"),
        (1, "update", "committed"),
    ], "the refused run journaled nothing; the waiting one ran after the holder"
