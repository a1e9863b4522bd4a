"""Kill sweep (issue 4, item 4): SIGKILL hs-tx after its N-th durable journal event,
run `hs-tx recover`, and prove every path in scope is exactly as before or exactly
as after the operation, and that the journal says which.

Each scenario first runs fully (tests.sweep.record) to count its events; then for
N in 1..count, from a freshly rebuilt sandbox, it runs with HS_TX_CRASH_AT=N. By
default the rolling-back update (the richest run) is swept at every N, the other
scenarios at a fixed sample of N; HS_TX_SWEEP_ALL=1 sweeps every N everywhere.
A crash inside the recovery itself is swept the same way, and an undo that a
crash cut off must be retryable once recovery has rolled it back. Event counts
and sweep times are printed (pytest -s) and summed up by the last test of this
file, even without -s.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import Sandbox
from tests.sweep import (
    SCENARIOS,
    SWEEP_ALL,
    Reference,
    check_outcome,
    event_keys,
    new_events,
    pictures,
    points,
    read_json,
    record,
    reset,
    run,
    summary_line,
)

BACKEND_OF_FS = {"btrfs": ["btrfs"], "ext4": ["tar"]}
REPORT: list[str] = []


def _fs(request: pytest.FixtureRequest) -> str:
    return request.node.callspec.params["fs_sandbox"]


def _report(line: str) -> None:
    print(line)
    REPORT.append(line)


def _recorded(sbx: Sandbox, request: pytest.FixtureRequest, name: str) -> Reference:
    """The full run of scenario `name`, checked to use the backend of the filesystem."""
    ref = record(sbx, SCENARIOS[name])
    assert ref.backends == BACKEND_OF_FS[_fs(request)], ref.backends
    return ref


def _crash_and_recover(sbx: Sandbox, ref: Reference, n: int) -> str:
    """From the starting state: crash the operation at N, recover, check; the final state."""
    reset(sbx, ref.scenario)
    crashed = run(sbx, ref.scenario.argv, crash_at=n)
    assert crashed.returncode == -9, f"no crash (exit {crashed.returncode}): {crashed.stderr}"
    recovered = run(sbx, ("recover",))
    assert recovered.returncode == 0, f"recover exit {recovered.returncode}: {recovered.stderr}"
    return check_outcome(sbx, ref, crash_at=n)


def _sweep(
    sbx: Sandbox, request: pytest.FixtureRequest, name: str, full: bool
) -> tuple[Reference, Counter]:
    """Record scenario `name`, sweep its N, report; fail listing every N that failed."""
    ref = _recorded(sbx, request, name)
    ns = points(ref.count, full)
    outcomes: Counter = Counter()
    failures = []
    started = time.monotonic()
    for n in ns:
        try:
            outcomes[_crash_and_recover(sbx, ref, n)] += 1
        except AssertionError as exc:
            failures.append(f"N={n} [{ref.events[n - 1]}]: {exc}")
    seconds = time.monotonic() - started
    _report(
        summary_line(
            f"{name} (ends {ref.state})",
            _fs(request),
            events=ref.count,
            swept=f"{len(ns)}/{ref.count}",
            sweep_s=f"{seconds:.1f}",
            per_n_s=f"{seconds / len(ns):.2f}",
            full_run_s=f"{ref.seconds:.2f}",
            outcomes=dict(sorted(outcomes.items())),
        )
    )
    assert not failures, f"{len(failures)} of {len(ns)} crash points failed:\n" + "\n".join(
        failures
    )
    return ref, outcomes


def test_update_that_rolls_back(fs_sandbox: Sandbox, request: pytest.FixtureRequest) -> None:
    """Swept at every N by default: modules change files, the second one fails."""
    _ref, outcomes = _sweep(fs_sandbox, request, "rollback", full=True)
    assert set(outcomes) == {"aborted", "rolled_back"}, outcomes


@pytest.mark.parametrize("fs_sandbox", ["ext4"], indirect=True)
def test_update_that_rolls_back_from_increments(
    fs_sandbox: Sandbox, request: pytest.FixtureRequest
) -> None:
    """After a commit, an update whose second module fails: its tar snapshots are
    increments of the first's, and its rollback reads each increment over its base."""
    ref, outcomes = _sweep(fs_sandbox, request, "second-rollback", full=SWEEP_ALL)
    assert set(outcomes) == {"aborted", "rolled_back"}, outcomes
    captures = [
        e["detail"]
        for e in read_json(fs_sandbox, "show", str(ref.tx_id))["events"]
        if e["step"] == "capture" and e["status"] == "done"
    ]
    first = {p["snapshot"] for p in read_json(fs_sandbox, "show", "1")["paths"]}
    based = [c for c in captures if c.get("base") in first]
    assert len(based) == 4, captures  # data/app, data/cache, data/web, the modules dir


@pytest.mark.parametrize("fs_sandbox", ["btrfs"], indirect=True)
def test_system_scope_rollback(fs_sandbox: Sandbox, request: pytest.FixtureRequest) -> None:
    """The same rollback under the whole-system scope (the two service dirs are the
    watched roots, snapshotted whole and put back from what the audit attributed; the
    cache dir a module creates beside them is a declared path), crashed at every N:
    recovery finishes it from the journal's progress and the snapshots."""
    fs_sandbox.system = "on"
    fs_sandbox.watch = [str(fs_sandbox.data / "app"), str(fs_sandbox.data / "web")]
    fs_sandbox.write_config()
    ref, outcomes = _sweep(fs_sandbox, request, "rollback", full=True)
    assert set(outcomes) == {"aborted", "rolled_back"}, outcomes
    show = read_json(fs_sandbox, "show", str(ref.tx_id))
    assert [p["origin"] for p in show["paths"]].count("system") == 2, show["paths"]


def test_update_that_commits(fs_sandbox: Sandbox, request: pytest.FixtureRequest) -> None:
    """Modules modify, create and delete files (and a path absent before); commit."""
    ref, outcomes = _sweep(fs_sandbox, request, "commit", full=SWEEP_ALL)
    assert {"aborted", "rolled_back", "committed"} <= set(outcomes), outcomes
    _check_catches_a_mix_and_leftovers(fs_sandbox, ref)


def _check_catches_a_mix_and_leftovers(sbx: Sandbox, ref: Reference) -> None:
    """The sweep's judge fails a scope that is partly after, and a temp file that
    tree_state does not show."""
    reset(sbx, ref.scenario)
    assert run(sbx, ref.scenario.argv).returncode == 0
    check_outcome(sbx, ref)
    web = next(Path(p) for p in ref.scope if p.endswith("/data/web"))
    (web / "index.html").write_text("<h1>v1</h1>\n")  # one file back as before
    with pytest.raises(AssertionError, match="neither before nor after"):
        check_outcome(sbx, ref)
    reset(sbx, ref.scenario)
    assert run(sbx, ref.scenario.argv).returncode == 0
    hidden = web.parent / "app/sub/.hs-tx-tmp-1-0"
    times = hidden.parent.stat()
    hidden.write_text("half a restore")
    os.utime(hidden.parent, ns=(times.st_atime_ns, times.st_mtime_ns))
    with pytest.raises(AssertionError, match="leftovers"):
        check_outcome(sbx, ref)


def test_undo(fs_sandbox: Sandbox, request: pytest.FixtureRequest) -> None:
    """`hs-tx undo 1` after the committing update: before = after 1, after = before 1."""
    ref, outcomes = _sweep(fs_sandbox, request, "undo", full=SWEEP_ALL)
    assert {"aborted", "rolled_back", "committed"} <= set(outcomes), outcomes
    reset(fs_sandbox, SCENARIOS["commit"])  # the state before transaction 1
    assert pictures(ref.scope) == ref.after, "a full undo does not give back the state before 1"


def test_undo_can_be_retried_after_a_crash(
    fs_sandbox: Sandbox, request: pytest.FixtureRequest
) -> None:
    """An undo killed halfway and rolled back by recovery leaves transaction 1 undoable:
    what hs-tx's own rollback wrote is no drift, so `hs-tx undo 1` runs through."""
    sbx = fs_sandbox
    ref = _recorded(sbx, request, "undo")
    n = next(i for i, label in enumerate(ref.events, 1) if " undo restore-batch done" in label)
    reset(sbx, ref.scenario)
    assert run(sbx, ref.scenario.argv, crash_at=n).returncode == -9
    assert run(sbx, ("recover",)).returncode == 0
    assert check_outcome(sbx, ref, crash_at=n) == "rolled_back"

    retry = run(sbx, ref.scenario.argv)

    assert retry.returncode == 0, f"crashed at [{ref.events[n - 1]}]; retry: {retry.stderr}"
    assert pictures(ref.scope) == ref.after


def test_crash_during_recovery(fs_sandbox: Sandbox, request: pytest.FixtureRequest) -> None:
    """Crash the rolling-back update in the middle of its rollback, then crash the
    recovery that follows at each of its events M, then recover once more."""
    sbx = fs_sandbox
    ref = _recorded(sbx, request, "rollback")
    rollback = [i for i, label in enumerate(ref.events, 1) if ": rollback " in label]
    n = rollback[len(rollback) // 2]

    reset(sbx, ref.scenario)
    assert run(sbx, ref.scenario.argv, crash_at=n).returncode == -9
    known = event_keys(sbx)
    assert run(sbx, ("recover",)).returncode == 0
    recovery = new_events(sbx, known)
    check_outcome(sbx, ref)
    ms = points(len(recovery), SWEEP_ALL)

    outcomes: Counter = Counter()
    failures = []
    started = time.monotonic()
    for m in ms:
        try:
            reset(sbx, ref.scenario)
            crashed = run(sbx, ref.scenario.argv, crash_at=n)
            assert crashed.returncode == -9, f"update did not crash at N={n}"
            cut = run(sbx, ("recover",), crash_at=m)
            assert cut.returncode == -9, f"recover did not crash (exit {cut.returncode})"
            final = run(sbx, ("recover",))
            assert final.returncode == 0, f"recover exit {final.returncode}: {final.stderr}"
            outcomes[check_outcome(sbx, ref)] += 1
        except AssertionError as exc:
            failures.append(f"M={m} [{recovery[m - 1]}]: {exc}")
    seconds = time.monotonic() - started
    _report(
        summary_line(
            f"recovery after N={n}",
            _fs(request),
            events=len(recovery),
            swept=f"{len(ms)}/{len(recovery)}",
            sweep_s=f"{seconds:.1f}",
            per_m_s=f"{seconds / len(ms):.2f}",
            crashed_at=f"[{ref.events[n - 1]}]",
            outcomes=dict(sorted(outcomes.items())),
        )
    )
    assert not failures, f"{len(failures)} of {len(ms)} crash points failed:\n" + "\n".join(
        failures
    )


def test_sweep_report(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Not a check: print the event counts and sweep times of the tests above
    (also without -s) and keep them in kill-sweep-report.txt under pytest's temp dir."""
    mode = "every N (HS_TX_SWEEP_ALL=1)" if SWEEP_ALL else "default"
    lines = [f"kill sweep, {mode}:", *REPORT]
    report: Path = tmp_path_factory.getbasetemp() / "kill-sweep-report.txt"
    report.write_text("\n".join(lines) + "\n")
    with capsys.disabled():
        print("\n" + "\n".join(lines) + f"\n(report: {report})")
