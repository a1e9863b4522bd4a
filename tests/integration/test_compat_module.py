"""A HOMESERVER-style package module that uses every compat shim entry point, run by the
real `hs-tx update`: its permission changes are real, its StateManager backups join
the transaction (their indexes in state_dir/statemanager, outside the scope), and a
rollback undoes the permission changes while leaving those indexes alone."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.helpers import Sandbox, tree_state

RUN_TIMEOUT = 90  # seconds any single hs-tx run may take before the test fails
WWW_DATA_GID = 33  # Debian's fixed gid for www-data

# Shared by the module (as helper source) and the test: a picture of a tree,
# so the test can tell whether anything under it changed after the module ran.
TREE_DIGEST_SRC = '''
import hashlib, os

def tree_digest(root):
    """Every entry under root: type/mode, owner, size, mtime, content or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [".", *sorted(dirnames + filenames)]:
            full = os.path.normpath(os.path.join(dirpath, name))
            st = os.lstat(full)
            if os.path.islink(full):
                body = "link:" + os.readlink(full)
            elif os.path.isfile(full):
                body = hashlib.sha256(open(full, "rb").read()).hexdigest()
            else:
                body = ""
            out[os.path.relpath(full, root)] = [
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, body
            ]
    return out
'''

MODULE_INDEX = """
import json
import os

from .helper import APP, DIGEST_FILE, EXPLICIT_BACKUP_DIR, SHOULD_FAIL, tree_digest
from updates.index import log_message, compare_schema_versions
from updates.utils.index import log_message as utils_index_log, get_module_version
from updates.utils import log_message as utils_log
from updates.utils.permissions import (
    PermissionManager,
    PermissionTarget,
    get_permissions,
    restore_service_permissions_simple,
)
from updates.utils.moduleUtils import conditional_config_return
from updates.utils.state_manager import StateManager
from updates.utils.module_self_update import ensure_module_self_updated


def main(args):
    # as linker does: a module that could not update itself gives up
    if not ensure_module_self_updated():
        return {"success": False, "error": "Module self-update failed"}
    secret = os.path.join(APP, "secret.txt")
    shared = os.path.join(APP, "shared")
    named = StateManager(EXPLICIT_BACKUP_DIR)
    named_ok = named.backup_module_state("compat", description="pre_update", files=[secret, shared])
    default_ok = StateManager().backup_module_state("compat_default", files=[secret])
    before = get_permissions(secret)
    changed = PermissionManager("compat").set_permissions([
        PermissionTarget(secret, "daemon", "4321", "600"),
        PermissionTarget(shared, "1234", "www-data", "0o750", recursive=True),
    ])
    report = {
        "named_ok": named_ok,
        "default_ok": default_ok,
        "named_root": str(named.backup_root),
        "before": before,
        "after": get_permissions(secret),
        "changed": changed,
        "simple": restore_service_permissions_simple("hs-tx-compat-no-such-service"),
        "version": get_module_version(os.path.dirname(os.path.abspath(__file__))),
        "compare": compare_schema_versions("1.2.0", "1.10.0"),
        "state_dir": os.environ.get("HS_TX_STATE_DIR"),
    }
    result = conditional_config_return({"success": not SHOULD_FAIL}, {"k": "v"})
    report["config_returned"] = "config" in result
    log_message("REPORT=" + json.dumps(report))
    utils_index_log("utils.index logger works")
    utils_log("utils logger works", "WARNING")
    # the statemanager tree as the module leaves it, to compare once hs-tx is done
    statemanager = os.path.join(os.environ["HS_TX_STATE_DIR"], "statemanager")
    with open(DIGEST_FILE, "w") as f:
        json.dump(tree_digest(statemanager), f)
    if SHOULD_FAIL:
        result["error"] = "failing on purpose after changing permissions"
    return result
"""


def tree_digest(root: Path) -> dict[str, Any]:
    """The same picture the module took (TREE_DIGEST_SRC), JSON-normalised."""
    namespace: dict[str, Any] = {}
    exec(TREE_DIGEST_SRC, namespace)
    return json.loads(json.dumps(namespace["tree_digest"](str(root))))


def populate(sbx: Sandbox) -> Path:
    """The module's backup path: a secret file and a shared tree with a symlink out."""
    app = sbx.data / "app"
    (app / "shared" / "sub").mkdir(parents=True)
    (app / "secret.txt").write_text("secret\n")
    (app / "secret.txt").chmod(0o644)
    (app / "shared" / "a.txt").write_text("a\n")
    (app / "shared" / "sub" / "b.txt").write_text("b\n")
    outside = sbx.root / "outside.txt"
    outside.write_text("not the module's\n")
    (app / "shared" / "out-link").symlink_to(outside)
    return app


def write_module(sbx: Sandbox, app: Path, *, fail: bool) -> Path:
    """The package module: __init__ imports main from index, index imports a sibling helper."""
    helper = (
        f"APP = {str(app)!r}\n"
        # a backup dir inside the module's own backup path: only the redirect
        # keeps the backups out of the transaction's scope
        f"EXPLICIT_BACKUP_DIR = {str(app / 'backups')!r}\n"
        f"DIGEST_FILE = {str(sbx.root / 'statemanager.digest.json')!r}\n"
        f"SHOULD_FAIL = {fail!r}\n" + TREE_DIGEST_SRC
    )
    return sbx.module(
        "compat",
        MODULE_INDEX,
        backup_paths=[app],
        files={"__init__.py": "from .index import main\n", "helper.py": helper},
    )


def report_of(tx: dict[str, Any]) -> dict[str, Any]:
    """The module's REPORT line from its journaled output."""
    rows = [m for m in tx["modules"] if m["name"] == "compat"]
    assert len(rows) == 1, tx["modules"]
    tail = rows[0]["output_tail"] or ""
    lines = [line for line in tail.splitlines() if "] REPORT=" in line]
    assert len(lines) == 1, tail
    assert "utils.index logger works" in tail and "[WARNING] utils logger works" in tail
    return json.loads(lines[0].split("] REPORT=", 1)[1])


def owners(top: Path) -> dict[str, tuple[int, int, int]]:
    """uid, gid and permission bits of every entry under `top`, symlinks themselves."""
    out = {}
    for path in [top, *sorted(top.rglob("*"))]:
        st = os.lstat(path)
        out[str(path.relative_to(top))] = (st.st_uid, st.st_gid, st.st_mode & 0o7777)
    return out


def assert_backups_outside_scope(sbx: Sandbox, app: Path, tx: dict[str, Any]) -> None:
    """Both StateManager backups joined the transaction: their indexes sit under
    state_dir/statemanager (outside the scope) and name the transaction; the
    transaction's snapshots hold the content, so there is no private copy."""
    root = sbx.state / "statemanager"
    named_root = root / app.relative_to("/") / "backups"
    named = json.loads((named_root / "module_backups.json").read_text())
    assert list(named) == ["compat"]
    assert named["compat"]["backup_dir"] == f"hs-tx transaction {tx['id']}"
    assert named["compat"]["files"] == [str(app / "secret.txt"), str(app / "shared")]
    default = json.loads((root / "module_backups.json").read_text())
    assert list(default) == ["compat_default"]
    assert not (named_root / "compat_backup").exists(), "no second, private copy"
    assert not (root / "compat_default_backup").exists(), "no second, private copy"
    assert not (app / "backups").exists(), "the named backup dir was used as given"
    backups = [e for e in tx["events"] if e["phase"] == "statemanager" and e["step"] == "backup"]
    assert [e["status"] for e in backups] == ["intent", "done", "intent", "done"]
    for entry in tx["paths"]:
        scope = Path(entry["path"])
        assert scope != root and scope not in root.parents and root not in scope.parents, scope


def test_compat_module_changes_permissions_and_backs_up_outside_scope(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    app = populate(sbx)
    outside_before = tree_state(sbx.root / "outside.txt")
    write_module(sbx, app, fail=False)
    root_index = sbx.root / "root-index.json"
    root_index.write_text(json.dumps({"debug": True}))

    result = sbx.hs_tx("update", env={"HS_TX_ROOT_INDEX": str(root_index)}, timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    tx = sbx.journal_json(1)
    assert tx["state"] == "committed"
    report = report_of(tx)
    assert report["named_ok"] is True and report["default_ok"] is True
    assert report["changed"] is True and report["simple"] is True
    assert report["before"] == {"mode": 0o644, "owner": "root", "group": "root"}
    assert report["after"] == {"mode": 0o600, "owner": "daemon", "group": 4321}
    assert report["version"] == "1.0.0"
    assert report["compare"] == -1
    assert report["config_returned"] is True
    assert report["state_dir"] == str(sbx.state)
    assert report["named_root"] == str(
        sbx.state / "statemanager" / app.relative_to("/") / "backups"
    )
    # the permission changes are real and committed
    st = os.stat(app / "secret.txt")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1, 4321, 0o600)
    for rel, (uid, gid, mode) in owners(app / "shared").items():
        assert (uid, gid) == (1234, WWW_DATA_GID), rel
        assert rel == "out-link" or mode == 0o750, rel
    assert tree_state(sbx.root / "outside.txt") == outside_before, "followed a symlink out"
    assert_backups_outside_scope(sbx, app, tx)
    recorded = json.loads((sbx.root / "statemanager.digest.json").read_text())
    assert tree_digest(sbx.state / "statemanager") == recorded


def test_rollback_restores_permissions_and_leaves_statemanager_alone(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    app = populate(sbx)
    before = tree_state(app)
    write_module(sbx, app, fail=True)

    result = sbx.hs_tx("update", timeout=RUN_TIMEOUT)

    assert result.returncode == 1, result.stderr
    tx = sbx.journal_json(1)
    assert tx["state"] == "rolled_back"
    assert "failing on purpose" in (tx["error"] or "")
    report = report_of(tx)
    assert report["changed"] is True, "the module did change permissions before failing"
    assert report["after"] == {"mode": 0o600, "owner": "daemon", "group": 4321}
    assert report["config_returned"] is False  # no HS_TX_ROOT_INDEX: debug off
    # the rollback put every owner and mode back
    assert tree_state(app) == before
    # and left the module's backups exactly as the module wrote them
    assert_backups_outside_scope(sbx, app, tx)
    recorded = json.loads((sbx.root / "statemanager.digest.json").read_text())
    assert tree_digest(sbx.state / "statemanager") == recorded
