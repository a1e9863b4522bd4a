"""Only signed source runs as root: with `[source] allowed_signers`, the commit phase 1
would install must carry a valid SSH signature by an allowed key (real ssh-keygen
keys, real signed commits in a local bare repository)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import GitSource, Sandbox, module_files, need, sh

OK = """
def main(args):
    return {"success": True}
"""


def keypair(where: Path, name: str) -> Path:
    """A fresh ed25519 key; returns the private key's path (the public one is .pub)."""
    key = where / name
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key)
    return key


def allow(signers: Path, email: str, key: Path, options: str = "") -> None:
    """Add `key` for `email` to git's allowed-signers file."""
    public = key.with_suffix(".pub").read_text().split()
    line = " ".join(filter(None, [email, options, public[0], public[1]]))
    with signers.open("a") as f:
        f.write(line + "\n")


def signing(source: GitSource, key: Path | None) -> None:
    """Commits published from now on are signed with `key` (None: unsigned)."""
    if key is None:
        source.git("config", "commit.gpgsign", "false")
        return
    source.git("config", "gpg.format", "ssh")
    source.git("config", "user.signingkey", str(key))
    source.git("config", "commit.gpgsign", "true")


@pytest.fixture
def rig(tar_sandbox: Sandbox, tmp_path: Path) -> tuple[Sandbox, GitSource, Path, Path]:
    need(subprocess.run(["which", "ssh-keygen"], capture_output=True).returncode == 0,
         "needs ssh-keygen (openssh-client)")  # fmt: skip
    sbx = tar_sandbox
    source = GitSource(tmp_path / "src").create()
    key = keypair(tmp_path, "release")
    signers = tmp_path / "allowed_signers"
    allow(signers, "release@example.org", key)
    sbx.source_url = source.url
    sbx.write_config()
    text = sbx.config.read_text()
    sbx.config.write_text(text + f'allowed_signers = "{signers}"\n')
    return sbx, source, key, signers


def test_a_commit_signed_by_an_allowed_key_is_installed(rig: tuple) -> None:
    sbx, source, key, _signers = rig
    signing(source, key)
    source.publish({"ok": module_files("ok", OK)})

    result = sbx.hs_tx("update")

    assert result.returncode == 0, result.stderr
    assert "signed by release@example.org" in result.stderr
    tx = sbx.journal_json(1)
    assert tx["source_signer"]["signer"] == "release@example.org"
    assert tx["source_signer"]["key"].startswith("ED25519 SHA256:")
    assert "signed by release@example.org" in sbx.hs_tx("show", "1").stdout
    assert (sbx.modules / "ok").is_dir()


@pytest.mark.parametrize("case", ["unsigned", "unknown-key", "expired-key"])
def test_a_commit_not_signed_by_an_allowed_key_is_refused(
    rig: tuple, tmp_path: Path, case: str
) -> None:
    sbx, source, key, signers = rig
    if case == "unknown-key":
        signing(source, keypair(tmp_path, "stranger"))
    elif case == "expired-key":
        signers.write_text("")
        allow(signers, "release@example.org", key, 'valid-before="20200101"')
        signing(source, key)
    else:
        signing(source, None)
    commit = source.publish({"ok": module_files("ok", OK)})

    result = sbx.hs_tx("update")

    assert result.returncode == 2, result.stderr
    assert f"source commit {commit[:12]} is not signed by an allowed key" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (sbx.modules / "ok").exists(), "nothing was installed"
    history = json.loads(sbx.hs_tx("history", "--json").stdout)
    assert [tx["state"] for tx in history] == ["aborted"]
