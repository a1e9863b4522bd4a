"""The modules shipped in the repo's `modules/` dir: `migrations` and `hotfix`.

Through the real `hs-tx update`: run order, run once (has_run recorded), a
failure rolls the whole run back. Through direct `main()` calls in a fresh
interpreter (as HOMESERVER would call them): --check, --version, malformed
definitions, missing scripts, timeouts, and running without hs_txupdate.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hs_txupdate.modules.discovery import load_module
from tests.helpers import REPO, Sandbox, process_gone, tree_state, wait_gone

SHIPPED = REPO / "modules"
COMPAT = REPO / "hs_txupdate" / "compat"
RUN_TIMEOUT = 90  # seconds any single hs-tx run may take before the test fails
EXAMPLE_VAR = "HS_TX_MIGRATIONS_EXAMPLE_DIR"
LIST_KEY = {"migrations": "migrations", "hotfix": "targets"}

# ---------------------------------------------------------------- helpers


def install(
    modules_dir: Path,
    name: str,
    items: list[dict[str, Any]],
    scripts: dict[str, str],
    *,
    backup_paths: list[Path] | None = None,
    config: dict[str, Any] | None = None,
    indent: int | str | None = 2,
) -> Path:
    """Copy shipped module `name` into `modules_dir`, append `items` to its list
    (after the shipped ones) and write `scripts` into its src/; returns its dir."""
    dest = modules_dir / name
    shutil.copytree(SHIPPED / name, dest, ignore=shutil.ignore_patterns("__pycache__"))
    index = json.loads((dest / "index.json").read_text())
    index[LIST_KEY[name]] = [*index[LIST_KEY[name]], *items]
    index["configuration"]["backup_paths"] = [str(p) for p in backup_paths or []]
    index["configuration"].update(config or {})
    write_index(dest, index, indent)
    for file_name, text in scripts.items():
        (dest / "src" / file_name).write_text(text)
    return dest


def write_index(module_dir: Path, index: Any, indent: int | str | None = 2) -> None:
    """Write the module's index.json with the given indentation."""
    (module_dir / "index.json").write_text(json.dumps(index, indent=indent) + "\n")


def read_index(module_dir: Path) -> dict[str, Any]:
    """The module's index.json, parsed."""
    return json.loads((module_dir / "index.json").read_text())


def has_run(module_dir: Path) -> dict[str, bool]:
    """id -> has_run for the module's list."""
    key = LIST_KEY[module_dir.name]
    return {item["id"]: item["has_run"] for item in read_index(module_dir)[key]}


def migration(item_id: str) -> dict[str, Any]:
    """A pending migration entry."""
    return {"id": item_id, "description": f"test migration {item_id}", "has_run": False}


def target(item_id: str, check: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pending hotfix target (without version_check when `check` is None)."""
    item: dict[str, Any] = {"id": item_id, "description": f"test target {item_id}"}
    if check is not None:
        item["version_check"] = check
    return {**item, "has_run": False}


def append_py(log: Path, text: str, exit_code: int = 0) -> str:
    """A migration script that appends `text` to `log` (via migrations_common's log too)."""
    return (
        "import sys\n"
        "import migrations_common as mc\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        f"    f.write({text!r} + '\\n')\n"
        f"mc.log('appended {text}')\n"
        f"sys.exit({exit_code})\n"
    )


def append_sh(log: Path, text: str, exit_code: int = 0) -> str:
    """A hotfix script that appends `text` to `log`."""
    return (
        "set -eu\n"
        f"echo {shlex.quote(text)} >> {shlex.quote(str(log))}\n"
        f"echo 'appended {text}'\n"
        f"exit {exit_code}\n"
    )


def lines(path: Path) -> list[str]:
    """The lines of `path` ([] when it does not exist)."""
    return path.read_text().splitlines() if path.exists() else []


def module_row(tx: dict[str, Any], name: str) -> dict[str, Any]:
    """The one module row named `name` in `show --json` output."""
    rows = [m for m in tx["modules"] if m["name"] == name]
    assert len(rows) == 1, tx["modules"]
    return rows[0]


def update(sbx: Sandbox, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real `hs-tx update` in the sandbox."""
    return sbx.hs_tx("update", env=env, timeout=RUN_TIMEOUT)


CALL_MAIN = """
import importlib, importlib.util, json, sys, types
modules_dir, name, args, out, compat = sys.argv[1:6]
if compat:
    sys.path.insert(0, compat)
# the modules dir as package `modules`, whatever it is called, as hs-tx does
package = types.ModuleType("modules")
package.__path__ = [modules_dir]
sys.modules["modules"] = package
result = importlib.import_module("modules." + name).main(json.loads(args))
with open(out, "w") as f:
    json.dump({"result": result,
               "hs_txupdate_importable": importlib.util.find_spec("hs_txupdate") is not None}, f)
"""


def call_main(
    module_dir: Path, args: list[str] | None = None, *, bare: bool = False
) -> tuple[dict[str, Any], str]:
    """Call the module's main(args) in a fresh interpreter; return (result, output).

    Normal: the compat shim and hs_txupdate are importable (as in an hs-tx
    worker). `bare`: isolated, without site-packages or the shim, so neither
    `updates` nor hs_txupdate can be imported.
    """
    # the result goes outside the modules dir, which tests compare before and after
    fd, name = tempfile.mkstemp(prefix="hs-tx-result-", suffix=".json")
    os.close(fd)
    out = Path(name)
    flags = ["-I", "-S"] if bare else []
    argv = [sys.executable, *flags, "-c", CALL_MAIN, str(module_dir.parent), module_dir.name]
    argv += [json.dumps(args), str(out), "" if bare else str(COMPAT)]
    env = {k: v for k, v in os.environ.items() if k != EXAMPLE_VAR}
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env=env, cwd=module_dir.parent
    )
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = json.loads(out.read_text())
    finally:
        out.unlink()
    assert data["hs_txupdate_importable"] is not bare
    return data["result"], proc.stdout + proc.stderr


# ---------------------------------------------------------------- migrations through hs-tx


def test_migrations_run_in_list_order_exactly_once(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    app = sbx.data / "app"
    app.mkdir()
    log = app / "log.txt"
    example = app / "example" / "nested"
    # list order, not id order, is run order
    mod = install(
        sbx.modules,
        "migrations",
        [migration("00000020"), migration("00000010")],
        {"00000020.py": append_py(log, "00000020"), "00000010.py": append_py(log, "00000010")},
        backup_paths=[app],
    )

    first = update(sbx, env={EXAMPLE_VAR: str(example)})

    assert first.returncode == 0, first.stderr
    assert lines(log) == ["00000020", "00000010"]
    assert example.is_dir(), "the shipped example migration did not create its directory"
    assert has_run(mod) == {"00000001": True, "00000020": True, "00000010": True}
    expected = read_index(mod)
    assert (mod / "index.json").read_text() == json.dumps(expected, indent=2) + "\n"
    tx = sbx.journal_json(1)
    assert tx["state"] == "committed"
    row = module_row(tx, "migrations")
    assert row["status"] == "success"
    # script output (through migrations_common, imported from src/) reaches the journal
    assert "[migration 00000020] [INFO] appended 00000020" in (row["output_tail"] or "")
    assert f"created {example}" in (row["output_tail"] or "")

    second = update(sbx, env={EXAMPLE_VAR: str(example)})

    assert second.returncode == 0, second.stderr
    assert lines(log) == ["00000020", "00000010"], "a migration ran twice"
    assert "nothing pending" in (module_row(sbx.journal_json(2), "migrations")["output_tail"])


def test_failing_migration_rolls_back_the_whole_run(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    app = sbx.data / "app"
    app.mkdir()
    log = app / "log.txt"
    log.write_text("before\n")
    mod = install(
        sbx.modules,
        "migrations",
        [migration("00000002"), migration("00000003"), migration("00000004")],
        {
            "00000002.py": append_py(log, "00000002"),
            "00000003.py": append_py(log, "00000003", exit_code=3),
            "00000004.py": append_py(log, "00000004"),
        },
        backup_paths=[app],
    )
    before_app, before_mod = tree_state(app), tree_state(mod)

    result = update(sbx, env={EXAMPLE_VAR: str(app / "example")})

    assert result.returncode == 1, result.stderr
    tx = sbx.journal_json(1)
    assert tx["state"] == "rolled_back"
    row = module_row(tx, "migrations")
    assert row["status"] == "failed"
    assert "migration 00000003 failed: exit status 3" in (row["error"] or "")
    assert "running 00000004" not in (row["output_tail"] or ""), "it went on after a failure"
    assert tree_state(app) == before_app, "the data changed by migrations was not put back"
    assert tree_state(mod) == before_mod, "has_run flags were not put back"
    assert not any(has_run(mod).values())


# ---------------------------------------------------------------- hotfix through hs-tx

MARKER_ABSENT = "absent-marker"

HOTFIX_TARGETS: list[tuple[str, Callable[[Path], dict[str, Any] | None], bool]] = [
    # (id, version_check given the data dir, applies on the first run)
    ("always", lambda d: {"type": "always", "value": True}, True),
    ("never", lambda d: {"type": "always", "value": False}, False),
    ("marker_there", lambda d: {"type": "file_exists", "path": str(d / "marker")}, True),
    ("marker_absent", lambda d: {"type": "file_exists", "path": str(d / MARKER_ABSENT)}, False),
    (
        "inverted",
        lambda d: {"type": "file_exists", "path": str(d / MARKER_ABSENT), "invert": True},
        True,
    ),
    (
        "schema_affected",
        lambda d: {"type": "module_schema", "module": "webapp", "max_version": "1.10.0"},
        True,
    ),
    (
        # 1.10.0 > 1.9.5 by semver (a string compare would say otherwise)
        "schema_fixed",
        lambda d: {"type": "module_schema", "module": "webapp", "max_version": "1.9.5"},
        False,
    ),
    (
        "schema_missing",
        lambda d: {"type": "module_schema", "module": "nosuchmodule", "max_version": "9.9.9"},
        False,
    ),
    (
        "bash_affected",
        lambda d: {"type": "binary_version", "binary": "bash", "max_version": "999.0.0"},
        True,
    ),
    (
        "bash_fixed",
        lambda d: {"type": "binary_version", "binary": "bash", "max_version": "1.0.0"},
        False,
    ),
    (
        # tar reports a two-part version ("1.34")
        "tar_affected",
        lambda d: {
            "type": "binary_version",
            "binary": "tar",
            "version_flag": "--version",
            "max_version": "999.0",
        },
        True,
    ),
    (
        "no_binary",
        lambda d: {
            "type": "binary_version",
            "binary": "hs-tx-no-such-tool",
            "max_version": "1.0.0",
        },
        False,
    ),
    ("no_check", lambda d: None, True),
]


def test_hotfix_applies_what_its_checks_select_once(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    app = sbx.data / "app"
    app.mkdir()
    (app / "marker").write_text("")
    log = app / "log.txt"
    sbx.module("webapp", "def main(args):\n    return {'success': True}\n", version="1.10.0")
    mod = install(
        sbx.modules,
        "hotfix",
        [target(tid, check(app)) for tid, check, _ in HOTFIX_TARGETS],
        {f"{tid}.sh": append_sh(log, tid) for tid, _, _ in HOTFIX_TARGETS},
        backup_paths=[app],
    )
    applied = [tid for tid, _, applies in HOTFIX_TARGETS if applies]

    first = update(sbx)

    assert first.returncode == 0, first.stderr
    assert lines(log) == applied
    assert has_run(mod) == {tid: applies for tid, _, applies in HOTFIX_TARGETS}
    assert module_row(sbx.journal_json(1), "hotfix")["status"] == "success"

    second = update(sbx)

    assert second.returncode == 0, second.stderr
    assert lines(log) == applied, "a hotfix ran twice"

    # a skipped target was not marked: once it applies, it runs
    (app / MARKER_ABSENT).write_text("")
    third = update(sbx)

    assert third.returncode == 0, third.stderr
    assert lines(log) == [*applied, "marker_absent"]
    assert has_run(mod)["marker_absent"] is True


def test_failing_hotfix_rolls_back_the_whole_run(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    app = sbx.data / "app"
    app.mkdir()
    log = app / "log.txt"
    mod = install(
        sbx.modules,
        "hotfix",
        [target("first"), target("broken"), target("later")],
        {
            "first.sh": append_sh(log, "first"),
            "broken.sh": append_sh(log, "broken", exit_code=4),
            "later.sh": append_sh(log, "later"),
        },
        backup_paths=[app],
    )
    before_app, before_mod = tree_state(app), tree_state(mod)

    result = update(sbx)

    assert result.returncode == 1, result.stderr
    tx = sbx.journal_json(1)
    assert tx["state"] == "rolled_back"
    row = module_row(tx, "hotfix")
    assert "hotfix broken failed: exit status 4" in (row["error"] or "")
    assert "appended later" not in (row["output_tail"] or "")
    assert tree_state(app) == before_app
    assert tree_state(mod) == before_mod
    assert not any(has_run(mod).values())


# ---------------------------------------------------------------- direct main() calls


def test_check_and_version_change_nothing(tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    log = tmp_path / "log.txt"
    mig = install(
        modules,
        "migrations",
        [migration("00000002"), migration("00000003")],
        {"00000002.py": append_py(log, "00000002")},  # 00000003 has no script
    )
    hot = install(
        modules,
        "hotfix",
        [target("yes"), target("no", {"type": "always", "value": False})],
        {"yes.sh": append_sh(log, "yes"), "no.sh": append_sh(log, "no")},
    )
    before = tree_state(modules)

    mig_check, _ = call_main(mig, ["--check"])
    hot_check, _ = call_main(hot, ["--check"])
    mig_version, _ = call_main(mig, ["--version"])
    hot_version, _ = call_main(hot, ["--version"])

    assert tree_state(modules) == before
    assert not log.exists()
    assert mig_check == {
        "success": True,
        "pending_migrations": 3,
        "total_migrations": 3,
        "schema_version": "1.0.0",
        "pending": ["00000001", "00000002", "00000003"],
        "missing_scripts": ["00000003"],
    }
    assert hot_check["success"] is True
    assert (hot_check["pending_targets"], hot_check["total_targets"]) == (1, 2)
    assert (hot_check["pending"], hot_check["not_applicable"]) == (["yes"], ["no"])
    assert mig_version == {"success": True, "schema_version": "1.0.0", "module": "migrations"}
    assert hot_version == {"success": True, "schema_version": "1.0.0", "module": "hotfix"}


@pytest.mark.parametrize("name", ["migrations", "hotfix"])
def test_unknown_argument_is_refused(tmp_path: Path, name: str) -> None:
    mod = install(tmp_path, name, [], {})
    before = tree_state(mod)

    result, _ = call_main(mod, ["--chek"])

    assert result["success"] is False
    assert "--chek" in result["error"]
    assert tree_state(mod) == before


def test_missing_migration_script_fails_naming_it(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    mod = install(
        tmp_path,
        "migrations",
        [migration("00000002"), migration("00000003")],
        {"00000003.py": append_py(log, "00000003")},
    )

    result, _ = call_main(mod)

    assert result["success"] is False
    assert result["error"] == "migration 00000002 failed: script src/00000002.py is missing"
    # outside a transaction the example before it stays done; nothing after it ran
    assert has_run(mod) == {"00000001": True, "00000002": False, "00000003": False}
    assert not log.exists()


def test_shell_only_migration_is_refused(tmp_path: Path) -> None:
    mod = install(tmp_path, "migrations", [migration("00000002")], {"00000002.sh": "exit 0\n"})

    result, _ = call_main(mod)

    assert result["success"] is False
    assert "00000002" in result["error"]
    assert "shell migrations are not run" in result["error"]


def test_missing_hotfix_script_fails_naming_it(tmp_path: Path) -> None:
    mod = install(tmp_path, "hotfix", [target("ghost")], {})

    result, _ = call_main(mod)

    assert result["success"] is False
    assert result["error"] == "hotfix ghost failed: script src/ghost.sh is missing"
    assert has_run(mod) == {"ghost": False}


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    """An index edit: set the value at `path` (keys and list positions)."""

    def edit(index: dict[str, Any]) -> None:
        node: Any = index
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


MALFORMED: dict[str, tuple[str, Callable[[dict[str, Any]], None], str]] = {
    # case: (module, edit of the index (its last item is the one under test), error words)
    "mig-not-a-list": ("migrations", _set(["migrations"], "00000002"), "no 'migrations' list"),
    "mig-not-object": ("migrations", _set(["migrations", -1], "00000003"), "must be an object"),
    "mig-no-id": ("migrations", _set(["migrations", -1], {"has_run": False}), "id None"),
    "mig-path-id": ("migrations", _set(["migrations", -1, "id"], "../../evil"), "../../evil"),
    "mig-dup-id": ("migrations", _set(["migrations", -1, "id"], "00000002"), "listed twice"),
    "mig-has-run": ("migrations", _set(["migrations", -1, "has_run"], "no"), "has_run"),
    "mig-timeout": ("migrations", _set(["configuration", "script_timeout"], 0), "script_timeout"),
    "hot-no-targets": ("hotfix", _set(["targets"], None), "no 'targets' list"),
    "hot-check-type": (
        "hotfix",
        _set(["targets", -1, "version_check"], {"type": "moon_phase"}),
        "moon_phase",
    ),
    "hot-check-not-object": ("hotfix", _set(["targets", -1, "version_check"], "always"), "object"),
    "hot-relative-path": (
        "hotfix",
        _set(["targets", -1, "version_check"], {"type": "file_exists", "path": "etc/x"}),
        "absolute path",
    ),
    "hot-bad-max": (
        "hotfix",
        _set(
            ["targets", 1, "version_check"],
            {"type": "module_schema", "module": "webapp", "max_version": "latest"},
        ),
        "max_version",
    ),
    "hot-module-path": (
        "hotfix",
        _set(
            ["targets", 1, "version_check"],
            {"type": "module_schema", "module": "../etc", "max_version": "1.0.0"},
        ),
        "../etc",
    ),
    "hot-no-binary": (
        "hotfix",
        _set(["targets", -1, "version_check"], {"type": "binary_version", "max_version": "1.0"}),
        "binary",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_definition_fails_before_anything_runs(tmp_path: Path, case: str) -> None:
    name, edit, words = MALFORMED[case]
    ran = tmp_path / "ran.txt"
    if name == "migrations":
        items = [migration("00000002"), migration("00000003")]
        scripts = {f"{i}.py": append_py(ran, i) for i in ("00000002", "00000003")}
    else:
        items = [target("good"), target("bad")]
        scripts = {f"{i}.sh": append_sh(ran, i) for i in ("good", "bad")}
    mod = install(tmp_path, name, items, scripts)
    index = read_index(mod)
    edit(index)
    write_index(mod, index)
    before = tree_state(mod)

    result, _ = call_main(mod)

    assert result["success"] is False
    assert words in result["error"], result["error"]
    assert not ran.exists(), "a script ran although the definition is malformed"
    assert tree_state(mod) == before


@pytest.mark.parametrize("name", ["migrations", "hotfix"])
def test_unreadable_index_fails(tmp_path: Path, name: str) -> None:
    mod = install(tmp_path, name, [], {})
    (mod / "index.json").write_text("{not json")

    for args in (None, ["--check"]):
        result, _ = call_main(mod, args)
        assert result["success"] is False
        assert "cannot read" in result["error"]


@pytest.mark.parametrize("indent", [4, "\t", None])
def test_has_run_rewrite_keeps_layout_and_mode(tmp_path: Path, indent: int | str | None) -> None:
    mod = install(tmp_path, "migrations", [], {}, indent=indent)
    os.chmod(mod / "index.json", 0o640)
    expected = read_index(mod)
    expected["migrations"][0]["has_run"] = True

    result, _ = call_main(mod)

    assert result["success"] is True, result
    assert (mod / "index.json").read_text() == json.dumps(expected, indent=indent) + "\n"
    assert stat.S_IMODE(os.stat(mod / "index.json").st_mode) == 0o640
    assert [p.name for p in mod.iterdir() if p.name.startswith(".")] == [], "temp file left"


def test_migration_timeout_kills_script_and_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, time\n"
        "child = subprocess.Popen(['sleep', '120'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(120)\n"
    )
    mod = install(
        tmp_path,
        "migrations",
        [migration("00000002")],
        {"00000002.py": script},
        config={"script_timeout": 1},
    )
    try:
        result, _ = call_main(mod)

        assert result["success"] is False
        assert result["error"] == "migration 00000002 failed: timed out after 1 s"
        assert has_run(mod)["00000002"] is False
        for pid in map(int, pids.read_text().split()):
            assert wait_gone(pid), f"process {pid} started by the migration still runs"
    finally:
        for pid in map(int, pids.read_text().split()) if pids.exists() else []:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


def _fake_binary(directory: Path, name: str, body: str) -> Path:
    """An executable shell script `name` in `directory` running `body`."""
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("bare", [False, True], ids=["hs-tx-worker", "without-hs_txupdate"])
def test_version_checks_without_hs_txupdate_too(tmp_path: Path, bare: bool) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    webapp = modules / "webapp"
    webapp.mkdir()
    write_index(webapp, {"metadata": {"schema_version": "1.10.0"}})
    silent = _fake_binary(tmp_path, "silent", "echo no version here")
    failing = _fake_binary(tmp_path, "failing", "echo 9.9.9; exit 1")
    prerelease = _fake_binary(tmp_path, "pre", "echo tool 2.0.0")

    def schema(maximum: str) -> dict[str, Any]:
        return {"type": "module_schema", "module": "webapp", "max_version": maximum}

    def binary(path: Path, maximum: str) -> dict[str, Any]:
        return {"type": "binary_version", "binary": str(path), "max_version": maximum}

    checks = {
        "semver_affected": (schema("1.10.0"), True),
        "semver_fixed": (schema("1.9.5"), False),
        "prerelease_max": (schema("1.10.0-rc.1"), False),  # a release is above its rc
        "silent_binary": (binary(silent, "1.0.0"), True),  # version unknown: applies
        "failing_binary": (binary(failing, "1.0.0"), True),
        "newer_binary": (binary(prerelease, "2.0.0-rc.2"), False),
    }
    mod = install(modules, "hotfix", [target(t, c) for t, (c, _) in checks.items()], {})

    result, output = call_main(mod, ["--check"], bare=bare)

    assert result["success"] is True, result
    assert result["pending"] == [t for t, (_, applies) in checks.items() if applies]
    assert result["not_applicable"] == [t for t, (_, applies) in checks.items() if not applies]
    assert "hotfix: semver_fixed: module webapp schema_version 1.10.0 > 1.9.5" in output


def test_example_migration_alone_is_a_no_op(tmp_path: Path) -> None:
    mod = install(tmp_path, "migrations", [], {})

    result, output = call_main(mod, bare=True)

    assert result["success"] is True, result
    assert result["migrations_run"] == ["00000001"]
    assert f"{EXAMPLE_VAR} is not set: nothing to do" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["migrations"]


# ---------------------------------------------------------------- what the repo ships


def test_shipped_definitions() -> None:
    migrations = load_module(SHIPPED / "migrations")
    hotfix = load_module(SHIPPED / "hotfix")

    assert (migrations.enabled, migrations.priority, migrations.schema_version) == (
        True,
        2,
        "1.0.0",
    )
    assert (hotfix.enabled, hotfix.priority, hotfix.schema_version) == (True, 1, "1.0.0")
    assert migrations.backup_paths == () and hotfix.backup_paths == ()
    assert migrations.index["migrations"] == [
        {
            "id": "00000001",
            "description": migrations.index["migrations"][0]["description"],
            "has_run": False,
        }
    ]
    assert hotfix.index["targets"] == [], "the shipped hotfix module must change nothing"
    for module in (migrations, hotfix):
        assert not (module.path / "__pycache__").exists()


def test_support_copies_are_identical() -> None:
    """Each module carries its own copy of support.py; they must not drift apart."""
    ours = (SHIPPED / "migrations" / "support.py").read_bytes()
    assert ours == (SHIPPED / "hotfix" / "support.py").read_bytes()
