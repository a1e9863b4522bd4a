"""`hs-tx modules status|components|enable|disable|branch` through the real command: the
settings the HOMESERVER Admin UI switches (components, the branch of a module's own
app repository), on a real ext4 (tar backend), a real git source and real app
repositories (local bare repos)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.test_modules_cmd import counting, history, index_of, ok
from tests.helpers import GitSource, Sandbox, module_files

COMPONENTS = {
    "frontend": {"enabled": True, "description": "the web UI"},
    "premium": {"enabled": True, "description": "premium tabs"},
}


def website(sbx: Sandbox, version: str = "1.0.0", **config: Any) -> dict[str, str]:
    """A module in the style of the published website module: components under
    config.target_paths.components, its app repository under config.repository."""
    return module_files(
        "website",
        counting(sbx, "website"),
        version=version,
        meta={"description": "HOMESERVER website frontend/backend"},
        extra={"config": {"target_paths": {"components": COMPONENTS}, **config}},
    )


def app_repo(root: Path) -> GitSource:
    """A module's own app repository with branches master and develop."""
    app = GitSource(root).create()
    (app.work / "README").write_text("app\n")
    app.git("add", "-A")
    app.git("commit", "-q", "-m", "app")
    app.git("push", "-q", "origin", "HEAD:master")
    app.git("push", "-q", "origin", "HEAD:develop")
    return app


def components(sbx: Sandbox, name: str) -> dict[str, bool]:
    rows = json.loads(ok(sbx.hs_tx("modules", "components", name, "--json")).stdout)
    return {row["name"]: row["enabled"] for row in rows}


def test_a_component_switch_is_a_config_transaction_and_survives_a_schema_update(
    src: tuple[Sandbox, GitSource],
) -> None:
    sbx, source = src
    source.publish({"website": website(sbx)})
    ok(sbx.hs_tx("update"))
    assert components(sbx, "website") == {"frontend": True, "premium": True}

    done = ok(sbx.hs_tx("modules", "disable", "website", "premium"))

    assert "component premium of module website disabled" in done.stderr
    assert components(sbx, "website") == {"frontend": True, "premium": False}
    [tx] = history(sbx)[:1]
    assert (tx["kind"], tx["state"]) == ("config", "committed")
    steps = [(e["step"], e["status"]) for e in sbx.journal_json(tx["id"])["events"]]
    assert ("set-component", "done") in steps
    # the next version adds a component and rewords one: the operator's switch stays
    changed = {
        **COMPONENTS,
        "premium": {"enabled": True, "description": "premium tabs, reworded"},
        "backend": {"enabled": True},
    }
    files = website(sbx, "2.0.0")
    index = json.loads(files["index.json"])
    index["config"]["target_paths"]["components"] = changed
    files["index.json"] = json.dumps(index)
    source.publish({"website": files})
    ok(sbx.hs_tx("update"))
    assert index_of(sbx, "website")["metadata"]["schema_version"] == "2.0.0"
    assert components(sbx, "website") == {"frontend": True, "premium": False, "backend": True}

    latest = history(sbx)[0]["id"]
    again = ok(sbx.hs_tx("modules", "disable", "website", "premium"))
    assert "already disabled; nothing to do" in again.stderr
    assert history(sbx)[0]["id"] == latest, "nothing to do opens no transaction"
    ok(sbx.hs_tx("modules", "enable", "website", "premium"))
    assert components(sbx, "website")["premium"] is True


def test_unknown_modules_and_components_are_refused_naming_what_exists(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    sbx.module("plain", counting(sbx, "plain"))
    path = sbx.module("linker", counting(sbx, "linker"))
    index = json.loads((path / "index.json").read_text())
    index["config"] = {"components": {"links": {"enabled": False}}}  # the other place
    (path / "index.json").write_text(json.dumps(index))
    before = (path / "index.json").read_bytes()

    assert components(sbx, "linker") == {"links": False}
    unknown = sbx.hs_tx("modules", "enable", "linker", "nosuch")
    none = sbx.hs_tx("modules", "enable", "plain", "anything")
    missing = sbx.hs_tx("modules", "disable", "nosuch", "links")
    listed = sbx.hs_tx("modules", "components", "nosuch")

    assert unknown.returncode == 2 and "no component 'nosuch'" in unknown.stderr
    assert "its components: links" in unknown.stderr
    assert none.returncode == 2 and "its components: none" in none.stderr
    assert missing.returncode == 2 and "'nosuch' is not installed" in missing.stderr
    assert listed.returncode == 2
    assert (path / "index.json").read_bytes() == before
    assert not (sbx.state / "journal.db").exists(), "a refusal writes nothing"
    ok(sbx.hs_tx("modules", "enable", "linker", "links"))
    assert components(sbx, "linker") == {"links": True}
    assert len(ok(sbx.hs_tx("modules", "components", "plain")).stdout.splitlines()) == 1


def test_status_shows_versions_branch_components_and_the_last_run(
    src: tuple[Sandbox, GitSource],
) -> None:
    sbx, source = src
    app = app_repo(sbx.root / "app")
    repository = {"repository": {"url": app.url, "branch": "master"}}
    source.publish({"website": website(sbx, **repository)})
    sbx.module("local", counting(sbx, "local"), version="0.3.0")
    ok(sbx.hs_tx("update"))

    rows = json.loads(ok(sbx.hs_tx("modules", "status", "--json")).stdout)

    assert [r["name"] for r in rows] == ["local", "website"]
    site = rows[1]
    assert {k: site[k] for k in ("enabled", "version", "source_version")} == {
        "enabled": True,
        "version": "1.0.0",
        "source_version": "1.0.0",
    }
    assert (site["branch"], site["default_branch"]) == ("master", "master")
    assert site["description"] == "HOMESERVER website frontend/backend"
    assert [c["name"] for c in site["components"]] == ["frontend", "premium"]
    assert (site["last_run"]["tx"], site["last_run"]["status"]) == (1, "success")
    assert site["last_run"]["kind"] == "main"
    assert (rows[0]["branch"], rows[0]["source_version"], rows[0]["components"]) == (
        None,
        None,
        [],
    )
    one = json.loads(ok(sbx.hs_tx("modules", "status", "website", "--json")).stdout)
    assert one == [site]
    text = ok(sbx.hs_tx("modules", "status", "website")).stdout
    assert "Branch:         master (default master)" in text
    assert "Last run:       success in transaction 1" in text
    assert "premium" in text and "premium tabs" in text
    table = ok(sbx.hs_tx("modules", "status")).stdout.splitlines()
    assert table[0].split()[:3] == ["Name", "Enabled", "Installed"]
    assert any(line.split()[:2] == ["website", "yes"] for line in table)


def test_a_branch_is_set_only_when_the_modules_repository_has_it(
    tar_sandbox: Sandbox,
) -> None:
    sbx = tar_sandbox
    app = app_repo(sbx.root / "app")
    path = sbx.module("sbin", counting(sbx, "sbin"))
    index = json.loads((path / "index.json").read_text())
    index["repo"] = {"url": app.url, "branch": "master"}  # the other place
    (path / "index.json").write_text(json.dumps(index))
    sbx.module("plain", counting(sbx, "plain"))
    gone = sbx.module("gone", counting(sbx, "gone"))
    index = json.loads((gone / "index.json").read_text())
    index["repo"] = {"url": f"file://{sbx.root}/nowhere.git", "branch": "master"}
    (gone / "index.json").write_text(json.dumps(index))

    missing = sbx.hs_tx("modules", "branch", "sbin", "feature")
    invalid = sbx.hs_tx("modules", "branch", "sbin", "a..b")
    none = sbx.hs_tx("modules", "branch", "plain", "develop")
    unreachable = sbx.hs_tx("modules", "branch", "gone", "develop")

    assert missing.returncode == 2, missing.stderr
    assert f"{app.url} of module sbin has no branch 'feature'" in missing.stderr
    assert "its branches: develop, master" in missing.stderr
    assert invalid.returncode == 2 and "invalid branch name" in invalid.stderr
    assert none.returncode == 2 and "no repository of its own" in none.stderr
    assert unreachable.returncode == 1 and "nowhere.git" in unreachable.stderr
    assert not (sbx.state / "journal.db").exists(), "a refusal writes nothing"

    done = ok(sbx.hs_tx("modules", "branch", "sbin", "develop"))

    assert "module sbin set to branch develop" in done.stderr
    repo = index_of(sbx, "sbin")["repo"]
    assert (repo["branch"], repo["default_branch"]) == ("develop", "master")
    [tx] = history(sbx)
    assert (tx["kind"], tx["state"]) == ("config", "committed")
    [step] = [e for e in sbx.journal_json(tx["id"])["events"] if e["step"] == "set-branch"][-1:]
    assert step["detail"]["from"] == "master" and step["detail"]["to"] == "develop"
    ok(sbx.hs_tx("undo", str(tx["id"])))
    assert index_of(sbx, "sbin")["repo"] == {"url": app.url, "branch": "master"}
