"""`hs-tx recover` and `hs-tx status` as an operator uses them."""

from __future__ import annotations

import json

from tests.helpers import Sandbox, tree_state


def test_recover_with_nothing_to_do(tar_sandbox: Sandbox) -> None:
    result = tar_sandbox.hs_tx("recover")

    assert result.returncode == 0, result.stderr
    assert "every transaction is in a final state" in result.stderr
    report = json.loads((tar_sandbox.state / "last-recovery.json").read_text())
    assert report["exit_code"] == 0 and report["transactions"] == []


def test_recover_twice_after_a_crash(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    sbx.writer_module()
    before = tree_state(sbx.data)
    assert sbx.hs_tx("update", env={"HS_TX_CRASH_AT": "7"}).returncode == -9
    unfinished = sbx.hs_tx("status")
    assert unfinished.returncode == 3 and "UNFINISHED transaction 1" in unfinished.stdout

    first = sbx.hs_tx("recover")
    second = sbx.hs_tx("recover")

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "recovering transaction 1" in first.stderr
    assert "recovering" not in second.stderr
    assert tree_state(sbx.data) == before
    assert sbx.journal_json(1)["state"] == "rolled_back"
    assert sbx.hs_tx("status").returncode == 0


def test_corrupt_journal_is_exit_3_with_what_to_do(tar_sandbox: Sandbox) -> None:
    sbx = tar_sandbox
    sbx.state.mkdir(mode=0o700)
    (sbx.state / "journal.db").write_bytes(b"this is not a database" * 100)

    result = sbx.hs_tx("recover")

    assert result.returncode == 3
    assert "journal" in result.stderr and "unreadable" in result.stderr
    assert "mv " in result.stderr, "the message says what to do by hand"
