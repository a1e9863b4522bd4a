"""Crash-sweep harness: scenarios, sandbox reset, reference runs and the atomicity check.

Written for the kill sweep (tests/integration/test_kill_sweep.py), usable by the
power-cut sweep (tests/integration/test_power_sweep.py). The operations and the
recoveries run as the real `hs-tx` command (Sandbox.hs_tx, a subprocess); only
read-only queries (history, show) run its entry point in this process. The API:

- `SCENARIOS` (name -> `Scenario`): "commit", "rollback", "undo" and
  "second-rollback" (a rollback after a commit: from tar increments). A scenario
  builds its starting state in an empty sandbox and names the hs-tx command swept.
  Every file it or its modules write gets fixed times, so two runs from the same
  starting state give identical `tree_state` pictures.
- `reset(sbx, scenario)`: wipe the sandbox (state dir and journal, modules, data,
  btrfs snapshots of earlier runs, leftover workers) and build the starting state.
- `record(sbx, scenario) -> Reference`: run the command fully, twice from the
  same start, and keep its transaction id, scope, pictures of the scope before
  and after, the labels of the journal events it wrote (the N-th durable event
  of the process is `events[N - 1]`) and its final state.
- `check_outcome(sbx, ref, crash_at=None) -> str`: after `hs-tx recover`, assert
  the invariants (scope exactly before or exactly after, journal agrees, every
  transaction final, no staging/temp leftovers, no snapshots of a transaction
  that did not commit, undo links consistent); return the final state.
- `run(sbx, argv, crash_at=None)`: run hs-tx with HS_TX_CRASH_AT (a huge N when
  None, so the hook is armed but never fires); when it crashed, assert SIGKILL
  and kill module workers it left (`kill_workers`).
- `event_keys(sbx)` / `new_events(sbx, since)`: the journal's events, and the
  labels of those written since; `history(sbx)` / `read_json(sbx, "show", "1")`:
  the read-only JSON commands, run in this process (saves an interpreter start).
- `points(count, full)`: which N to sweep; `SWEEP_ALL` is True with HS_TX_SWEEP_ALL=1.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import Sandbox, sh, tree_state, wait_gone

SWEEP_ALL = os.environ.get("HS_TX_SWEEP_ALL") == "1"
# How many N between the first and the last a sampled sweep takes.
SAMPLE = 4
FINAL_STATES = ("committed", "rolled_back", "rollback_failed", "aborted")
# Armed but never reached: the full run takes the same code path as a crashing one.
NEVER = 1_000_000
LEFTOVER_PREFIXES = (".hs-tx-stage-", ".hs-tx-tmp-")
# Fixed times (ns): of the starting state, and of whatever the modules write.
T_BEFORE = 1_600_000_000_123_456_789
T_AFTER = 1_700_000_000_987_654_321

Pictures = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    """An operation to sweep: how to build its starting state, and the command."""

    name: str
    argv: tuple[str, ...]
    kind: str  # the kind of the transaction the command opens
    exit_code: int  # what the command returns when it runs through
    prepare: Callable[[Sandbox], None]


@dataclass
class Reference:
    """What a full run of a scenario did, to judge the crashed runs against."""

    scenario: Scenario
    tx_id: int
    scope: list[str]
    backends: list[str]
    before: Pictures
    after: Pictures
    events: list[str]
    state: str
    seconds: float

    @property
    def count(self) -> int:
        """How many durable events the process of a full run wrote."""
        return len(self.events)

    @property
    def commit_at(self) -> int | None:
        """N of the commit decision event (a crash from there on must commit)."""
        for i, label in enumerate(self.events, 1):
            if label.startswith(f"{self.tx_id}: commit decision done"):
                return i
        return None


# --- scenarios ----------------------------------------------------------------------------
APP_BODY = """
import os
D = {data!r}
T = {t}


def main(args):
    a = D + "/app"
    with open(a + "/conf.ini", "w") as f:
        f.write("port=8080\\n")
    os.unlink(a + "/old.txt")
    os.chmod(a + "/mode.sh", 0o700)
    os.setxattr(a + "/sub/deep.txt", "user.v", b"2")
    with open(a + "/hard1", "a") as f:
        f.write("more\\n")
    os.unlink(a + "/sym")
    os.symlink("conf.ini", a + "/sym")
    os.mkdir(a + "/newdir")
    with open(a + "/newdir/inner.txt", "w") as f:
        f.write("created\\n")
    with open(a + "/new.txt", "w") as f:
        f.write("created\\n")
    os.mkdir(D + "/cache")
    with open(D + "/cache/c.bin", "wb") as f:
        f.write(b"cache" * 100)
    for p in ("conf.ini", "hard1", "sym", "newdir/inner.txt", "newdir", "new.txt"):
        os.utime(os.path.join(a, p), ns=(T, T), follow_symlinks=False)
    os.utime(a, ns=(T, T))
    for p in ("cache/c.bin", "cache"):
        os.utime(os.path.join(D, p), ns=(T, T))
    print("app updated")
    return {{"success": True}}
"""

WEB_BODY = """
import os
D = {data!r}
T = {t}


def main(args):
    w = D + "/web"
    with open(w + "/index.html", "w") as f:
        f.write("<h1>v2</h1>\\n")
    os.chown(w + "/owned.txt", 4242, 4242)
    with open(w + "/new.css", "w") as f:
        f.write("body {{}}\\n")
    for p in ("index.html", "new.css"):
        os.utime(os.path.join(w, p), ns=(T, T))
    os.utime(w, ns=(T, T))
    if {fail!r}:
        print("web: changed files, now failing")
        return {{"success": False, "error": "deliberate failure after changing files"}}
    return {{"success": True}}
"""


def _settle(root: Path, ns: int = T_BEFORE) -> None:
    """Give every entry under `root` (symlinks too, not followed) the times `ns`."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), ns=(ns, ns), follow_symlinks=False)
    os.utime(root, ns=(ns, ns))


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def _build(sbx: Sandbox, web_fails: bool) -> None:
    """Data of two services and their modules: `app` changes, creates and deletes
    files in data/app and creates data/cache; `web` changes data/web (then fails)."""
    app, web = sbx.data / "app", sbx.data / "web"
    _write(app / "conf.ini", "port=80\n")
    _write(app / "old.txt", "to be deleted\n")
    _write(app / "keep.txt", "untouched\n")
    _write(app / "mode.sh", "#!/bin/sh\n", 0o755)
    _write(app / "sub/deep.txt", "deep\n")
    os.setxattr(app / "sub/deep.txt", "user.v", b"1")
    _write(app / "hard1", "shared\n")
    os.link(app / "hard1", app / "hard2")
    os.symlink("keep.txt", app / "sym")
    _write(web / "index.html", "<h1>v1</h1>\n")
    _write(web / "owned.txt", "owned\n", 0o640)
    os.chown(web / "owned.txt", 1000, 1000)
    data = str(sbx.data)
    sbx.module(
        "app",
        APP_BODY.format(data=data, t=T_AFTER),
        backup_paths=[app, sbx.data / "cache"],
        extra_meta={"priority": 10, "service_name": "app.service"},
    )
    sbx.module(
        "web",
        WEB_BODY.format(data=data, t=T_AFTER, fail=web_fails),
        backup_paths=[web],
        extra_meta={"priority": 20, "service_name": "web.service"},
    )
    for root in (app, web, sbx.modules):  # the modules dir is one scope path
        _settle(root)


def _prepare_commit(sbx: Sandbox) -> None:
    _build(sbx, web_fails=False)


def _prepare_rollback(sbx: Sandbox) -> None:
    _build(sbx, web_fails=True)


def _prepare_undo(sbx: Sandbox) -> None:
    """The committing update ran as transaction 1; the sweep undoes it."""
    _build(sbx, web_fails=False)
    result = run(sbx, ("update",))
    assert result.returncode == 0, f"transaction 1 did not commit: {result.stderr}"


def _prepare_second_rollback(sbx: Sandbox) -> None:
    """Transaction 1 committed; then the web module is one that fails. On tar, the
    swept update's snapshots are increments of transaction 1's, and it rolls back
    from them."""
    _prepare_undo(sbx)
    sbx.module(
        "web",
        WEB_BODY.format(data=str(sbx.data), t=T_AFTER, fail=True),
        backup_paths=[sbx.data / "web"],
        extra_meta={"priority": 20, "service_name": "web.service"},
    )
    _settle(sbx.modules)


SCENARIOS: dict[str, Scenario] = {
    "commit": Scenario("commit", ("update",), "update", 0, _prepare_commit),
    "rollback": Scenario("rollback", ("update",), "update", 1, _prepare_rollback),
    "undo": Scenario("undo", ("undo", "1"), "undo", 0, _prepare_undo),
    "second-rollback": Scenario(
        "second-rollback", ("update",), "update", 1, _prepare_second_rollback
    ),
}


# --- running ------------------------------------------------------------------------------
def run(
    sbx: Sandbox, argv: tuple[str, ...], crash_at: int | None = None
) -> subprocess.CompletedProcess:
    """Run `hs-tx argv` with HS_TX_CRASH_AT=crash_at (None: armed, never reached).

    When it was killed, asserts it was by SIGKILL and kills module workers it left.
    """
    env = {"HS_TX_CRASH_AT": str(NEVER if crash_at is None else crash_at)}
    result = sbx.hs_tx(*argv, env=env)
    if result.returncode < 0:
        kill_workers(sbx)
        assert result.returncode == -signal.SIGKILL, (
            f"hs-tx {' '.join(argv)} died by signal {-result.returncode}, not SIGKILL"
        )
    return result


def kill_workers(sbx: Sandbox) -> list[int]:
    """SIGKILL every module worker of this sandbox still running; return their pids.

    A worker runs in its own session, so killing hs-tx does not take it along.
    Matched by pid through /proc: the worker module in its argv and this
    sandbox's modules dir as its first argument.
    """
    modules = {str(sbx.modules), os.path.realpath(sbx.modules)}
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "hs_txupdate.modules.worker" in argv and modules & set(argv):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(int(proc.name))
    for pid in killed:
        wait_gone(pid)
    return killed


def read_json(sbx: Sandbox, *args: str) -> Any:
    """The JSON document of a read-only `hs-tx ... --json` command (history, show).

    Runs the command's own entry point (hs_txupdate.cli.main.main) in this
    process: the same code as `hs-tx`, without the ~0.8 s an interpreter start
    with SQLAlchemy costs, which a sweep would pay at every N.
    """
    from hs_txupdate.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    umask = os.umask(0o022)  # main() sets hs-tx's umask; keep ours
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["--config", str(sbx.config), *args, "--json"])
    finally:
        os.umask(umask)
    assert code == 0, f"hs-tx {' '.join(args)} --json exit {code}: {err.getvalue()}"
    return json.loads(out.getvalue())


def history(sbx: Sandbox) -> list[dict[str, Any]]:
    """`hs-tx history --json` (see read_json)."""
    return read_json(sbx, "history")


def event_keys(sbx: Sandbox) -> set[tuple[int, int]]:
    """(transaction, seq) of every event in the journal (none before there is one)."""
    if not (sbx.state / "journal.db").exists():
        return set()
    return {(tx, e["seq"]) for tx, e in _all_events(sbx)}


def new_events(sbx: Sandbox, since: set[tuple[int, int]]) -> list[str]:
    """Labels of the events not in `since`, in the order they were written."""
    return [_label(tx, e) for tx, e in _all_events(sbx) if (tx, e["seq"]) not in since]


def _all_events(sbx: Sandbox) -> list[tuple[int, dict[str, Any]]]:
    # one process writes to an older transaction (recovery) before a newer one
    out = []
    for tx in sorted(t["id"] for t in history(sbx)):
        out += [(tx, e) for e in read_json(sbx, "show", str(tx))["events"]]
    return out


def _label(tx: int, event: dict[str, Any]) -> str:
    detail = event.get("detail") or {}
    about = [f"{k}={detail[k]}" for k in ("n", "batch", "module", "unit", "of") if k in detail]
    text = f"{tx}: {event['phase']} {event['step']} {event['status']}"
    return f"{text} ({', '.join(about)})" if about else text


# --- sandbox ------------------------------------------------------------------------------
def reset(sbx: Sandbox, scenario: Scenario) -> None:
    """Wipe the sandbox (journal included) and build `scenario`'s starting state."""
    kill_workers(sbx)
    for path in (sbx.state, sbx.modules, sbx.data):
        if path.exists():
            shutil.rmtree(path)
    sbx.service_log.unlink(missing_ok=True)
    _drop_btrfs_snapshots(sbx.root)
    sbx.create()
    scenario.prepare(sbx)


def _btrfs_store(path: Path) -> Path | None:
    """The `.hs-tx-snapshots` store at the top of the filesystem holding `path`."""
    mount = path
    while not os.path.ismount(mount):
        mount = mount.parent
    store = mount / ".hs-tx-snapshots"
    return store if store.is_dir() else None


def _drop_btrfs_snapshots(path: Path) -> None:
    """Empty the store (snapshots and owner files), so each reset starts like a fresh
    box and no space stays pinned by the earlier runs."""
    store = _btrfs_store(path)
    if store is None:
        return
    entries = sorted(store.iterdir())
    snapshots = [p for p in entries if p.is_dir()]
    if snapshots:
        sh("btrfs", "subvolume", "delete", *snapshots)
    for other in set(entries) - set(snapshots):
        other.unlink()


def pictures(scope: list[str]) -> Pictures:
    """`tree_state` of every scope path (content and metadata)."""
    return {path: tree_state(Path(path)) for path in scope}


# --- reference run ------------------------------------------------------------------------
def record(sbx: Sandbox, scenario: Scenario) -> Reference:
    """Run `scenario` fully from its starting state, twice; return the Reference.

    The first run learns the scope; the second takes the pictures before and
    after and must write the same events (a sweep relies on the N-th event
    being the same step in every run).
    """
    reset(sbx, scenario)
    known = event_keys(sbx)
    first = run(sbx, scenario.argv)
    assert first.returncode == scenario.exit_code, first.stderr
    tx_id = max(t["id"] for t in history(sbx))
    shown = read_json(sbx, "show", str(tx_id))
    scope = [p["path"] for p in shown["paths"]]
    events = new_events(sbx, known)

    reset(sbx, scenario)
    before = pictures(scope)
    started = time.monotonic()
    second = run(sbx, scenario.argv)
    seconds = time.monotonic() - started
    assert second.returncode == scenario.exit_code, second.stderr
    after = pictures(scope)
    again = new_events(sbx, known)
    assert again == events, f"two full runs wrote different events:\n{events}\n{again}"
    state = next(t["state"] for t in history(sbx) if t["id"] == tx_id)
    backends = sorted({p["backend"] for p in shown["paths"] if p["existed"]})
    ref = Reference(scenario, tx_id, scope, backends, before, after, events, state, seconds)
    check_outcome(sbx, ref)
    return ref


# --- the invariants -----------------------------------------------------------------------
def check_outcome(sbx: Sandbox, ref: Reference, crash_at: int | None = None) -> str:
    """Assert every invariant after a run of `ref`'s command (crashed at `crash_at`,
    then recovered); return the final state of its transaction."""
    rows = {t["id"]: t for t in history(sbx)}
    unfinished = {i: t["state"] for i, t in rows.items() if t["state"] not in FINAL_STATES}
    assert not unfinished, f"transactions left unfinished: {unfinished}"
    assert max(rows) == ref.tx_id, f"expected transaction {ref.tx_id} last, got {sorted(rows)}"
    tx = rows[ref.tx_id]
    assert tx["kind"] == ref.scenario.kind, tx
    state = tx["state"]
    assert state in ("committed", "rolled_back", "aborted"), f"ended {state}: {tx['error']}"
    now = pictures(ref.scope)
    expected = ref.after if state == "committed" else ref.before
    assert now == expected, f"journal says {state}; " + describe(now, ref)
    if ref.state != "committed":
        assert state != "committed", "a run that rolls back ended committed"
    elif crash_at is not None and ref.commit_at is not None:
        durable = crash_at >= ref.commit_at
        assert (state == "committed") == durable, (
            f"ended {state}, but the commit decision was {'' if durable else 'not '}durable"
        )
    left = leftovers(sbx, ref.scope)
    assert not left, f"staging/temp leftovers: {left}"
    if state != "committed":
        kept = snapshots_of(sbx, ref.tx_id)
        assert not kept, f"transaction {ref.tx_id} ended {state} but kept snapshots: {kept}"
    for i, t in rows.items():
        if t["undoes"] is not None:
            undone = rows[t["undoes"]]["undone_by"] == i
            assert undone == (t["state"] == "committed"), (
                f"transaction {i} ({t['state']}) undoes {t['undoes']}, "
                f"whose undone_by is {rows[t['undoes']]['undone_by']}"
            )
    return state


def describe(now: Pictures, ref: Reference) -> str:
    """Which entries of which scope path differ from the before and after pictures."""
    lines = []
    for name, picture in (("before", ref.before), ("after", ref.after)):
        for path in ref.scope:
            have, want = now[path], picture[path]
            diff = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
            if diff:
                lines.append(
                    f"  {path} differs from {name} at {[k or '.' for k in diff]};"
                    f" e.g. {diff[0] or '.'}: {_contrast(have.get(diff[0]), want.get(diff[0]))}"
                )
    return "scope is neither before nor after:\n" + "\n".join(lines)


def _presence(entry: dict[str, Any] | None) -> str:
    return "missing" if entry is None else "present"


def _contrast(have: dict[str, Any] | None, want: dict[str, Any] | None) -> str:
    """What differs between two tree_state entries (live, then expected)."""
    if have is None or want is None:
        return f"live {_presence(have)}, expected {_presence(want)}"
    return ", ".join(
        f"{k} {have.get(k)!r:.70} != {want.get(k)!r:.70}"
        for k in sorted(have.keys() | want.keys())
        if have.get(k) != want.get(k)
    )


def leftovers(sbx: Sandbox, scope: list[str]) -> list[str]:
    """Staging dirs and temp files beside or inside scope paths, or in the modules dir
    (tree_state leaves hs-tx's own names out, so they are looked for here)."""
    found: set[Path] = set()
    for place in {Path(p).parent for p in scope} | {sbx.modules}:
        if place.is_dir():
            found.update(c for c in place.iterdir() if c.name.startswith(LEFTOVER_PREFIXES))
    for path in map(Path, scope):
        if path.is_dir() and not path.is_symlink():
            found.update(c for c in path.rglob(".hs-tx-*") if c.name.startswith(LEFTOVER_PREFIXES))
    return sorted(map(str, found))


def snapshots_of(sbx: Sandbox, tx_id: int) -> list[str]:
    """What is left on disk of the snapshots and manifests of `tx_id`."""
    left = [sbx.tx_dir(tx_id)]
    store = _btrfs_store(sbx.root)
    if store is not None:
        left += list(store.glob(f"{sbx.tx_key(tx_id)}-*"))
    return sorted(str(p) for p in left if os.path.lexists(p))


# --- which N ------------------------------------------------------------------------------
def points(count: int, full: bool = SWEEP_ALL, sample: int = SAMPLE) -> list[int]:
    """Every N in 1..count when `full`, else the first, the last and `sample`
    values evenly spread between them."""
    if full or count <= sample + 2:
        return list(range(1, count + 1))
    step = (count - 1) / (sample + 1)
    return sorted({1, count, *(1 + round(i * step) for i in range(1, sample + 1))})


def summary_line(what: str, backend: str, **numbers: Any) -> str:
    """One line of the sweep report."""
    return f"{what:<28} {backend:<6} " + "  ".join(f"{k}={v}" for k, v in numbers.items())


__all__ = [
    "SCENARIOS",
    "SWEEP_ALL",
    "Reference",
    "Scenario",
    "check_outcome",
    "event_keys",
    "history",
    "kill_workers",
    "new_events",
    "pictures",
    "points",
    "read_json",
    "record",
    "reset",
    "run",
    "summary_line",
]
