"""No write through a link: scope links resolved when planned, links inside a scope path
put back as links, and a link planted above a scope path stops the rollback."""

from __future__ import annotations

import json
import os
import textwrap

from tests.helpers import Sandbox, tree_state


def _failing(sbx: Sandbox, body: str, backup: list[str]) -> None:
    """Module `m`: runs `body` (shell-like Python lines), then fails."""
    sbx.module(
        "m",
        "import os, shutil\n\ndef main(args):\n"
        + "".join(f"    {line}\n" for line in textwrap.dedent(body).strip().splitlines())
        + "    return {'success': False}\n",
        backup_paths=backup,
    )


def test_a_scope_path_that_is_a_link_is_snapshotted_as_its_target(fs_sandbox: Sandbox) -> None:
    sbx = fs_sandbox
    real = sbx.data / "srv/app"
    real.mkdir(parents=True)
    (real / "conf").write_text("v1")
    link = sbx.data / "app"
    link.symlink_to(real)
    _failing(sbx, f"open({str(link / 'conf')!r}, 'w').write('v2')", [str(link)])
    before = tree_state(sbx.data)

    result = sbx.hs_tx("update")

    assert result.returncode == 1, result.stderr
    assert f"scope path {link} is a link; snapshotting {real}" in result.stderr
    assert tree_state(sbx.data) == before
    paths = [p["path"] for p in sbx.journal_json(1)["paths"]]
    assert str(real) in paths and str(link) not in paths


def test_a_scope_link_out_of_the_watched_roots_is_refused(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    outside = sbx.root / "elsewhere"
    outside.mkdir()
    (sbx.data / "app").symlink_to(outside)
    _failing(sbx, "pass", [str(sbx.data / "app")])

    result = sbx.hs_tx("update")

    assert result.returncode == 2, result.stderr
    assert f"leads through a symbolic link to {outside}, outside [scope] watch" in result.stderr
    assert "Traceback" not in result.stderr


def test_links_inside_a_scope_path_are_put_back_as_links(fs_sandbox: Sandbox) -> None:
    sbx = fs_sandbox
    outside = sbx.root / "elsewhere"
    outside.mkdir()
    (outside / "keep").write_text("not hs-tx's")
    web = sbx.data / "web"
    (web / "sub").mkdir(parents=True)
    (web / "sub/page").write_text("page")
    (web / "link").symlink_to(outside)
    body = f"""
    shutil.rmtree({str(web / "sub")!r})
    os.symlink({str(outside)!r}, {str(web / "sub")!r})
    os.unlink({str(web / "link")!r})
    os.mkdir({str(web / "link")!r})
    """
    _failing(sbx, body, [str(web)])
    before, outside_before = tree_state(sbx.data), tree_state(outside)

    assert sbx.hs_tx("update").returncode == 1
    assert tree_state(sbx.data) == before
    assert os.readlink(web / "link") == str(outside)
    assert tree_state(outside) == outside_before, "never followed"


def test_a_link_planted_above_a_scope_path_stops_the_rollback(fs_sandbox: Sandbox) -> None:
    sbx = fs_sandbox
    app = sbx.data / "app"
    (app / "web").mkdir(parents=True)
    (app / "web/index.html").write_text("v1")
    outside = sbx.root / "elsewhere"
    (outside / "web").mkdir(parents=True)
    (outside / "web/index.html").write_text("someone else's")
    body = f"""
    open({str(app / "web/index.html")!r}, 'w').write('v2')
    os.rename({str(app)!r}, {str(sbx.data / "app.moved")!r})
    os.symlink({str(outside)!r}, {str(app)!r})
    """
    _failing(sbx, body, [str(app / "web")])
    outside_before = tree_state(outside)

    result = sbx.hs_tx("update")

    assert result.returncode == 3, result.stderr
    assert f"{app} is a symbolic link (to {outside})" in result.stderr
    assert "as before" not in result.stderr
    assert tree_state(outside) == outside_before, "the rollback wrote through the link"
    assert sbx.journal_json(1)["state"] == "rollback_failed"
    status = json.loads(sbx.hs_tx("status", "--json").stdout)
    assert [t["id"] for t in status["rollback_failed"]] == [1]

    app.unlink()  # as the hint says: remove the link, then recover
    (sbx.data / "app.moved").rename(app)
    recovered = sbx.hs_tx("recover")
    # the module's rename and link lay outside the scope: restored in it, said so, exit 3
    assert recovered.returncode == 3, recovered.stderr
    assert "every path in its scope is restored, but 3 path(s)" in recovered.stderr
    assert (app / "web/index.html").read_text() == "v1"
    assert sbx.journal_json(1)["state"] == "rolled_back"
