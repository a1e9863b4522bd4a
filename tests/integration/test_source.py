"""Phase 1 from a real git source: a local bare repository as the remote."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import GitSource, Sandbox, module_files, tree_state

OK = """
def main(args):
    print("running", __name__)
    return {"success": True}
"""

BROKEN = """
import pathlib
def main(args):
    pathlib.Path({target!r}).write_text("written by the broken version")
    return {{"success": False, "error": "broken on purpose"}}
"""


def installed_index(sbx: Sandbox, name: str) -> dict:
    return json.loads((sbx.modules / name / "index.json").read_text())


def version_of(sbx: Sandbox, name: str) -> str:
    return installed_index(sbx, name)["metadata"]["schema_version"]


def test_first_install_runs_the_new_modules(src: tuple[Sandbox, GitSource]) -> None:
    sbx, source = src
    commit = source.publish({"alpha": module_files("alpha", OK), "beta": module_files("beta", OK)})

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert version_of(sbx, "alpha") == "1.0.0" and version_of(sbx, "beta") == "1.0.0"
    assert "running modules.alpha.index" in result.stderr
    tx = sbx.journal_json(1)
    assert tx["state"] == "committed"
    assert tx["source_after"] == commit and tx["source_before"] is None
    installs = [e for e in tx["events"] if e["phase"] == "schema" and e["status"] == "done"]
    assert [(e["detail"]["module"], e["detail"]["from"], e["detail"]["to"]) for e in installs] == [
        ("alpha", None, "1.0.0"),
        ("beta", None, "1.0.0"),
    ]
    assert not (sbx.state / "source" / "modules").exists(), "the clone has no work tree"


def test_only_the_bumped_module_is_replaced(src: tuple[Sandbox, GitSource]) -> None:
    sbx, source = src
    source.publish({n: module_files(n, OK, version="1.9.0") for n in ("a", "b", "c")})
    assert sbx.hs_tx("update").returncode == 0
    b_before = tree_state(sbx.modules / "b")
    first = source.git("rev-parse", "HEAD")
    second = source.publish({"a": module_files("a", OK + "# v1.10\n", version="1.10.0")})

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert version_of(sbx, "a") == "1.10.0"
    assert "# v1.10" in (sbx.modules / "a" / "index.py").read_text()
    assert tree_state(sbx.modules / "b") == b_before
    tx = sbx.journal_json(2)
    assert (tx["source_before"], tx["source_after"]) == (first, second)
    rows = {m["name"]: m for m in tx["modules"]}
    assert (rows["a"]["version_from"], rows["a"]["version_to"]) == ("1.9.0", "1.10.0")
    assert (rows["b"]["version_from"], rows["b"]["version_to"]) == ("1.9.0", "1.9.0")


@pytest.mark.parametrize(
    ("installed", "incoming", "replaced"),
    [
        ("1.1.0-rc.1", "1.1.0", True),
        ("1.1.0", "1.1.0-rc.2", False),
        ("v1.2.0", "1.2.1", True),
        ("2.0.0", "1.9.9", False),
    ],
)
def test_versions_compare_semantically(
    src: tuple[Sandbox, GitSource], installed: str, incoming: str, replaced: bool
) -> None:
    sbx, source = src
    sbx.module("m", OK, version=installed)
    source.publish({"m": module_files("m", OK, version=incoming)})

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert version_of(sbx, "m") == (incoming if replaced else installed)
    if not replaced:
        assert "not applied (use --allow-downgrade)" in result.stderr


def test_downgrade_only_with_allow_downgrade(src: tuple[Sandbox, GitSource]) -> None:
    sbx, source = src
    sbx.module("m", OK, version="2.0.0")
    source.publish({"m": module_files("m", OK, version="1.0.0")})
    assert sbx.hs_tx("update").returncode == 0
    assert version_of(sbx, "m") == "2.0.0"

    result = sbx.hs_tx("update", "--allow-downgrade")

    assert result.returncode == 0, result.stderr
    assert version_of(sbx, "m") == "1.0.0"


def test_garbage_version_is_reported_and_the_rest_goes_on(src: tuple[Sandbox, GitSource]) -> None:
    sbx, source = src
    sbx.module("bad", OK, version="1.0.0")
    source.publish(
        {
            "bad": module_files("bad", OK, version="one.two"),
            "good": module_files("good", OK, version="1.0.0"),
        }
    )

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert "source module bad: schema_version 'one.two' is not a semantic version" in result.stderr
    assert version_of(sbx, "bad") == "1.0.0"
    assert version_of(sbx, "good") == "1.0.0"


def test_local_state_survives_a_schema_update(src: tuple[Sandbox, GitSource]) -> None:
    """enabled, repo, config.repository, component flags and has_run flags (by id) all stay."""
    sbx, source = src

    def files(version: str, body: str = OK) -> dict[str, str]:
        return module_files(
            "custom",
            body,
            version=version,
            meta={"enabled": True},
            extra={
                "repo": {"url": "https://example.org/upstream.git", "branch": "main"},
                "config": {
                    "repository": {"url": "https://example.org/r.git", "branch": "main"},
                    "components": {"web": {"enabled": True}, "cli": {"enabled": True}},
                    "target_paths": {"components": {"lib": {"enabled": True}}},
                },
                "tasks": [{"id": "t1", "has_run": False}, {"id": "t2", "has_run": False}],
                "nested": {"steps": [{"id": "s1", "has_run": False}]},
            },
        )

    source.publish({"custom": files("1.0.0")})
    assert sbx.hs_tx("update").returncode == 0
    index = installed_index(sbx, "custom")
    index["repo"]["branch"] = "local-branch"
    index["config"]["repository"]["branch"] = "local"
    index["config"]["components"]["web"]["enabled"] = False
    index["config"]["target_paths"]["components"]["lib"]["enabled"] = False
    index["tasks"][0]["has_run"] = True
    index["nested"]["steps"][0]["has_run"] = True
    index["metadata"]["enabled"] = False
    (sbx.modules / "custom" / "index.json").write_text(json.dumps(index))
    source.publish({"custom": files("1.1.0", OK + "# new code\n")})

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    new = installed_index(sbx, "custom")
    assert new["metadata"]["schema_version"] == "1.1.0"
    assert "# new code" in (sbx.modules / "custom" / "index.py").read_text()
    assert new["metadata"]["enabled"] is False
    assert new["repo"]["branch"] == "local-branch"
    assert new["config"]["repository"]["branch"] == "local"
    assert new["config"]["components"] == {"web": {"enabled": False}, "cli": {"enabled": True}}
    assert new["config"]["target_paths"]["components"]["lib"]["enabled"] is False
    assert new["tasks"] == [{"id": "t1", "has_run": True}, {"id": "t2", "has_run": False}]
    assert new["nested"]["steps"] == [{"id": "s1", "has_run": True}]
    assert "running modules.custom" not in result.stderr, "a disabled module does not run"


def test_module_gone_from_the_source_stays(src: tuple[Sandbox, GitSource]) -> None:
    sbx, source = src
    source.publish({"keep": module_files("keep", OK), "drop": module_files("drop", OK)})
    assert sbx.hs_tx("update").returncode == 0
    source.publish({"drop": None})

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert (sbx.modules / "drop" / "index.json").exists()
    assert "module drop is installed but gone from the source; it stays" in result.stderr


def test_broken_new_version_rolls_back_to_the_old_code(src: tuple[Sandbox, GitSource]) -> None:
    sbx, source = src
    target = sbx.data / "app.conf"
    target.write_text("v1 config")
    source.publish({"app": module_files("app", OK, backup_paths=[sbx.data])})
    assert sbx.hs_tx("update").returncode == 0
    before = {"module": tree_state(sbx.modules / "app"), "data": tree_state(sbx.data)}
    source.publish(
        {
            "app": module_files(
                "app", BROKEN.format(target=str(target)), version="2.0.0", backup_paths=[sbx.data]
            )
        }
    )

    result = sbx.hs_tx("update")

    assert result.returncode == 1, result.stderr
    assert "broken on purpose" in result.stderr
    assert {"module": tree_state(sbx.modules / "app"), "data": tree_state(sbx.data)} == before
    assert version_of(sbx, "app") == "1.0.0"
    assert not list(sbx.modules.glob(".hs-tx-*"))
    # the next run tries the new version again: the source commit was not applied
    assert sbx.journal_json(2)["state"] == "rolled_back"


def test_new_backup_paths_of_an_incoming_version_are_snapshotted(
    src: tuple[Sandbox, GitSource],
) -> None:
    sbx, source = src
    newdir = sbx.data / "created-by-v2"
    source.publish({"app": module_files("app", OK)})
    assert sbx.hs_tx("update").returncode == 0
    body = f"""
        import os
        def main(args):
            os.makedirs({str(newdir)!r})
            return {{"success": False, "error": "fails after creating its new path"}}
        """
    source.publish({"app": module_files("app", body, version="1.1.0", backup_paths=[newdir])})

    result = sbx.hs_tx("update")

    assert result.returncode == 1, result.stderr
    assert not newdir.exists()
    paths = {p["path"]: p for p in sbx.journal_json(2)["paths"]}
    assert paths[str(newdir)]["existed"] is False


def test_unreachable_source_aborts_with_nothing_changed(src: tuple[Sandbox, GitSource]) -> None:
    sbx, _source = src
    sbx.module("local", OK)
    sbx.source_url = f"file://{sbx.root}/no-such-repo.git"
    sbx.write_config()
    before = tree_state(sbx.modules)

    result = sbx.hs_tx("update")

    assert result.returncode == 1, result.stderr
    assert "cannot fetch branch 'master'" in result.stderr
    assert tree_state(sbx.modules) == before
    tx = sbx.journal_json(1)
    assert tx["state"] == "aborted" and tx["paths"] == []
    assert "running module" not in result.stderr


def test_source_without_modules_dir_is_refused(src: tuple[Sandbox, GitSource]) -> None:
    sbx, source = src
    (source.work / "README").write_text("not an updates repository")
    source.git("add", "README")
    source.git("commit", "-q", "-m", "no modules")
    source.git("push", "-q", "origin", "HEAD:master")

    result = sbx.hs_tx("update")

    assert result.returncode == 1
    assert "has no modules/ directory" in result.stderr
    assert sbx.journal_json(1)["state"] == "aborted"


def test_source_module_without_index_json_is_refused(src: tuple[Sandbox, GitSource]) -> None:
    sbx, source = src
    source.publish({"ok": module_files("ok", OK), "nameless": {"index.py": OK}})

    result = sbx.hs_tx("update")

    assert result.returncode == 2
    assert "source module nameless: modules/nameless/index.json is missing" in result.stderr
    assert not (sbx.modules / "ok").exists()


def test_rewritten_history_is_refused_until_accepted(src: tuple[Sandbox, GitSource]) -> None:
    sbx, source = src
    source.publish({"m": module_files("m", OK)})
    assert sbx.hs_tx("update").returncode == 0
    source.git("checkout", "-q", "--orphan", "rewritten")
    source.publish({"m": module_files("m", OK, version="1.1.0")}, message="rewrite")

    refused = sbx.hs_tx("update")

    assert refused.returncode == 1
    assert "the source history was rewritten" in refused.stderr
    assert version_of(sbx, "m") == "1.0.0"
    accepted = sbx.hs_tx("update", "--accept-rewritten-source")
    assert accepted.returncode == 0, accepted.stderr
    assert version_of(sbx, "m") == "1.1.0"


def test_git_environment_variables_do_not_redirect_the_fetch(
    src: tuple[Sandbox, GitSource],
    tmp_path: Path,
) -> None:
    sbx, source = src
    source.publish({"m": module_files("m", OK)})
    decoy = tmp_path / "decoy"
    subprocess.run(["git", "init", "-q", str(decoy)], check=True)

    result = sbx.hs_tx("update", env={"GIT_DIR": str(decoy / ".git"), "GIT_WORK_TREE": str(decoy)})

    assert result.returncode == 0, result.stderr
    assert version_of(sbx, "m") == "1.0.0"


def test_source_module_with_a_bad_name_is_refused(src: tuple[Sandbox, GitSource]) -> None:
    sbx, source = src
    source.publish({"ok": module_files("ok", OK), "bad name;rm": module_files("x", OK)})

    result = sbx.hs_tx("update")

    assert result.returncode == 2
    assert "invalid module name 'bad name;rm'" in result.stderr
    assert not (sbx.modules / "ok").exists()


def test_an_unchanged_source_is_asked_not_fetched_and_a_moved_branch_is_fetched(
    src: tuple[Sandbox, GitSource],
) -> None:
    """An idle run asks the source where its branch points (`ls-remote`) and fetches
    nothing; a ref whose name merely ends like the branch's does not fool it."""
    sbx, source = src
    first = source.publish({"m": module_files("m", OK)})
    assert sbx.hs_tx("update").returncode == 0
    packs = sbx.state / "source/objects/pack"
    config = (sbx.state / "source/config").stat()
    before = sorted(p.name for p in packs.iterdir())

    assert sbx.hs_tx("update").returncode == 0

    assert sorted(p.name for p in packs.iterdir()) == before, "an idle run fetched"
    assert (sbx.state / "source/config").stat().st_mtime_ns == config.st_mtime_ns
    second = source.publish({"m": module_files("m", OK, version="2.0.0")})
    source.git("push", "-q", "origin", f"{first}:refs/heads/x/refs/heads/master")

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert version_of(sbx, "m") == "2.0.0"
    assert sbx.journal_json(3)["source_after"] == second


@pytest.mark.parametrize("tail", ['with "quotes"', "with \\ and\ttab", "plain"])
def test_the_clones_origin_reads_back_as_the_configured_url(
    src: tuple[Sandbox, GitSource], tail: str
) -> None:
    """hs-tx writes the clone's config itself: git reads back exactly the url given."""
    sbx, source = src
    source.publish({"m": module_files("m", OK)})
    moved = source.root / f"remote {tail}.git"
    source.bare.rename(moved)
    sbx.source_url = f"file://{moved}"
    sbx.write_config()

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    url = subprocess.run(
        ["git", "config", "--file", str(sbx.state / "source/config"), "remote.origin.url"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert url == f"file://{moved}\n"
