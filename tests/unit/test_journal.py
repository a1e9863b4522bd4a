"""The journal file: permissions, pragmas, migrations, and refusing what it cannot read."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from hs_txupdate.base.errors import EXIT_DAMAGED, DamagedError
from hs_txupdate.core.config import config_from_dict
from hs_txupdate.core.context import Context
from hs_txupdate.journal import Journal, Kind, Phase, State, Status, Step
from hs_txupdate.journal.schema import COMPAT_LEVEL, REVISIONS, open_journal

TABLES = {"alembic_version", "hs_tx_meta", "transactions", "paths", "events", "module_runs"}


def make_journal(path: Path) -> None:
    """Create a journal at `path` with one finished transaction in it."""
    journal = Journal(path)
    try:
        tx = journal.begin(Kind.UPDATE, ["hs-tx", "update"], "root", "host")
        journal.event(tx, Phase.PLAN, Step.SCOPE, Status.DONE, {"paths": []})
        journal.set_state(tx, State.COMMITTED, exit_code=0)
    finally:
        journal.close()


def sql(path: Path, *statements: str) -> list[tuple]:
    """Run statements on the file with plain sqlite3; return the last one's rows."""
    conn = sqlite3.connect(path)
    try:
        rows: list[tuple] = []
        for statement in statements:
            rows = conn.execute(statement).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def hs_tx(state: Path, *args: str) -> subprocess.CompletedProcess:
    cfg = state.parent / "c.toml"
    cfg.write_text(f'state_dir = "{state}"\n')
    return subprocess.run(
        [sys.executable, "-m", "hs_txupdate.cli", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_state_dir_0700_and_journal_0600(tmp_path: Path) -> None:
    state = tmp_path / "deeper" / "state"
    ctx = Context(config_from_dict({"state_dir": str(state)}))
    old = os.umask(0)  # the modes must not depend on the caller's umask
    try:
        ctx.journal.begin(Kind.UPDATE, ["hs-tx"], "root", "host")
    finally:
        os.umask(old)
        ctx.close()
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    db = state / "journal.db"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    for sidecar in (state / "journal.db-wal", state / "journal.db-shm"):
        if sidecar.exists():
            assert stat.S_IMODE(os.stat(sidecar).st_mode) & 0o077 == 0, sidecar


def test_migrations_are_applied_automatically(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    make_journal(db)
    tables = {r[0] for r in sql(db, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables >= TABLES
    assert sql(db, "SELECT version_num FROM alembic_version") == [(REVISIONS[-1],)]
    assert sql(db, "SELECT value FROM hs_tx_meta WHERE key='compat'") == [(str(COMPAT_LEVEL),)]
    # opening again is a no-op that keeps the data
    journal = Journal(db)
    try:
        [tx] = journal.transactions()
        assert tx.state == "committed"
        assert tx.finished_at is not None
    finally:
        journal.close()


def test_wal_and_synchronous_full(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    conn = open_journal(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    finally:
        conn.close()
    # WAL is a property of the file: anyone who opens it later gets it too
    assert sql(db, "PRAGMA journal_mode") == [("wal",)]


def test_every_connection_of_the_journal_is_full(tmp_path: Path) -> None:
    """The pragmas are per connection: a second opening (a second command, or the one
    reopened after a rescue) gets them too."""
    db = tmp_path / "journal.db"
    first, second = open_journal(db), open_journal(db)
    try:
        for conn in (first, second):
            assert conn.execute("PRAGMA synchronous").fetchone() == (2,)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    finally:
        first.close()
        second.close()


def test_newer_compatible_journal_still_opens(tmp_path: Path) -> None:
    db = tmp_path / "state" / "journal.db"
    db.parent.mkdir(mode=0o700)
    make_journal(db)
    sql(
        db,
        "UPDATE alembic_version SET version_num = '9999'",
        "ALTER TABLE transactions ADD COLUMN added_by_newer TEXT",
        "ALTER TABLE events ADD COLUMN another INTEGER",
    )

    journal = Journal(db)
    try:
        [old] = journal.transactions()
        assert old.state == "committed"
        new = journal.begin(Kind.UPDATE, ["hs-tx"], "root", "host")
        journal.event(new, Phase.PLAN, Step.SCOPE, Status.DONE)
        journal.set_state(new, State.ABORTED, exit_code=2)
        info = journal.transaction(new)
        assert info is not None and info.state == "aborted"
        assert [e.step for e in info.events] == ["scope"]
    finally:
        journal.close()
    # it was not "migrated" back down or rewritten
    assert sql(db, "SELECT version_num FROM alembic_version") == [("9999",)]
    result = hs_tx(db.parent, "history", "--json")
    assert result.returncode == 0, result.stderr


def test_newer_incompatible_journal_is_damaged(tmp_path: Path) -> None:
    db = tmp_path / "state" / "journal.db"
    db.parent.mkdir(mode=0o700)
    make_journal(db)
    sql(
        db,
        "UPDATE alembic_version SET version_num = '9999'",
        f"UPDATE hs_tx_meta SET value = '{COMPAT_LEVEL + 1}' WHERE key = 'compat'",
    )
    before = db.read_bytes()

    with pytest.raises(DamagedError) as info:
        Journal(db)
    assert info.value.exit_code == EXIT_DAMAGED
    assert "9999" in str(info.value)

    result = hs_tx(db.parent, "history")
    assert result.returncode == EXIT_DAMAGED, result.stderr
    assert "Traceback" not in result.stderr
    assert str(db) in result.stderr
    assert db.read_bytes() == before, "a journal from a newer hs-tx must be left alone"


@pytest.mark.parametrize("keep_header", [False, True], ids=["random-bytes", "valid-header"])
def test_corrupt_journal_is_damaged(tmp_path: Path, keep_header: bool) -> None:
    db = tmp_path / "state" / "journal.db"
    db.parent.mkdir(mode=0o700)
    garbage = os.urandom(64 << 10)
    if keep_header:
        make_journal(db)
        sql(db, "PRAGMA wal_checkpoint(TRUNCATE)")
        real = db.read_bytes()
        garbage = real[:100] + os.urandom(len(real) - 100)
    db.write_bytes(garbage)

    with pytest.raises(DamagedError) as info:
        Journal(db)
    assert info.value.exit_code == EXIT_DAMAGED
    assert info.value.hint, "say how to recover by hand"

    result = hs_tx(db.parent, "history", "--json")
    assert result.returncode == EXIT_DAMAGED, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert str(db) in result.stderr
    assert db.read_bytes() == garbage, "an unreadable journal must not be overwritten"


def test_revisions_match_the_shipped_migrations() -> None:
    script = ScriptDirectory(str(resources.files("hs_txupdate.migrations")))
    shipped = [rev.revision for rev in script.walk_revisions()]  # head first
    assert tuple(reversed(shipped)) == REVISIONS
    assert script.get_current_head() == REVISIONS[-1]


def test_the_models_the_migrations_and_the_queries_name_the_same_columns(tmp_path: Path) -> None:
    """The journal's queries are plain SQL and its models only describe the tables: a
    migration, a model and a record that drifted apart would fail here, not in a run."""
    from hs_txupdate.journal import records
    from hs_txupdate.journal.models import Base

    db = tmp_path / "journal.db"
    make_journal(db)
    for table in Base.metadata.sorted_tables:
        found = {row[1] for row in sql(db, f"PRAGMA table_info({table.name})")}
        assert found == {c.name for c in table.columns}, table.name
    read = {
        "paths": records.PathInfo,
        "module_runs": records.ModuleRunInfo,
        "outside_scope": records.OutsideInfo,
        "run_changes": records.RunChangeInfo,
        "statemanager_backups": records.BackupInfo,
        "services": records.ServiceInfo,
        "transactions": records.TxInfo,
    }
    for name, cls in read.items():
        table = Base.metadata.tables[name]
        missing = set(records.columns(cls)) - {c.name for c in table.columns}
        assert not missing, f"{cls.__name__} reads {sorted(missing)}, which {name} lacks"
