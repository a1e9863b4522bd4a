"""The `updates` compat shim on its own: logging, versions, config, permissions with
real chown/chmod, and StateManager backups restored exactly (files, dirs, owners,
modes, xattrs, SQLite databases, service states through a systemctl on PATH)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hs_txupdate.compat import updates as root_pkg
from hs_txupdate.compat.updates import index as updates_index
from hs_txupdate.compat.updates.utils import index as utils_index
from hs_txupdate.compat.updates.utils import module_self_update, moduleUtils
from hs_txupdate.compat.updates.utils import permissions as perms
from hs_txupdate.compat.updates.utils import state_manager as sm_mod
from hs_txupdate.compat.updates.utils.permissions import PermissionManager, PermissionTarget
from hs_txupdate.compat.updates.utils.state_manager import StateManager
from tests.helpers import REPO, need, tree_state

COMPAT_DIR = REPO / "hs_txupdate" / "compat"
LINE = re.compile(r"^\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\] \[([A-Z]+)\] (.*)$")
WWW_DATA_GID = 33  # Debian's fixed gid for www-data


def need_root() -> None:
    need(os.geteuid() == 0, "needs root for chown")


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HS_TX_STATE_DIR pointing at a fresh dir, as hs-tx sets it for every worker."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("HS_TX_STATE_DIR", str(state))
    return state


def owner_of(path: Path) -> tuple[int, int, int]:
    """(uid, gid, permission bits) of `path` itself."""
    st = os.lstat(path)
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


# ---------------------------------------------------------------- log_message


@pytest.mark.parametrize(
    ("level", "shown", "stream"),
    [
        ("INFO", "INFO", "out"),
        ("warning", "WARNING", "out"),
        ("DEBUG", "DEBUG", "out"),
        ("ERROR", "ERROR", "err"),
        ("nonsense", "INFO", "out"),
    ],
)
def test_log_message_format(
    capsys: pytest.CaptureFixture[str], level: str, shown: str, stream: str
) -> None:
    for log in (root_pkg.log_message, updates_index.log_message, utils_index.log_message):
        log("hello world", level)
    captured = capsys.readouterr()
    lines = (captured.out if stream == "out" else captured.err).splitlines()
    assert len(lines) == 3, captured
    for line in lines:
        match = LINE.match(line)
        assert match, line
        assert match.groups() == (shown, "hello world")
    assert (captured.err if stream == "out" else captured.out) == ""


def test_log_message_default_level_is_info(capsys: pytest.CaptureFixture[str]) -> None:
    utils_index.log_message("plain")
    match = LINE.match(capsys.readouterr().out.strip())
    assert match and match.groups() == ("INFO", "plain")


# ---------------------------------------------------------------- versions and indexes


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ("1.0.0", "1.0.0", 0),
        ("1.0.1", "1.0.0", 1),
        ("0.9.9", "1.0.0", -1),
        ("1.10.0", "1.9.0", 1),
        ("0.1.40", "0.1.4", 1),
        ("1.0.0-rc.1", "1.0.0", -1),  # semver: a pre-release sorts before its release
        ("1.0.0-rc.2", "1.0.0-rc.10", -1),
        ("v2.0.0", "1.0.0", 1),
        ("1.0.0+build.7", "1.0.0", 0),
        ("1.2", "1.2.0", 0),  # not semver: dotted integers padded with zeros
        ("1.2.1", "1.2", 1),
        ("2", "10", -1),
        ("1.x", "0.0.0", 0),  # a non-integer part counts as 0.0.0
        ("1.x", "0.0.1", -1),
    ],
)
def test_compare_schema_versions(left: str, right: str, expected: int) -> None:
    for compare in (root_pkg.compare_schema_versions, updates_index.compare_schema_versions):
        assert compare(left, right) == expected
        assert compare(right, left) == -expected


def test_compare_schema_versions_sorts_a_release_list() -> None:
    import functools

    shuffled = ["1.10.0", "0.1.0", "1.0.0", "1.0.0-alpha", "1.9.3", "1.0.0-alpha.1", "0.1.12"]
    ordered = sorted(shuffled, key=functools.cmp_to_key(root_pkg.compare_schema_versions))
    assert ordered == [
        "0.1.0",
        "0.1.12",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0",
        "1.9.3",
        "1.10.0",
    ]


def write_index(module_dir: Path, data: object) -> None:
    module_dir.mkdir(parents=True, exist_ok=True)
    (module_dir / "index.json").write_text(json.dumps(data))


def test_get_module_version_and_load_module_index(tmp_path: Path) -> None:
    good = tmp_path / "good"
    write_index(good, {"metadata": {"schema_version": "1.2.3", "branch": "dev"}})
    no_version = tmp_path / "noversion"
    write_index(no_version, {"metadata": {}})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text("{not json")

    assert utils_index.get_module_version(good) == "1.2.3"
    assert utils_index.get_module_version(str(good)) == "1.2.3"
    assert utils_index.get_module_version(no_version) == "unknown"
    assert utils_index.get_module_version(broken) == "unknown"
    assert utils_index.get_module_version(tmp_path / "missing") == "unknown"

    loaded = root_pkg.load_module_index(str(good))
    assert loaded == {"metadata": {"schema_version": "1.2.3", "branch": "dev"}}
    assert root_pkg.load_module_index(str(broken)) is None
    assert root_pkg.load_module_index(str(tmp_path / "missing")) is None
    assert root_pkg.get_branch_from_index(loaded) == "dev"
    assert root_pkg.get_branch_from_index({"metadata": {}}) == "master"
    assert root_pkg.get_branch_from_index({}) == "master"


def test_debug_log_only_when_debug(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert root_pkg.DEBUG is False
    root_pkg.debug_log("quiet")
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(root_pkg, "DEBUG", True)
    root_pkg.debug_log("loud")
    match = LINE.match(capsys.readouterr().out.strip())
    assert match and match.groups() == ("DEBUG", "loud")


# ---------------------------------------------------------------- moduleUtils, self-update


def test_conditional_config_return(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"directories": {"data": "/var/lib/x"}}
    monkeypatch.delenv("HS_TX_ROOT_INDEX", raising=False)
    assert moduleUtils.load_root_config() == {"debug": False}
    assert moduleUtils.conditional_config_return({"success": True}, config) == {"success": True}
    assert moduleUtils.get_module_debug_mode() is False

    root_index = tmp_path / "index.json"
    root_index.write_text(json.dumps({"debug": True, "verbose": False}))
    monkeypatch.setenv("HS_TX_ROOT_INDEX", str(root_index))
    result = {"success": True}
    returned = moduleUtils.conditional_config_return(result, config)
    assert returned is result
    assert returned == {"success": True, "config": config}
    assert moduleUtils.get_module_debug_mode() is True
    assert "config" not in moduleUtils.conditional_config_return({}, config, debug_key="verbose")

    root_index.write_text(json.dumps({"debug": False}))
    assert "config" not in moduleUtils.conditional_config_return({}, config)
    root_index.write_text("[1, 2]")
    assert moduleUtils.load_root_config() == {"debug": False}
    monkeypatch.setenv("HS_TX_ROOT_INDEX", str(tmp_path / "missing.json"))
    assert moduleUtils.load_root_config() == {"debug": False}


def test_module_self_update_reports_up_to_date(tmp_path: Path) -> None:
    before = tree_state(tmp_path)
    assert module_self_update.ensure_module_self_updated() is True
    assert module_self_update.ensure_module_self_updated(tmp_path) is True
    assert (
        module_self_update.check_and_update_module is module_self_update.ensure_module_self_updated
    )
    assert issubclass(module_self_update.ModuleSelfUpdateError, Exception)
    assert tree_state(tmp_path) == before


# ---------------------------------------------------------------- the shim as modules see it


IMPORTS = """
import json, sys
from updates import (DEBUG, compare_schema_versions, debug_log, get_branch_from_index,
                     load_module_index, log_message)
from updates.index import log_message, compare_schema_versions
from updates.utils.index import log_message, get_module_version
from updates.utils import *
from updates.utils import (log_message, get_module_version, StateManager, PermissionManager,
    PermissionTarget, create_service_permission_targets, restore_service_permissions_simple,
    fix_common_service_permissions)
from updates.utils.permissions import (PermissionManager, PermissionTarget, get_permissions,
    restore_service_permissions_simple, create_service_permission_targets,
    fix_common_service_permissions)
from updates.utils.moduleUtils import (conditional_config_return, load_root_config,
    get_module_debug_mode)
from updates.utils.state_manager import (StateManager, FilePermissionInfo, ModuleBackupInfo,
    create_state_manager, backup_module_simple, restore_module_simple)
from updates.utils.module_self_update import (ensure_module_self_updated,
    check_and_update_module, ModuleSelfUpdateError)
assert compare_schema_versions("1.0.0", "0.9.0") == 1
loaded = sorted(
    name for name in sys.modules
    for root in ("sqlalchemy", "pyroute2", "hs_txupdate")
    if name == root or name.startswith(root + ".")
)
print(json.dumps(loaded))
"""


def test_every_entry_point_imports_as_modules_do_and_stays_lean(tmp_path: Path) -> None:
    # as a worker does: the compat dir on sys.path, the `updates` package found there
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(COMPAT_DIR)!r})\n{IMPORTS}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HS_TX_STATE_DIR": str(tmp_path / "state")},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    # nothing heavy, and of hs-tx only the base layer and version parsing
    assert loaded == [
        "hs_txupdate",
        "hs_txupdate.base",
        "hs_txupdate.base.channel",
        "hs_txupdate.base.fsio",
        "hs_txupdate.sync",
        "hs_txupdate.sync.versions",
    ]


# ---------------------------------------------------------------- permissions


def test_permission_target_parses_string_modes_as_octal() -> None:
    assert PermissionTarget("/x", "root", "root", "755").mode == 0o755
    assert PermissionTarget("/x", "root", "root", "0o750").mode == 0o750
    assert PermissionTarget("/x", "root", "root", "0640").mode == 0o640
    assert PermissionTarget("/x", "root", "root", 0o600).mode == 0o600
    target = PermissionTarget("/x", "root", "root", "700", "file", True)
    assert (target.target_type, target.recursive) == ("file", True)
    with pytest.raises(ValueError):
        PermissionTarget("/x", "root", "root", "rwx")


def test_set_permissions_by_name_and_number_and_get_permissions(tmp_path: Path) -> None:
    need_root()
    by_name = tmp_path / "by-name"
    by_name.write_text("a")
    by_name.chmod(0o644)
    by_number = tmp_path / "by-number"
    by_number.write_text("b")

    ok = PermissionManager("t").set_permissions(
        [
            PermissionTarget(str(by_name), "daemon", "www-data", "600"),
            PermissionTarget(str(by_number), "4321", "4322", 0o4751),
        ]
    )

    assert ok is True
    assert owner_of(by_name) == (1, WWW_DATA_GID, 0o600)
    assert owner_of(by_number) == (4321, 4322, 0o4751)  # set-uid survives: chmod after chown
    assert perms.get_permissions(str(by_name)) == {
        "mode": 0o600,
        "owner": "daemon",
        "group": "www-data",
    }
    assert perms.get_permissions(str(by_number)) == {"mode": 0o751, "owner": 4321, "group": 4322}
    assert perms.get_permissions(str(tmp_path / "missing")) == {}


def make_tree(top: Path, outside: Path) -> None:
    """A small tree with nested dirs, files, and a symlink pointing out of it."""
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "f1").write_text("1")
    (top / "a" / "b" / "f2").write_text("2")
    (top / "f0").write_text("0")
    (top / "out-link").symlink_to(outside)
    (top / "a" / "dir-link").symlink_to(outside.parent)


def test_recursive_set_permissions_covers_the_tree_and_never_follows_symlinks(
    tmp_path: Path,
) -> None:
    need_root()
    outside = tmp_path / "outside" / "target.txt"
    outside.parent.mkdir()
    outside.write_text("do not touch")
    outside.chmod(0o644)
    outside_before = tree_state(outside.parent)
    top = tmp_path / "tree"
    make_tree(top, outside)

    ok = PermissionManager("t").set_permissions(
        [PermissionTarget(str(top), "1234", "www-data", "0o750", recursive=True)]
    )

    assert ok is True
    entries = [top, *top.rglob("*")]
    assert len(entries) == 8
    for entry in entries:
        uid, gid, mode = owner_of(entry)
        assert (uid, gid) == (1234, WWW_DATA_GID), entry
        if not entry.is_symlink():
            assert mode == 0o750, entry  # the same mode on files and dirs, as chmod -R
    assert tree_state(outside.parent) == outside_before


def test_non_recursive_target_on_a_dir_leaves_its_contents(tmp_path: Path) -> None:
    need_root()
    top = tmp_path / "tree"
    (top / "sub").mkdir(parents=True)
    (top / "sub" / "f").write_text("x")
    inner_before = tree_state(top / "sub")

    assert PermissionManager().set_permissions([PermissionTarget(str(top), "1234", "1234", 0o700)])

    assert owner_of(top) == (1234, 1234, 0o700)
    assert tree_state(top / "sub") == inner_before


def test_set_permissions_return_values_and_failure_logging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need_root()
    good = tmp_path / "good"
    good.write_text("x")
    bad = tmp_path / "bad"
    bad.write_text("y")
    bad_before = tree_state(bad)
    manager = PermissionManager("t")

    assert manager.set_permissions([]) is True
    assert manager.set_permissions(
        [PermissionTarget(str(tmp_path / "nope"), "root", "root", 0o700)]
    )
    assert (
        manager.set_permissions([PermissionTarget(str(bad), "no-such-user-xyz", "root", 0o700)])
        is False
    )
    capsys.readouterr()
    partial = manager.set_permissions(
        [
            PermissionTarget(str(good), "1234", "1234", 0o600),
            PermissionTarget(str(bad), "root", "no-such-group-xyz", 0o700),
        ]
    )

    assert partial is True  # the original's "partial success is still useful"
    assert owner_of(good) == (1234, 1234, 0o600)
    assert tree_state(bad) == bad_before
    err = capsys.readouterr().err
    assert "[ERROR]" in err and "no-such-group-xyz" in err and str(bad) in err


def test_service_permission_helpers(tmp_path: Path) -> None:
    need_root()
    binary = tmp_path / "svc-binary"
    binary.write_text("#!/bin/sh\n")
    os.chown(binary, 1234, 1234)
    binary.chmod(0o600)
    config_dir = tmp_path / "conf"
    config_dir.mkdir()

    targets = perms.create_service_permission_targets(
        "svc", config_dir=str(config_dir), binary_path=str(binary), database_file="/x.db"
    )
    assert [(t.path, t.owner, t.group, t.mode, t.recursive) for t in targets] == [
        (str(binary), "root", "root", 0o755, False),
        (str(config_dir), "svc", "svc", 0o755, False),
        ("/x.db", "svc", "svc", 0o640, False),
    ]
    assert perms.create_service_permission_targets("svc") == []
    assert perms.restore_service_permissions_simple("svc") is True
    assert perms.restore_service_permissions_simple("svc", binary_path=str(binary)) is True
    assert owner_of(binary) == (0, 0, 0o755)
    assert perms.fix_common_service_permissions(f"hs-tx-none-{uuid.uuid4().hex}") is True

    os.chown(config_dir, 0, 0)
    ok = PermissionManager("daemon").restore_service_permissions(
        "daemon", config_dirs=[str(config_dir)], binaries=[str(binary)]
    )
    assert ok is True
    assert owner_of(config_dir) == (1, 1, 0o755)


# ---------------------------------------------------------------- StateManager: where


def test_backup_dirs_are_redirected_under_the_state_dir(state_dir: Path) -> None:
    root = state_dir / "statemanager"
    explicit = Path(f"/var/backups/hs-tx-test-{uuid.uuid4().hex}")

    default = StateManager()
    named = StateManager(str(explicit))

    assert default.backup_root == root
    assert named.backup_root == root / explicit.relative_to("/")
    assert not explicit.exists(), "the module's own backup dir must never be created"
    created = [root / rel for rel in named.backup_root.relative_to(root).parents]
    for path in [*created, named.backup_root]:
        assert os.stat(path).st_mode & 0o777 == 0o700, path
    # a dir already under the root (e.g. read back from get_backup_info) is kept
    assert StateManager(str(named.backup_root)).backup_root == named.backup_root
    assert sm_mod.resolve_backup_dir("/var/backups/../backups/x") == root / "var/backups/x"


def test_state_dir_fallback_without_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HS_TX_STATE_DIR", raising=False)
    assert sm_mod.statemanager_root() == Path("/var/lib/hs-tx/statemanager")
    assert sm_mod.resolve_backup_dir("/var/backups/hotfix") == Path(
        "/var/lib/hs-tx/statemanager/var/backups/hotfix"
    )


# ---------------------------------------------------------------- StateManager: round trip


def make_service_data(base: Path) -> tuple[Path, Path, Path]:
    """A config file, a data dir and a not-yet-existing path, with varied metadata."""
    conf = base / "app.conf"
    conf.write_text("setting = 1\n")
    os.chown(conf, 1, 4321)
    conf.chmod(0o640)
    os.setxattr(conf, "user.origin", b"hs-tx-test")
    data = base / "data"
    (data / "nested").mkdir(parents=True)
    (data / "nested" / "deep.txt").write_text("deep\n")
    (data / "top.bin").write_bytes(bytes(range(256)))
    (data / "link").symlink_to("nested/deep.txt")
    for entry in (data, *data.rglob("*")):
        os.chown(entry, 1234, WWW_DATA_GID, follow_symlinks=False)
    (data / "nested").chmod(0o700)
    (data / "top.bin").chmod(0o4755)
    return conf, data, base / "created-later.txt"


def damage(conf: Path, data: Path, later: Path) -> None:
    """Everything a failed module update might do to those paths."""
    conf.write_text("setting = broken\n")
    os.chown(conf, 0, 0)
    conf.chmod(0o666)
    os.removexattr(conf, "user.origin")
    (data / "nested" / "deep.txt").unlink()
    (data / "stray.txt").write_text("new\n")
    os.chown(data / "top.bin", 0, 0)
    (data / "nested").chmod(0o755)
    later.write_text("made by the update\n")


def test_backup_and_restore_round_trip(state_dir: Path, tmp_path: Path) -> None:
    need_root()
    base = tmp_path / "live"
    base.mkdir()
    conf, data, later = make_service_data(base)
    before = {p: tree_state(p) for p in (conf, data)}
    manager = StateManager("/var/backups/updates")

    assert manager.backup_module_state(
        "svc", description="pre_update", files=[str(conf), str(data), str(later)]
    )

    slot = state_dir / "statemanager/var/backups/updates/svc_backup"
    assert tree_state(slot / "files" / conf.relative_to("/")) == before[conf]
    assert tree_state(slot / "files" / data.relative_to("/")) == before[data]
    index = json.loads((manager.backup_root / "module_backups.json").read_text())
    assert list(index) == ["svc"]
    info = manager.get_backup_info("svc")
    assert info is not None
    assert (info.module_name, info.description, info.backup_dir) == ("svc", "pre_update", str(slot))
    assert info.files == [str(conf), str(data), str(later)]
    assert info.absent_files == [str(later)]
    assert len(info.checksum) == 64
    recorded = {p["path"]: (p["uid"], p["gid"]) for p in info.file_permissions}
    assert recorded[str(conf)] == (1, 4321) and recorded[str(data / "top.bin")] == (1234, 33)
    assert [p.name for p in manager.backup_root.iterdir() if p.name.startswith(".")] == [
        ".module_backups.lock"
    ], "no temp files may be left behind"

    damage(conf, data, later)
    assert manager.restore_module_state("svc") is True

    assert tree_state(conf) == before[conf]
    assert tree_state(data) == before[data]
    assert not later.exists(), "a path absent at backup time must be absent again"
    assert sorted(p.name for p in base.iterdir()) == ["app.conf", "data"]


def test_backup_clobbers_the_previous_slot_and_queries(state_dir: Path, tmp_path: Path) -> None:
    first = tmp_path / "first.txt"
    first.write_text("1")
    second = tmp_path / "second.txt"
    second.write_text("2")
    manager = StateManager()

    assert manager.has_backup("mod") is False
    assert manager.get_backup_info("mod") is None
    assert manager.backup_module_state("mod", files=[str(first)])
    assert manager.backup_module_state("other", files=[str(second)])
    assert manager.backup_module_state("mod", files=[str(second)])

    slot_files = state_dir / "statemanager/mod_backup/files"
    assert [p.name for p in slot_files.rglob("*.txt")] == ["second.txt"]
    assert manager.has_backup("mod") and manager.has_backup("other")
    assert sorted(manager.list_module_backups()) == ["mod", "other"]
    assert isinstance(manager.list_module_backups()["mod"], sm_mod.ModuleBackupInfo)
    # another StateManager on the same dir sees the same, durable index
    assert sorted(StateManager(None).list_module_backups()) == ["mod", "other"]

    assert manager.remove_module_backup("mod") is True
    assert manager.remove_module_backup("mod") is False
    assert not (state_dir / "statemanager/mod_backup").exists()
    assert sorted(manager.list_module_backups()) == ["other"]


def test_backup_and_restore_refusals(state_dir: Path, tmp_path: Path) -> None:
    manager = StateManager()
    assert manager.backup_module_state("empty") is False
    assert manager.backup_module_state("empty", files=[], services=[], databases=[]) is False
    assert manager.restore_module_state("never-backed-up") is False
    assert manager.backup_module_state("../escape", files=[str(tmp_path)]) is False
    assert not (state_dir / "escape_backup").exists()
    assert manager.list_module_backups() == {}


def test_a_path_holding_the_backups_is_not_copied_into_itself(state_dir: Path) -> None:
    (state_dir / "journal.txt").write_text("hs-tx's own state\n")
    manager = StateManager()
    assert manager.backup_module_state("greedy", files=[str(state_dir.parent)]) is True
    slot = state_dir / "statemanager" / "greedy_backup"
    assert not (slot / "files").exists() or not any((slot / "files").rglob("*.txt"))
    assert manager.restore_module_state("greedy") is False, "nothing was backed up to restore"
    assert (state_dir / "journal.txt").read_text() == "hs-tx's own state\n"


def test_helpers_use_the_default_manager(state_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "value.txt"
    target.write_text("before")
    assert sm_mod.create_state_manager().backup_root == state_dir / "statemanager"
    assert sm_mod.backup_module_simple("simple", files=[str(target)]) is True
    target.write_text("after")
    assert sm_mod.restore_module_simple("simple") is True
    assert target.read_text() == "before"


def test_sqlite_database_round_trip(state_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO kv VALUES ('version', 'old')")
    conn.close()
    manager = StateManager("/var/backups/hotfix")

    assert manager.backup_module_state("db", databases=[{"type": "sqlite", "database": str(db)}])
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE kv SET v = 'new'")
        conn.execute("INSERT INTO kv VALUES ('extra', 'row')")
    conn.close()
    assert manager.restore_module_state("db") is True

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT k, v FROM kv ORDER BY k").fetchall()
    conn.close()
    assert rows == [("version", "old")]


def test_unsupported_database_is_skipped_and_its_restore_fails(state_dir: Path) -> None:
    manager = StateManager()
    pg = {"type": "postgresql", "database": "gogs"}
    assert manager.backup_module_state("pg", databases=[pg]) is True
    assert manager.restore_module_state("pg") is False


# ---------------------------------------------------------------- StateManager: services


FAKE_SYSTEMCTL = """\
#!/bin/sh
# a systemctl stand-in: unit state in files under $STATE, every call logged
echo "$*" >> "$STATE/calls"
case "$1" in
  is-active) if [ -e "$STATE/active-$2" ]; then echo active; else echo inactive; exit 3; fi ;;
  is-enabled) if [ -e "$STATE/enabled-$2" ]; then echo enabled; else echo disabled; exit 1; fi ;;
  start) [ -e "$STATE/broken-$2" ] && exit 1; touch "$STATE/active-$2" ;;
  stop) rm -f "$STATE/active-$2" ;;
  enable) touch "$STATE/enabled-$2" ;;
  disable) rm -f "$STATE/enabled-$2" ;;
esac
"""


@pytest.fixture
def systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable `systemctl` first on PATH; returns its state dir (no systemd here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(FAKE_SYSTEMCTL)
    script.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    monkeypatch.setenv("STATE", str(units))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return units


def calls(units: Path) -> list[str]:
    path = units / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_services_are_put_back_to_their_recorded_state(state_dir: Path, systemctl: Path) -> None:
    (systemctl / "active-web").touch()
    (systemctl / "enabled-web").touch()
    (systemctl / "enabled-idle").touch()
    manager = StateManager()

    assert manager.backup_module_state("svc", services=["web", "idle"])
    states = json.loads((state_dir / "statemanager/svc_backup/services.json").read_text())
    assert states["web"]["active"] is True and states["web"]["enabled"] is True
    assert states["idle"]["active"] is False and states["idle"]["enabled"] is True

    # the update stops web, disables it, and starts idle
    for name in ("active-web", "enabled-web"):
        (systemctl / name).unlink()
    (systemctl / "active-idle").touch()
    (systemctl / "calls").unlink()
    assert manager.restore_module_state("svc") is True

    assert sorted(p.name for p in systemctl.iterdir() if p.name != "calls") == [
        "active-web",
        "enabled-idle",
        "enabled-web",
    ]
    made = calls(systemctl)
    assert made[:2] == ["stop web", "stop idle"], "services are stopped before files come back"
    assert made[2:] == ["enable web", "start web", "enable idle", "stop idle"]


def test_failed_service_start_fails_the_restore(
    state_dir: Path, systemctl: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (systemctl / "active-web").touch()
    manager = StateManager()
    assert manager.backup_module_state("svc", services=["web"])
    (systemctl / "broken-web").touch()

    assert manager.restore_module_state("svc") is False
    assert "systemctl start web failed" in capsys.readouterr().err


def test_forced_service_start_starts_inactive_services(state_dir: Path, systemctl: Path) -> None:
    manager = StateManager()
    assert manager.backup_module_state("svc", services=["idle"])
    assert manager.restore_module_state("svc") is True
    assert not (systemctl / "active-idle").exists(), "recorded inactive: stays stopped"

    assert manager.restore_module_state_with_forced_service_start("svc") is True
    assert (systemctl / "active-idle").exists()


def test_unreachable_systemctl_counts_as_inactive(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    manager = StateManager()

    assert manager.backup_module_state("svc", services=["web"]) is True
    states = json.loads((state_dir / "statemanager/svc_backup/services.json").read_text())
    assert states["web"] == {"active": False, "enabled": False, "enabled_state": "unknown"}
    assert manager.restore_module_state("svc") is False, "stopping/disabling cannot be done"


def test_shim_source_uses_no_shell() -> None:
    for path in (COMPAT_DIR / "updates").rglob("*.py"):
        text = path.read_text()
        assert "shell=True" not in text, path
        assert "os.system" not in text, path
