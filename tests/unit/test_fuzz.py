"""Property-based tests: every input ends in a one-line answer or a correct result.

Random and malformed config files, index.json files, version strings, ids and limits,
journal rows and git tree entry names go through the loaders and the CLI (in-process,
as `hs-tx` runs them): the answer is an exit code of the documented kind with an
`hs-tx: error:` line, never a traceback or an "internal error".

The suite runs a bounded number of examples per property; the bench runs them long:
    HS_TX_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/unit/test_fuzz.py
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sqlite3
import tarfile
from contextlib import closing, redirect_stderr, redirect_stdout, suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from hs_txupdate.base.errors import ConfigError, DamagedError, ModuleDefinitionError
from hs_txupdate.cli.main import main
from hs_txupdate.core.config import load_config
from hs_txupdate.journal import Journal, Kind, Phase, RunStatus, State, Status, Step
from hs_txupdate.modules.discovery import load_module
from hs_txupdate.snapshot import Captured, SnapshotTarget
from hs_txupdate.snapshot.entries import entry_type
from hs_txupdate.snapshot.files import sha256_file
from hs_txupdate.snapshot.manifest import build_manifest, check_reference, needed_entries
from hs_txupdate.snapshot.restore import restore
from hs_txupdate.snapshot.tar import TarBackend
from hs_txupdate.snapshot.treediff import diff
from hs_txupdate.sync.git import BadTreeEntry, check_entry_name
from hs_txupdate.sync.versions import Version, VersionError
from tests.helpers import need, tree_state

EXAMPLES = int(os.environ.get("HS_TX_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
# every kind of value a SQLite column or a JSON/TOML document can hold
SCALARS = st.one_of(
    st.none(), st.booleans(), INT64, st.integers(), st.floats(), st.text(max_size=40)
)
JSON = st.recursive(
    SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids)
)


def cli(*argv: str) -> tuple[int, str, str]:
    """Run `hs-tx ARGV` in this process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    umask = os.umask(0o022)  # hs-tx sets its own; the test process keeps its one
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv))
    finally:
        os.umask(umask)
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, err: str, allowed: set[int]) -> None:
    """A documented exit, and an error (if any) said in hs-tx's own words."""
    assert code in allowed, (code, err)
    assert "internal error" not in err and "Traceback" not in err, err
    if code:
        assert "hs-tx: error:" in err or "usage:" in err, err


# --- configuration files -------------------------------------------------------------


def _toml(value: Any) -> str:
    """`value` as a TOML value (inline tables for dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value if v is not None) + "]"
    return (
        "{"
        + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items() if v is not None)
        + "}"
    )


KEYS = {
    "": ["state_dir", "modules_dir", "bogus"],
    "snapshot": ["backend", "keep"],
    "scope": ["extra_paths", "watch", "ignore", "outside_writes", "modules"],
    "runtime": ["path", "wheels"],
    "source": ["url", "branch", "allowed_signers", "max_age_days", "fetch_timeout", "max_fetch_mb"],
    "net": ["guard", "guard_interfaces"],
    "services": ["manager", "restart", "is_active", "stop"],
}
PATHLIKE = st.one_of(st.just("/srv/x"), st.text(max_size=12), st.just("/a\x00b"))


@st.composite
def config_documents(draw: st.DrawFn) -> str:
    lines = []
    for section, keys in KEYS.items():
        chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
        if section and (chosen or draw(st.booleans())):
            lines.append(f"[{section}]")
        for key in chosen:
            value = draw(st.one_of(JSON, PATHLIKE, st.lists(PATHLIKE, max_size=3)))
            if value is not None:
                lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=st.one_of(config_documents(), st.text(max_size=200)))
def test_any_config_file_loads_or_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(str(path))
    except ConfigError as exc:
        assert "\n" not in str(exc).strip() or "TOML" in str(exc)


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("a = " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError, match=r"nested too deeply|invalid TOML"):
        load_config(str(path))


# --- index.json and versions ---------------------------------------------------------


@FUZZ
@given(doc=st.one_of(JSON, st.fixed_dictionaries({"metadata": JSON, "configuration": JSON})))
def test_any_index_json_loads_or_is_a_module_error(tmp_path: Path, doc: Any) -> None:
    module = tmp_path / "modules" / "m"
    module.mkdir(parents=True, exist_ok=True)
    (module / "index.json").write_text(json.dumps(doc))
    with suppress(ModuleDefinitionError):
        load_module(module)


def test_deeply_nested_index_json_is_a_module_error(tmp_path: Path) -> None:
    module = tmp_path / "m"
    module.mkdir()
    (module / "index.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ModuleDefinitionError, match="malformed"):
        load_module(module)


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=30), st.from_regex(r"v?\d{1,30}\.\d{1,5}\.\d{1,5}(-[a-z0-9.]{1,9})?")
    )
)
def test_any_version_string_parses_or_is_a_version_error(text: str) -> None:
    try:
        version = Version.parse(text)
    except VersionError:
        return
    assert Version.parse(str(version.text)) == version


# --- git tree entry names ------------------------------------------------------------


@FUZZ
@given(
    name=st.one_of(st.text(max_size=12), st.sampled_from(["..", ".", ".git", ".GIT", "a/b", ""]))
)
def test_a_tree_entry_name_is_either_refused_or_stays_in_its_directory(name: str) -> None:
    try:
        check_entry_name(name, f"modules/m/{name}")
    except BadTreeEntry as exc:
        assert exc.exit_code == 2
        return
    base = Path("/x/dest")
    assert (base / name).parent == base and name not in ("", ".", "..")


# --- the CLI: ids, limits, and journal rows --------------------------------------------


@pytest.fixture(scope="module")
def journal_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir whose journal holds one committed update with a path, a module run
    and events, written through the journal API."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "state").mkdir(mode=0o700)
    (root / "modules").mkdir()
    journal = Journal(root / "state" / "journal.db")
    tx = journal.begin(Kind.UPDATE, ["hs-tx", "update"], "root", "box")
    journal.event(tx, Phase.PLAN, Step.SCOPE, Status.DONE, {"paths": ["/srv/x"]})
    journal.add_path(tx, 0, "/srv/x", True, "tar")
    run = journal.start_module_run(tx, "m", "1.0.0")
    journal.finish_module_run(run, RunStatus.SUCCESS, duration_s=0.5)
    journal.set_state(tx, State.COMMITTED, exit_code=0)
    journal.close()
    return root


def _config(root: Path) -> Path:
    config = root / "config.toml"
    config.write_text(
        f'state_dir = "{root / "state"}"\nmodules_dir = "{root / "modules"}"\n'
        '[net]\nguard = false\n[services]\nmanager = "command"\n'
        'restart = ["/bin/true"]\nis_active = ["/bin/true"]\n'
    )
    return config


@FUZZ
@given(
    value=st.one_of(st.integers(), st.text(max_size=25)),
    verb=st.sampled_from(["show", "undo", "limit"]),
)
def test_any_id_or_limit_gets_a_clean_answer(
    journal_template: Path, tmp_path: Path, value: Any, verb: str
) -> None:
    assume(not (verb == "undo" and _names_one(value)))  # that would be a real undo
    root = tmp_path / "sbx"
    if not root.exists():
        shutil.copytree(journal_template, root)
    config = str(_config(root))
    if verb == "limit":
        code, _, err = cli("--config", config, "history", "--limit", str(value))
    else:
        code, _, err = cli("--config", config, verb, str(value))
    assert_clean(code, err, {0, 2})


def _names_one(value: Any) -> bool:
    """True when argparse's int() reads `value` as 1 ("1", "+01", " 1 ", ...)."""
    try:
        return int(str(value)) == 1
    except ValueError:
        return False


def _columns(db: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(db)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [
            (table, col[1])
            for table in tables
            if not table.startswith("sqlite_")
            for col in conn.execute(f"PRAGMA table_info({table})")
            if not col[5]  # not the primary key
        ]


@FUZZ
@given(data=st.data())
def test_a_malformed_journal_row_is_named_and_nothing_else_fails(
    journal_template: Path, tmp_path: Path, data: st.DataObject
) -> None:
    root = tmp_path / "sbx"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(journal_template, root)
    db = root / "state" / "journal.db"
    table, column = data.draw(st.sampled_from(_columns(db)))
    value = data.draw(st.one_of(SCALARS, st.binary(max_size=20), st.just("{"), st.just("[]")))
    with closing(sqlite3.connect(db)) as conn:
        try:
            conn.execute(f'UPDATE "{table}" SET "{column}" = ?', (value,))
            conn.commit()
        except (sqlite3.DatabaseError, OverflowError):
            assume(False)  # SQLite itself refuses it
    config = str(_config(root))
    for argv, allowed in (
        (["history", "--json"], {0, 3}),
        (["show", "1", "--json"], {0, 2, 3}),
        (["status", "--json"], {0, 3}),
    ):
        code, out, err = cli("--config", config, *argv)
        assert_clean(code, err, allowed)
        if code == 0:
            json.loads(out)
        if code == 3:
            assert "journal" in err, err


# --- tar members through a restore ---------------------------------------------------

MEMBER_NAMES = st.one_of(
    st.sampled_from(
        [
            "data", "data/conf", "data/conf/app.conf", "data/sub", "data/new", "../x",
            "/abs", "data/../../x", "data/conf/../../x", "x", "data/conf/app.conf/y",
        ]
    ),
    st.text(alphabet="ab./-", min_size=1, max_size=12).map(lambda t: f"data/{t}"),
)  # fmt: skip
MEMBER_TYPES = st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "chr"])


def _tar_member(name: str, kind: str, text: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644 if kind == "file" else 0o755
    data = None
    if kind == "file":
        data = text.encode()
        info.size = len(data)
    else:
        info.type = {
            "dir": tarfile.DIRTYPE,
            "symlink": tarfile.SYMTYPE,
            "hardlink": tarfile.LNKTYPE,
            "fifo": tarfile.FIFOTYPE,
            "chr": tarfile.CHRTYPE,
        }[kind]
        info.linkname = text or "/etc/passwd"
        info.devmajor, info.devminor = 1, 3
    return info, data


@st.composite
def archives(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    """Members of a crafted archive: the entries a restore reads, each of any type,
    and more of any name and type, in any order."""
    # mostly of the right type, so the restore goes on and meets the odd one out
    needed = [
        (
            name,
            draw(st.one_of(st.just(kind), st.just(kind), MEMBER_TYPES)),
            draw(st.text(max_size=8)),
        )
        for name, kind in NEEDED
    ]
    more = draw(st.lists(st.tuples(MEMBER_NAMES, MEMBER_TYPES, st.text(max_size=8)), max_size=6))
    return draw(st.permutations(needed + more))


NEEDED = (("data", "dir"), ("data/conf", "dir"), ("data/conf/app.conf", "file"))


@FUZZ
@given(members=archives())
def test_any_archive_is_restored_only_inside_the_scope_or_refused(
    tmp_path: Path, members: list[tuple[str, str, str]]
) -> None:
    need(os.geteuid() == 0, "tar restores keep owners: needs root")
    case = tmp_path / "case"
    if case.exists():
        shutil.rmtree(case)
    live, outside, snapshots = case / "data", case / "outside", case / "snapshots"
    (live / "conf").mkdir(parents=True)
    (live / "conf/app.conf").write_text("v1")
    outside.mkdir()
    (outside / "keep").write_text("not in the scope")
    manifest = build_manifest(live)
    key = "00000000-0000-4000-8000-000000000000"
    archive = snapshots / f"{key}-1" / "0.tar"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, text in members:
            info, data = _tar_member(name, kind, text)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    (live / "conf/app.conf").write_text("v2")  # what the run changed
    (live / "new").write_text("made by the run")
    changes = diff(live, manifest)
    needed = needed_entries(changes)
    captured = Captured(str(archive), archive.stat().st_size, sha256_file(archive))
    target = SnapshotTarget(f"{key}-2", 0, live)
    outside_before = tree_state(outside)
    try:
        wanted = None if needed is None else list(needed)
        with TarBackend(snapshots).reference(target, captured, wanted) as ref:
            check_reference(ref, manifest, needed)
            restore(live, ref, changes)
        event("restored")
    except DamagedError as exc:
        event("refused " + str(exc)[:60])
    assert tree_state(outside) == outside_before, "a restore wrote outside its scope"
    assert not (case / "x").exists() and not Path("/abs").exists()
    for rel, entry in manifest.entries.items():  # no entry of another type made
        path = live / rel if rel else live
        if os.path.lexists(path):
            assert entry_type(os.lstat(path)) in (entry[0], "f", "d"), (rel, members)
    assert not [p for p in case.iterdir() if p.name.startswith(".hs-tx-")], "staging left"
